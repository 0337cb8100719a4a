package inbox

import (
	"context"
	"time"
)

// Observer is told about the outcome of every message an [Inbox] handles,
// for metrics. Its methods run synchronously on the handling goroutine,
// after the outcome is committed: keep them fast and never block. Embed
// [ObserverDefaults] so that an implementation keeps compiling when methods
// are added.
type Observer interface {
	// Applied is called after the handler's transaction committed.
	Applied(ctx context.Context, o Observation)
	// Duplicate is called for a message that was applied (or parked)
	// before, and was acknowledged without effect.
	Duplicate(ctx context.Context, o Observation)
	// Failed is called after a failed attempt that will be retried
	// (o.Err is the handler's or the database's error).
	Failed(ctx context.Context, o Observation)
	// DeadLettered is called after a message was parked as a dead letter
	// (o.Err is the reason, o.DeadLetterSeq its sequence number).
	DeadLettered(ctx context.Context, o Observation)
}

// Observation describes one handled message.
type Observation struct {
	// Consumer is the inbox's consumer name.
	Consumer string
	// MessageID is the message's id as the inbox stores it (see
	// MessageIDMaxLength).
	MessageID string
	// Topic is the topic the message arrived on, when known.
	Topic string
	// Err is the failure (Failed) or the reason (DeadLettered); nil
	// otherwise.
	Err error
	// Attempts is the number of failed attempts so far (Failed,
	// DeadLettered).
	Attempts int
	// DeadLetterSeq is the sequence number of the dead letter
	// (DeadLettered).
	DeadLetterSeq int64
	// Duration is how long Handle took.
	Duration time.Duration
}

// ObserverDefaults implements every [Observer] method as a no-op. Embed it
// in observers that only need some of them.
type ObserverDefaults struct{}

// Applied does nothing.
func (ObserverDefaults) Applied(context.Context, Observation) {}

// Duplicate does nothing.
func (ObserverDefaults) Duplicate(context.Context, Observation) {}

// Failed does nothing.
func (ObserverDefaults) Failed(context.Context, Observation) {}

// DeadLettered does nothing.
func (ObserverDefaults) DeadLettered(context.Context, Observation) {}
