package outbox

import "errors"

var (
	// ErrInvalidConfig wraps every configuration problem reported by [New].
	ErrInvalidConfig = errors.New("accord outbox: invalid config")

	// ErrInvalidEvent is returned for an event that cannot be stored: no
	// topic, a nil message, an id that is not a UUID, metadata that cannot be
	// stored. Nothing of the call is written when it is returned.
	ErrInvalidEvent = errors.New("accord outbox: invalid event")

	// ErrPayloadTooLarge is returned for a payload over Config.MaxPayloadBytes.
	// Nothing of the call is written when it is returned.
	ErrPayloadTooLarge = errors.New("accord outbox: payload too large")

	// ErrPublisherClosed is returned by Publish after Close.
	ErrPublisherClosed = errors.New("accord outbox: publisher closed")
)

// IsInvalidEvent reports whether err means that an event was rejected before
// anything was written (invalid event or oversized payload). Retrying the
// same event cannot succeed.
func IsInvalidEvent(err error) bool {
	return errors.Is(err, ErrInvalidEvent) || errors.Is(err, ErrPayloadTooLarge)
}
