// Package inbox gives a consumer an exactly-once effect on top of
// at-least-once delivery: each message changes the consumer's database once,
// however many times the broker delivers it.
//
// Brokers deliver at least once: a consumer that crashes after its commit
// and before its acknowledgement gets the message again, and so does one
// whose acknowledgement is lost. The inbox makes the redelivery harmless.
// [Inbox.Handle] begins a transaction in the consumer's own database,
// inserts the row (consumer, message id) into the inbox table and runs the
// handler in the same transaction:
//
//	BEGIN
//	INSERT INTO accord_inbox (consumer, message_id, received_at) ... ON CONFLICT DO NOTHING
//	  -- row inserted: run the handler, which changes state (and may write
//	  -- outbox events) through the same transaction
//	  -- no row inserted: the message was applied before; change nothing
//	COMMIT
//
// The state change and the record that the message was applied commit
// together, so either both exist or neither does: a redelivery finds the row
// and is acknowledged without effect ([ResultDuplicate]). Two deliveries of
// the same message handled at the same moment (two replicas of a consumer,
// a redelivery racing a slow handler) meet on the inbox row's primary key:
// the second waits for the first transaction and becomes a duplicate when
// it commits.
//
// # Consume, change state, emit
//
// A handler that must announce what it did writes its events with
// outbox.WriteTx (or outbox.WritePgxTx) in the transaction it is given:
// consuming the message, the state change and the outgoing events are one
// commit, and the relay publishes the events afterwards.
//
//	func applyPayment(ctx context.Context, tx *sql.Tx, msg *message.Message) error {
//		var p Payment
//		if err := json.Unmarshal(msg.Payload, &p); err != nil {
//			return fmt.Errorf("%w: %v", inbox.ErrDecode, err)
//		}
//		if _, err := tx.ExecContext(ctx, `UPDATE invoices SET paid = true WHERE id = $1`, p.InvoiceID); err != nil {
//			return err
//		}
//		return ob.WriteTx(ctx, tx, outbox.Event{Topic: "invoices.paid", Key: p.InvoiceID, Message: outbox.NewMessage(msg.Payload)})
//	}
//
//	router.AddConsumerHandler("billing", "payments.received", sub, ib.HandlerFunc(applyPayment))
//
// [Inbox.HandlerFunc] adapts a handler to a watermill router;
// [Inbox.Middleware] runs unmodified watermill handlers (watermill's cqrs
// event handlers, for example) in the inbox transaction, which they find
// with [TxFromContext]. pgx users call [Inbox.HandlePgx] with a pool.
//
// # Failures and dead letters
//
// When the handler fails, its transaction rolls back, the attempt is
// counted in the inbox_attempt table (in its own short transaction) and the
// error is returned, so watermill nacks the message and the broker
// redelivers it. A message that fails Config.MaxAttempts times (5 by
// default) is parked: in one transaction its payload, metadata, topic,
// reason and attempt count go into the dead_letter table and its inbox row
// is written, so the message is acknowledged, its redeliveries are
// duplicates, and the messages behind it keep flowing. Errors retrying
// cannot fix are parked at the first failure: an error wrapped with
// [Permanent], or wrapping [ErrDecode] or [ErrUnknownEventType]. A message
// without an id is parked at once ([ErrNoMessageID]) without an inbox row.
//
// [Inbox.DeadLetters] lists parked messages, [Inbox.Requeue] publishes one
// again (it is then applied like a new message) and [Inbox.Drop] discards
// it.
//
// # Retention
//
// Inbox rows cannot be kept forever. [Inbox.Cleanup] (or [Inbox.RunCleanup]
// in the background) deletes the ids of messages received more than
// Config.Retention ago (7 days by default). A message redelivered after
// that is applied again, so Retention must exceed the broker's redelivery
// window: how long after the first delivery the broker may still deliver a
// message (for NATS JetStream, the consumer's AckWait × MaxDeliver plus
// backoff, and the stream's duplicate window; for Kafka, how far back a
// consumer group can be reset).
//
// The API is not stable yet: it may change between minor versions until 1.0.
package inbox
