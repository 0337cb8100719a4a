package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/accordgo/accord/internal/sqlstore"
)

// ErrDeadLetterNotFound is returned for a dead-letter seq that does not
// exist (requeued or dropped already).
var ErrDeadLetterNotFound = sqlstore.ErrDeadLetterNotFound

// DeadLetter is an outbox row the relay gave up on after
// relay.Config.DeadLetterAfter failed publish attempts.
type DeadLetter struct {
	// Seq is the row's original sequence number; Requeue puts it back with
	// the same one.
	Seq      int64
	ID       string
	Topic    string
	Key      string
	Version  int64 // 0 when the event had none
	Payload  []byte
	Metadata string // JSON object
	// CreatedAt is when the event was written.
	CreatedAt time.Time
	Attempts  int
	LastError string
	// Parked is true when the key's later rows are held back until this
	// dead letter is requeued or dropped (relay.ParkKey).
	Parked bool
	DeadAt time.Time
}

// DeadLetterListParams are the parameters of [Outbox.DeadLetters]; nil
// means the first 100.
type DeadLetterListParams struct {
	// After lists dead letters with Seq > After (for paging).
	After int64
	// Limit bounds the result; defaults to 100, at most 10,000.
	Limit int
}

// DeadLetters lists the relay's dead letters, oldest first.
func (o *Outbox) DeadLetters(ctx context.Context, db *sql.DB, params *DeadLetterListParams) ([]DeadLetter, error) {
	p := DeadLetterListParams{Limit: 100}
	if params != nil {
		p = *params
		if p.Limit <= 0 {
			p.Limit = 100
		}
	}
	if p.Limit > 10000 {
		return nil, fmt.Errorf("%w: Limit %d is over 10000", ErrInvalidConfig, p.Limit)
	}
	rows, err := o.names.ListDead(ctx, db, p.After, p.Limit)
	if err != nil {
		return nil, o.wrapDeadErr(err)
	}
	out := make([]DeadLetter, len(rows))
	for i, r := range rows {
		out[i] = DeadLetter{Seq: r.Seq, ID: r.ID, Topic: r.Topic, Key: r.Key, Version: r.Version.Int64,
			Payload: r.Payload, Metadata: string(r.Metadata), CreatedAt: r.CreatedAt, Attempts: r.Attempts,
			LastError: r.LastError, Parked: r.Parked, DeadAt: r.DeadAt}
	}
	return out, nil
}

// RequeueDeadLetter moves a dead letter back into the outbox with its
// original seq, so the relay publishes it again, before the rows of its key
// that were held back.
func (o *Outbox) RequeueDeadLetter(ctx context.Context, db *sql.DB, seq int64) error {
	return o.wrapDeadErr(o.names.RequeueDead(ctx, db, seq))
}

// DropDeadLetter deletes a dead letter for good; the rows of its key that
// were held back flow again.
func (o *Outbox) DropDeadLetter(ctx context.Context, db *sql.DB, seq int64) error {
	return o.wrapDeadErr(o.names.DropDead(ctx, db, seq))
}

func (o *Outbox) wrapDeadErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrDeadLetterNotFound):
		return fmt.Errorf("accord outbox: %w", err)
	case sqlstore.IsUndefinedTable(err):
		return fmt.Errorf("accord outbox: table %s does not exist; run `accord migrate up`: %w", o.names.Dead(), err)
	}
	return fmt.Errorf("accord outbox: dead letters: %w", err)
}
