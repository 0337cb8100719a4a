package feed

import (
	"errors"
	"fmt"
)

var (
	// ErrInvalidConfig wraps every configuration problem reported by
	// [NewSource], [NewPuller] and [NewHTTPFetcher].
	ErrInvalidConfig = errors.New("accord feed: invalid config")

	// ErrInvalidEvent is returned for an event that cannot be appended: no
	// id or topic, a field over its size limit, metadata that cannot be
	// stored, a version that is not a non-negative integer. Nothing of the
	// call is written when it is returned.
	ErrInvalidEvent = errors.New("accord feed: invalid event")

	// ErrPublisherClosed is returned by Publisher.Publish after Close.
	ErrPublisherClosed = errors.New("accord feed: publisher closed")

	// ErrMalformedCursor is returned for a cursor that is not one this
	// package issues (garbage, a truncated string, an unknown version). HTTP
	// status 400, code "malformed_cursor".
	ErrMalformedCursor = errors.New("accord feed: malformed cursor")

	// ErrCursorFromFuture is returned for a cursor this feed cannot have
	// issued at its current state: its position is beyond the feed's head
	// (the producer's database was restored from a backup or the feed was
	// reset), or it was issued by another feed (every cursor carries the
	// identity of its feed). The consumer's state does not match the feed
	// any more: it must resync. HTTP status 409, code "cursor_from_future".
	ErrCursorFromFuture = errors.New("accord feed: cursor from the future")

	// ErrCursorExpired is returned for a cursor that points before the
	// oldest retained event: events after it were pruned (see Source.Prune)
	// before the consumer read them. The consumer must resync (reconcile
	// from a snapshot) and continue from a fresh cursor. HTTP status 410,
	// code "cursor_expired".
	ErrCursorExpired = errors.New("accord feed: cursor expired")

	// ErrAlreadyRunning is returned by Puller.Run when the puller runs
	// already or ran before.
	ErrAlreadyRunning = errors.New("accord feed: puller already ran")

	// errCursorMoved means another puller of the same consumer advanced the
	// stored cursor between our read and our transaction.
	errCursorMoved = errors.New("accord feed: cursor moved by another puller")
)

// IsCursorError reports whether err means the cursor cannot be used any
// more (ErrMalformedCursor, ErrCursorFromFuture or ErrCursorExpired):
// retrying cannot help, the consumer must resync.
func IsCursorError(err error) bool {
	return errors.Is(err, ErrMalformedCursor) || errors.Is(err, ErrCursorFromFuture) || errors.Is(err, ErrCursorExpired)
}

// Permanent marks a handler error as permanent: the [Puller] stops and Run
// returns it instead of retrying the page. Use it for events the consumer
// can never apply (a payload it cannot decode, a violated invariant), so an
// operator can look at them; transient errors (a deadlock, a timeout) should
// be returned as they are and are retried with backoff. Permanent(nil) is
// nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// PermanentError is the error [Permanent] returns.
type PermanentError struct {
	Err error
}

// Error implements error.
func (e *PermanentError) Error() string { return "permanent: " + e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *PermanentError) Unwrap() error { return e.Err }

// IsPermanent reports whether err was marked with [Permanent].
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// HTTP error codes of the feed endpoint ([Source.Handler]), in the "code"
// field of the JSON error body.
const (
	CodeMalformedCursor  = "malformed_cursor"
	CodeMalformedLimit   = "malformed_limit"
	CodeMalformedWait    = "malformed_wait"
	CodeCursorFromFuture = "cursor_from_future"
	CodeCursorExpired    = "cursor_expired"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeInternal         = "internal"
	CodeUnavailable      = "unavailable"
)

// ServerError is an error response of a feed endpoint, as [Client] reports
// it. errors.Is matches it against ErrMalformedCursor, ErrCursorFromFuture
// and ErrCursorExpired by its Code, so callers test for the same sentinels
// whether they read a [Source] directly or over HTTP.
type ServerError struct {
	// StatusCode is the HTTP status.
	StatusCode int
	// Code is the "code" field of the JSON body ("" if the body was not the
	// feed's JSON error, for example a proxy's error page).
	Code string
	// Message is the "error" field of the body, or the start of a body that
	// was not JSON.
	Message string
}

// Error implements error.
func (e *ServerError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("accord feed: server answered %d %s: %s", e.StatusCode, e.Code, e.Message)
	}
	return fmt.Sprintf("accord feed: server answered %d: %s", e.StatusCode, e.Message)
}

// Is matches the cursor sentinels by code.
func (e *ServerError) Is(target error) bool {
	switch target {
	case ErrMalformedCursor:
		return e.Code == CodeMalformedCursor
	case ErrCursorFromFuture:
		return e.Code == CodeCursorFromFuture
	case ErrCursorExpired:
		return e.Code == CodeCursorExpired
	}
	return false
}
