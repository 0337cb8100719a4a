package inbox

import (
	"errors"
)

var (
	// ErrInvalidConfig wraps every configuration problem reported by [New].
	ErrInvalidConfig = errors.New("accord inbox: invalid config")

	// ErrDecode is the error a handler returns (wrapped, for example with
	// fmt.Errorf("order %s: %w", id, inbox.ErrDecode)) for a payload or
	// metadata it cannot decode. Decoding the same bytes again fails
	// again, so the message is parked as a dead letter at once.
	ErrDecode = errors.New("accord inbox: cannot decode message")

	// ErrUnknownEventType is the error a handler returns (wrapped) for a
	// message of a type it does not know. The message is parked as a dead
	// letter at once.
	ErrUnknownEventType = errors.New("accord inbox: unknown event type")

	// ErrNoMessageID is the reason a message without a UUID is parked:
	// without an id, redeliveries cannot be recognised, so it is never
	// handed to the handler.
	ErrNoMessageID = errors.New("accord inbox: message has no id")

	// ErrDeadLetterNotFound is returned by [Inbox.Requeue] and
	// [Inbox.Drop] for a sequence number that is not one of the
	// consumer's dead letters (it may have been requeued or dropped
	// already).
	ErrDeadLetterNotFound = errors.New("accord inbox: dead letter not found")

	// ErrNilMessage is returned by [Inbox.Handle] for a nil message.
	ErrNilMessage = errors.New("accord inbox: nil message")

	// ErrProducedMessages is the (permanent) error of a handler under
	// [Inbox.Middleware] that returns messages: the router would publish
	// them outside the transaction. Write them with
	// outbox.WriteTx(ctx, inbox.TxFromContext(ctx), ...) instead.
	ErrProducedMessages = errors.New("accord inbox: a handler under the inbox middleware returned messages; write them with outbox.WriteTx(ctx, inbox.TxFromContext(ctx), ...) instead")
)

// PermanentError marks a handler error that retrying cannot fix. The
// message is parked as a dead letter on its first failure. Create one with
// [Permanent].
type PermanentError struct {
	Err error
}

// Error returns "permanent error: " and the wrapped error's text.
func (e *PermanentError) Error() string {
	if e.Err == nil {
		return "permanent error"
	}
	return "permanent error: " + e.Err.Error()
}

// Unwrap returns the wrapped error.
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err to tell the inbox that handling the message can never
// succeed (a validation failure, a reference to something that does not
// exist): the message is parked as a dead letter at once instead of being
// retried MaxAttempts times. Permanent(nil) returns nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err parks a message at its first failure: it
// wraps a [PermanentError], [ErrDecode], [ErrUnknownEventType] or
// [ErrNoMessageID].
func IsPermanent(err error) bool {
	var pe *PermanentError
	return errors.As(err, &pe) || errors.Is(err, ErrDecode) || errors.Is(err, ErrUnknownEventType) ||
		errors.Is(err, ErrNoMessageID)
}
