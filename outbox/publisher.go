package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/accordgo/accord/internal/sqlstore"
)

// Publisher is a watermill message.Publisher that writes into the outbox.
// Bound to a transaction ([Outbox.Publisher], [Outbox.PgxPublisher]) it
// writes in that transaction, and the caller commits or rolls back; bound to
// a pool ([Outbox.DBPublisher]) each Publish call runs in its own
// transaction.
//
// Publish takes its context from the first message (watermill's convention)
// and reads the partition key and version from metadata (MetadataKey,
// MetadataVersion). All messages of one call are written with one statement.
type Publisher struct {
	o      *Outbox
	write  func(ctx context.Context, events []Event) error
	closed atomic.Bool
}

var _ message.Publisher = (*Publisher)(nil)

// Publisher returns a message.Publisher bound to a database/sql transaction.
// Create one per transaction, as with watermill-sql.
func (o *Outbox) Publisher(tx *sql.Tx) *Publisher {
	return &Publisher{o: o, write: func(ctx context.Context, events []Event) error {
		return o.WriteTx(ctx, tx, events...)
	}}
}

// PgxPublisher returns a message.Publisher bound to a pgx transaction.
func (o *Outbox) PgxPublisher(tx pgx.Tx) *Publisher {
	return &Publisher{o: o, write: func(ctx context.Context, events []Event) error {
		return o.WritePgxTx(ctx, tx, events...)
	}}
}

// DBPublisher returns a message.Publisher that writes each Publish call in a
// transaction of its own on db. Use it where events are not tied to other
// writes; otherwise bind a Publisher to the business transaction.
func (o *Outbox) DBPublisher(db *sql.DB) *Publisher {
	return &Publisher{o: o, write: func(ctx context.Context, events []Event) (err error) {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("accord outbox: begin: %w", err)
		}
		if err := o.WriteTx(ctx, tx, events...); err != nil {
			_ = tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("accord outbox: commit: %w", err)
		}
		return nil
	}}
}

// Publish writes msgs for topic into the outbox.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if p.closed.Load() {
		return ErrPublisherClosed
	}
	if len(msgs) == 0 {
		return nil
	}
	events, err := eventsFromMessages(topic, msgs)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if msgs[0] != nil {
		ctx = msgs[0].Context()
	}
	return p.write(ctx, events)
}

// Close marks the publisher closed. It never closes the transaction or the
// pool it writes through, which belong to the caller. It is idempotent.
func (p *Publisher) Close() error {
	p.closed.Store(true)
	return nil
}

// compile-time check that the database/sql handles fit.
var _ sqlstore.Execer = (*sql.Tx)(nil)
