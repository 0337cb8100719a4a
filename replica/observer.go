package replica

import (
	"context"
	"time"
)

// Observer is told about every decision a [Replica] makes, for metrics.
// Its methods run synchronously on the applying goroutine: keep them fast
// and never block.
//
// [Replica.Apply] and [Replica.Resync] report after their transaction
// committed (a Rejected change is reported although nothing commits: the
// rejection is the outcome). [Replica.ApplyTx] and [Replica.ResyncTx] run
// in the caller's transaction and report as they decide, before the caller
// commits: if the caller rolls back, what was reported did not happen, and
// will be reported again when the change is redelivered.
//
// Embed [ObserverDefaults] so that an implementation keeps compiling when
// methods are added.
type Observer interface {
	// Applied is called for every change applied, including a change
	// applied over a gap (then Gap is called too) and a parked change
	// applied once its gap filled (o.Drained).
	Applied(ctx context.Context, o Observation)
	// Stale is called for a change skipped because the replica already
	// holds it or something newer (ByTimestamp: a write that lost to a
	// newer one), and for a BySequence change that is parked already.
	Stale(ctx context.Context, o Observation)
	// Gap is called when versions are missing: for a ByVersion change
	// more than one above the position (o.Outcome Gap if it was applied,
	// Rejected if not), and by [Replica.CheckGaps] for a BySequence key
	// whose parked changes waited longer than GapTimeout (o.Outcome Parked,
	// o.Version the first parked sequence number, o.Parked their count,
	// o.Since when the oldest was parked).
	Gap(ctx context.Context, o Observation)
	// Parked is called for a BySequence change stored to wait for the
	// changes before it.
	Parked(ctx context.Context, o Observation)
	// Resync is called after [Replica.Resync] moved a key to a snapshot's
	// version (o.Version), from o.Position, dropping o.Dropped parked
	// changes the snapshot contains.
	Resync(ctx context.Context, o Observation)
}

// Observation describes one decision of a [Replica].
type Observation struct {
	// Replica is Config.Name.
	Replica string
	// Key is the entity key.
	Key string
	// Mode is the replica's mode.
	Mode Mode
	// Outcome is the decision.
	Outcome Outcome
	// Version is the change's version or sequence number (for Resync, the
	// snapshot's version).
	Version int64
	// Position is the key's version or sequence number before the change.
	Position int64
	// Timestamp and Origin are the change's.
	Timestamp time.Time
	Origin    string
	// MessageID is the change's message id, if it has a message.
	MessageID string
	// PositionTimestamp and PositionOrigin are those of the change the key
	// held before (ByTimestamp compares them; for a Stale ByTimestamp
	// change they are the winner's).
	PositionTimestamp time.Time
	PositionOrigin    string
	// Drained is set on Applied for a change that was parked and is
	// applied now that the gap before it filled.
	Drained bool
	// Parked is the number of parked changes of the key (Gap from
	// CheckGaps).
	Parked int
	// Since is when the oldest parked change of the key was parked (Gap
	// from CheckGaps).
	Since time.Time
	// Dropped is the number of parked changes a Resync dropped because the
	// snapshot contains them.
	Dropped int
}

// ObserverDefaults implements every [Observer] method as a no-op. Embed it
// in observers that only need some of them.
type ObserverDefaults struct{}

// Applied does nothing.
func (ObserverDefaults) Applied(context.Context, Observation) {}

// Stale does nothing.
func (ObserverDefaults) Stale(context.Context, Observation) {}

// Gap does nothing.
func (ObserverDefaults) Gap(context.Context, Observation) {}

// Parked does nothing.
func (ObserverDefaults) Parked(context.Context, Observation) {}

// Resync does nothing.
func (ObserverDefaults) Resync(context.Context, Observation) {}
