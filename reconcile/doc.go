// Package reconcile finds and repairs drift between a producer's state and a
// consumer's replica of it.
//
// # Model
//
// Push and pull keep replicas in sync event by event, but a replica can still
// drift: a row edited behind the consumer's back, a restore from backup, a
// bug, an event parked as a dead letter and dropped. Reconciliation compares
// the two sides by (key, version) pairs without shipping whole tables:
//
//  1. Each side hashes its keys into Buckets buckets and returns one digest
//     per bucket: the number of keys and an order-independent hash of the
//     (key, version) pairs. Only these digests cross the network.
//  2. For buckets whose digests differ, both sides return their (key,
//     version) pairs, and the difference is classified per key: Missing (in
//     the source, not in the replica), Stale (replica behind), Ahead
//     (replica ahead of the source: a sign of corruption or a restored
//     source) and Extra (in the replica only).
//  3. Repair re-emits a snapshot of each drifted key from the producer (for
//     example into its outbox, with [SnapshotEmitter]), so the normal
//     delivery path brings the replica back in line; versioned replicas
//     accept the snapshot because its version is the source's current one.
//
// A [Side] is anything that can answer those two questions: [SQLSide] reads
// a table (key and version columns, validated identifiers) in any Accord
// dialect; [Handler] serves a Side over HTTP and [HTTPSide] queries one, so
// the producer computes its digests next to its own database.
//
// Drift is reported, never silently fixed: Run returns a [Report], and repair
// is an explicit step ([Report.DriftedKeys] → a [RepairFunc]).
package reconcile
