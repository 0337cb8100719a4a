package inbox_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/accordgo/accord/inbox"
	"github.com/accordgo/accord/internal/dbtest"
)

// The benchmarks apply b.N messages one after the other on PostgreSQL, each
// in its own transaction with a one-row UPDATE, and report events/s.
//
//	go test -run x -bench Inbox -benchtime 3000x ./inbox

func benchMessages(n int) []*message.Message {
	msgs := make([]*message.Message, n)
	for j := range msgs {
		msgs[j] = newMsg("event")
	}
	return msgs
}

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkInboxApply: Handle (inbox row + UPDATE + commit) per message.
func BenchmarkInboxApply(b *testing.B) {
	f := setup(b, dbtest.PostgresSchema(b), nil)
	f.seed(b, "k")
	h := f.incr("k")
	msgs := benchMessages(b.N)
	ctx := context.Background()
	b.ResetTimer()
	for j := range b.N {
		if res, err := f.ib.Handle(ctx, msgs[j], h); err != nil || res != inbox.ResultApplied {
			b.Fatalf("message %d: %s, %v", j, res, err)
		}
	}
	reportRate(b)
}

// BenchmarkInboxApplyPgx: HandlePgx on a pgxpool.
func BenchmarkInboxApplyPgx(b *testing.B) {
	f := setup(b, dbtest.PostgresSchema(b), nil)
	f.seed(b, "k")
	pool := newPool(b, 4)
	h := func(ctx context.Context, tx pgx.Tx, _ *message.Message) error { return f.incrPgx(ctx, tx, "k") }
	msgs := benchMessages(b.N)
	ctx := context.Background()
	b.ResetTimer()
	for j := range b.N {
		if res, err := f.ib.HandlePgx(ctx, pool, msgs[j], h); err != nil || res != inbox.ResultApplied {
			b.Fatalf("message %d: %s, %v", j, res, err)
		}
	}
	reportRate(b)
}

// BenchmarkInboxDuplicate: Handle of messages already applied (the
// redelivery path: one INSERT that conflicts, no handler).
func BenchmarkInboxDuplicate(b *testing.B) {
	f := setup(b, dbtest.PostgresSchema(b), nil)
	f.seed(b, "k")
	h := f.incr("k")
	msgs := benchMessages(b.N)
	ctx := context.Background()
	for j := range b.N {
		if _, err := f.ib.Handle(ctx, msgs[j], h); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for j := range b.N {
		if res, err := f.ib.Handle(ctx, msgs[j], h); err != nil || res != inbox.ResultDuplicate {
			b.Fatalf("message %d: %s, %v", j, res, err)
		}
	}
	reportRate(b)
}

// BenchmarkNoInbox: the same UPDATE in a plain transaction, without the
// inbox: the baseline.
func BenchmarkNoInbox(b *testing.B) {
	f := setup(b, dbtest.PostgresSchema(b), nil)
	f.seed(b, "k")
	ctx := context.Background()
	b.ResetTimer()
	for j := range b.N {
		err := func() error {
			tx, err := f.env.DB.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			if err := f.incrTx(ctx, tx, "k"); err != nil {
				_ = tx.Rollback()
				return err
			}
			return tx.Commit()
		}()
		if err != nil {
			b.Fatalf("message %d: %v", j, err)
		}
	}
	reportRate(b)
}
