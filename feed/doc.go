// Package feed is Accord's pull strategy: a producer exposes a change feed,
// and consumers pull its events after a cursor and apply them in their own
// database, storing the cursor in the same transaction.
//
// Use it where a broker is not wanted between two services, where the
// consumer must be able to fall behind for a while (a batch job, a partner
// system, a reporting replica), or to replay history within the retention
// period. The push strategy (package relay to a broker, package inbox on the
// consumer side) has lower latency and fans out better; both can run at
// once, since the feed is filled by the same relay. docs/feeds.md compares
// them and documents the HTTP API.
//
// # Producer
//
// A [Source] owns the feed table (migration 005_feed) in the producer's
// database. Events get there through:
//
//   - [Source.Publisher], a watermill message.Publisher given to the relay
//     (relay.New(db, src.Publisher(), cfg)): every committed outbox event
//     lands in the feed, in the relay's order per partition key. Message
//     ids are kept, and an id the feed already holds is skipped, so the
//     relay's at-least-once redelivery after a crash leaves no duplicate.
//   - [Source.AppendTx], in the producer's own business transaction (no
//     outbox, no relay), at the price of serializing those transactions on
//     the feed's lock from the append to the commit.
//
// [Source.Read] serves pages after a cursor, long-polling when the reader is
// caught up; [Source.Handler] serves the same over HTTP; [Source.Prune]
// applies retention.
//
// # Commit-safe positions
//
// Each event has a position: 1, 2, 3, ... A reader that remembers "I have
// everything up to N" must never find later an event at a position <= N,
// so positions must follow commit order. Sequence numbers allocated at
// insert do not (watermill issue 311: a transaction that took number 4
// commits after the one that took 5, and a reader that saw 5 skips 4
// forever). Here a writer takes a lock (PostgreSQL
// pg_advisory_xact_lock on a key derived from the feed table's name; on
// MySQL a row lock on a sentinel row at position 0; on SQLite the write
// lock), reads the largest position, inserts at the next ones and commits,
// releasing the lock. Positions therefore grow in commit order without gaps,
// and a reader never sees position N+1 before N. The price is that feed
// writers are serialized, one transaction at a time; the Publisher holds
// the lock only for its own short transaction (one batch insert).
//
// # Cursors
//
// A cursor is an opaque string ("v1.<feed>.<position>") naming the last
// position read and the feed that issued it ([SourceConfig.Name]). The
// empty cursor is the start of the feed. Reading with a cursor fails with:
//
//   - [ErrMalformedCursor]: not a cursor.
//   - [ErrCursorFromFuture]: another feed's cursor, or a position beyond the
//     feed's head (the producer's database was restored from a backup).
//   - [ErrCursorExpired]: events after the cursor were pruned.
//
// The last two mean the consumer's state no longer matches the feed: it must
// resync (rebuild from a snapshot of the producer's state, then store a
// fresh cursor with [Puller.SetCursorTx], taken with [Source.Head] before
// the snapshot).
//
// # Consumer
//
// A [Puller] reads from a [Fetcher] (a [Client] over HTTP, or a [Source]
// directly) and applies each page in ONE transaction of the consumer's
// database: the handler's writes for every event of the page, and the
// update of the consumer's cursor (table feed_cursor) from the cursor the
// page was read after to the page's Next. So:
//
//   - a crash at any point (even kill -9) loses nothing and applies nothing
//     twice: either the page and the cursor move committed, or neither did
//     and the page is fetched again;
//   - events are applied in feed order, one page at a time;
//   - two pullers of the same consumer cannot both apply a page: the cursor
//     moves only if it still holds the value the page was read after
//     (compare-and-set, with the row locked until commit).
//
// A handler error rolls the page back; the puller retries it with backoff,
// or stops when the error is marked [Permanent]. A producer that is down
// is retried with backoff, forever. [Puller.PullOnce] drains the feed once,
// for scheduled jobs.
//
// The API is not stable yet: it may change between minor versions until 1.0.
package feed
