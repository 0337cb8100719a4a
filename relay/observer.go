package relay

import (
	"context"
	"time"
)

// Observer is told what the relay does, for metrics and tracing. Its
// methods run synchronously on the relay's goroutines: keep them fast,
// never block, and make them safe for concurrent use. Embed
// [ObserverDefaults] so that an implementation keeps compiling when methods
// are added.
type Observer interface {
	// Published is called after the publisher accepted one Publish call.
	Published(ctx context.Context, p Publication)
	// PublishFailed is called after a failed Publish call that will be
	// retried after p.RetryIn.
	PublishFailed(ctx context.Context, p Publication)
	// DeadLettered is called after a row that failed DeadLetterAfter times
	// was moved to the dead letters (p.Err is its last error).
	DeadLettered(ctx context.Context, p Publication)
	// Deleted is called after published rows were deleted.
	Deleted(ctx context.Context, rows int, d time.Duration)
	// Read is called after each read of the outbox table.
	Read(ctx context.Context, rows int, sweep bool, d time.Duration)
	// Leases is called after each lease cycle (every LeaseTTL/5) with the
	// number of lease slots this instance holds and the number of live
	// relay instances. Not called when leases are disabled.
	Leases(ctx context.Context, held, instances int)
}

// Publication describes one Publish call of a lane.
type Publication struct {
	// Topic is the destination topic.
	Topic string
	// Lane is the lane that made the call.
	Lane int
	// Messages is the number of messages in the call.
	Messages int
	// CreatedAt holds each message's creation time (when the producer
	// wrote it), so observers can measure write-to-publish latency.
	CreatedAt []time.Time
	// Attempt is 1 for the first call, 2 for the first retry, ...
	Attempt int
	// Duration is how long the Publish call took.
	Duration time.Duration
	// Err is the publisher's error (PublishFailed only).
	Err error
	// RetryIn is the backoff before the next attempt (PublishFailed only).
	RetryIn time.Duration
}

// ObserverDefaults implements every [Observer] method as a no-op.
type ObserverDefaults struct{}

// Published does nothing.
func (ObserverDefaults) Published(context.Context, Publication) {}

// PublishFailed does nothing.
func (ObserverDefaults) PublishFailed(context.Context, Publication) {}

// DeadLettered does nothing.
func (ObserverDefaults) DeadLettered(context.Context, Publication) {}

// Deleted does nothing.
func (ObserverDefaults) Deleted(context.Context, int, time.Duration) {}

// Read does nothing.
func (ObserverDefaults) Read(context.Context, int, bool, time.Duration) {}

// Leases does nothing.
func (ObserverDefaults) Leases(context.Context, int, int) {}
