// Package replica applies changes from another service to a local replica
// only if they are newer than what the replica holds, so that a replica only
// ever moves forward and stays ordered, whatever order the broker delivers
// in and however often it redelivers.
//
// A [Replica] keeps, per entity key, a position in the replica_position
// table (migration 004) and decides each change in the transaction that
// applies it, by one of three algorithms ([Mode]):
//
//   - [ByVersion]: the producer's aggregate version (outbox.Event.Version,
//     metadata accord_version). Older and equal versions are skipped
//     (Stale); a version more than one ahead is a gap, applied and reported
//     (ApplyAndReport, for events that carry the whole state) or rejected
//     with [ErrGap] so that the broker redelivers it later (Reject, for
//     deltas).
//   - [BySequence]: a per-key sequence number, every one applied exactly
//     once and in order. A change that arrives early is parked in the
//     replica_parked table and applied, in the same transaction, as soon as
//     the change that fills the gap arrives. A gap still open after
//     GapTimeout is reported by [Replica.CheckGaps] (or the loop
//     [Replica.RunGapChecker]), which calls Config.Resync so that the
//     application fetches a snapshot and calls [Replica.Resync].
//   - [ByTimestamp]: last writer wins on (timestamp, origin, message id),
//     for keys that several writers change without a shared version. Ties
//     are broken deterministically, so every replica converges whatever the
//     arrival order. Timestamps come from the writers' clocks: a writer
//     whose clock runs ahead wins against later writes of the others, and a
//     lagging writer's changes are lost (reported as Stale). Use it only
//     with synchronized clocks, and prefer ByVersion wherever one writer
//     per key exists.
//
// # Guarantees
//
//   - Never backwards. The position row of a key is locked for the
//     transaction (SELECT ... FOR UPDATE on PostgreSQL and MySQL; SQLite
//     serializes writers), the decision is made under the lock, and the
//     change and the new position commit together. Concurrent appliers of
//     one key, in one process or many, take turns.
//   - In order. The ApplyFunc sees the changes of a key in increasing
//     order; BySequence shows it every sequence number exactly once.
//   - Nothing silently dropped. Stale changes, gaps, rejections, parked
//     changes and resyncs are logged (slog) and reported to the
//     [Observer].
//
// # With the inbox
//
// [Replica.ApplyTx] runs in the caller's transaction: call it from an inbox
// handler (inbox.HandlerFunc), so that the inbox row, the replica's tables,
// its position and any parked change commit together. A rejected change
// (ErrGap) fails the handler and is redelivered; a Stale or Parked change
// succeeds and is acknowledged. [Replica.Apply] opens its own transaction.
// [ChangeFromMessage] reads the key, version and timestamp the relay puts
// in the message's metadata.
//
// See docs/replicas.md for when to use which mode. The API is not stable
// yet: it may change between minor versions until 1.0.
package replica
