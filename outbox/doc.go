// Package outbox writes events into an outbox table inside the caller's own
// database transaction.
//
// # Model
//
// A service changes its business state and records the events that describe
// the change in the same local transaction. If the transaction rolls back,
// no event exists; once it commits, the events are durable and the relay
// (package relay, command `accord relay`) publishes them to a broker. There
// is no distributed transaction and no dual write.
//
// An event is a watermill *message.Message (payload and metadata) plus what
// the relay and consumers need:
//
//   - Topic: the destination topic on the broker.
//   - Key: the partition key, usually aggregate type and id ("order-42").
//     Events with the same key are published in the order their transactions
//     wrote them; events with different keys may be published in parallel.
//     Events without a key share the empty key, so they are ordered with
//     each other and are not parallelized.
//   - Version: an optional aggregate version, carried to consumers so that a
//     replica only moves forward.
//
// Message ids are UUIDv7 (time-ordered) when [NewMessage] creates the message
// or the message has no id. When the context carries an OpenTelemetry span,
// its W3C trace context (traceparent, tracestate) is added to the metadata.
//
// # Writing
//
// With database/sql (also what sqlc and GORM use underneath):
//
//	tx, _ := db.BeginTx(ctx, nil)
//	// ... INSERT INTO orders ...
//	err := ob.WriteTx(ctx, tx, outbox.Event{Topic: "orders", Key: "order-42", Message: msg})
//	tx.Commit()
//
// With pgx, [Outbox.WritePgxTx]. Many events are written with one statement.
// Existing watermill code (for example a cqrs.EventBus) publishes into the
// outbox through [Outbox.Publisher] or [Outbox.PgxPublisher], a
// message.Publisher bound to one transaction.
//
// The table must exist: create it with package migrate or `accord migrate up`.
// Accord never runs DDL at run time.
package outbox
