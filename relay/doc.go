// Package relay publishes committed outbox rows to a broker through any
// watermill message.Publisher: NATS JetStream, RabbitMQ, Kafka, Redis
// Streams, watermill-sql (broker-less), or the in-process GoChannel. This is
// the push strategy; `accord relay` runs it as a worker.
//
// # How it works
//
// One reader reads committed rows in sequence order, BatchSize at a time,
// with short statements and without holding a transaction open. Each row's
// partition key maps to one of Lanes ordered lanes (through its shard); the
// lanes publish concurrently, each in order, consecutive rows of one topic in
// one Publish call. Published rows are deleted in batches, one statement per
// batch, so the table holds only what is still to be published.
//
// On PostgreSQL a trigger NOTIFYs at commit and the relay LISTENs, so an idle
// relay sleeps and a commit is published within milliseconds; polling every
// PollInterval is the fallback when the notification connection is lost, and
// the only mechanism on SQLite (where [Relay.Wake] lets the writing process
// wake it).
//
// # Guarantees
//
//   - At least once. A row is deleted only after the publisher accepted it.
//     A crash (even kill -9) between publish and delete publishes the row
//     again on the next run: consumers deduplicate on the message UUID, for
//     example with an inbox. In steady state there are no duplicates.
//   - No lost event on out-of-order commits. Sequence numbers are allocated
//     at insert, so a transaction can commit after rows with larger numbers
//     were published (watermill issue 311). The relay does not keep a
//     durable offset: every row stays in the table until it is published,
//     and a caught-up relay (and any relay at least every SweepInterval)
//     reads the whole table again, so a late commit is always found.
//     No open transaction anywhere in the cluster holds delivery back.
//     Forward reads start at the lowest number not seen yet (a hole), not
//     after the largest one, so a late row still goes out before its key's
//     later rows.
//   - Order per partition key. Rows of one key always go through the same
//     lane, which publishes them one call at a time in the order the relay
//     observed their commits (and, within one read, in sequence order). When
//     writers of a key are serialized, as they are when each transaction
//     locks or updates the aggregate's row before writing its event, that
//     is exactly the order the transactions wrote them. Unserialized
//     concurrent writers of one key have no order to preserve; use
//     Event.Version to let consumers detect it. On MySQL/MariaDB, where
//     InnoDB can make a commit visible a moment after it released its
//     locks, a row is published only once it was inserted VisibilityDelay
//     ago (50 ms by default, on the database's clock), so the earlier
//     writer's row is visible, and read first, by then.
//   - Nothing silently dropped. A publish that fails (unreachable broker,
//     unknown destination, a payload the broker rejects) is logged, counted
//     in attempts and last_error on the row, and retried with exponential
//     backoff and jitter, blocking only its lane. A malformed row is
//     retried the same way and re-read on each attempt, so a repaired row
//     goes out. The relay never exits on such errors.
//   - Bounded table. Published rows are deleted; nothing accumulates.
//
// # Several relays: leases and fencing
//
// Relays on one outbox (processes, hosts) share its rows through [Slots]
// lease slots (slot = shard % Slots) in the table <prefix>relay_lease: each
// takes its share, renews it every second or so and publishes only rows of
// slots it holds. A slot moves to another instance only after its rows in
// flight were published and deleted, so joining, leaving gracefully and
// rebalancing cause no duplicates. An instance that died loses its slots
// after LeaseTTL. An instance paused past its lease is fenced: it starts no
// publish call after its local deadline, and its deletes check the lease in
// SQL; its rows go to the new owner (at-least-once). Each message carries
// the fencing token outbox.MetadataLease ("slot:epoch"). DisableLeases turns
// this off for a deployment that guarantees a single relay.
//
// # Lifecycle
//
// Run blocks until its context is cancelled or Close is called; it then
// stops reading, lets the lanes finish the rows already read for up to
// ShutdownTimeout, deletes what was published and returns. Running is
// closed once the workers run. A Relay runs once.
package relay
