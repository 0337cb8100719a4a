package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/inbox"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
)

// newPool opens a pgx pool on the test database, closed when the test ends.
func newPool(t testing.TB, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dbtest.PostgresURL())
	require.NoError(t, err)
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

func (f *fixture) incrPgx(ctx context.Context, tx pgx.Tx, key string) error {
	tag, err := tx.Exec(ctx, "UPDATE "+f.state+" SET n = n + 1 WHERE id = $1", key)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("counter %q does not exist", key)
	}
	return nil
}

// The pgx path has the same guarantees: once in effect under sequential
// and concurrent redelivery, state and events committed together,
// failures counted, permanent errors parked.
func TestHandlePgx(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	f := setup(t, env, &inbox.Config{MaxAttempts: 2})
	f.seed(t, "k")
	const workers = 8
	pool := newPool(t, workers+2)
	ob, err := outbox.New(&outbox.Config{Dialect: accord.Postgres, Schema: env.Schema})
	require.NoError(t, err)
	ctx := context.Background()
	incr := func(ctx context.Context, tx pgx.Tx, _ *message.Message) error { return f.incrPgx(ctx, tx, "k") }

	msg := newMsg("x")
	for j := range 5 {
		res, err := f.ib.HandlePgx(ctx, pool, msg.Copy(), incr)
		require.NoError(t, err)
		if j == 0 {
			require.Equal(t, inbox.ResultApplied, res)
		} else {
			require.Equal(t, inbox.ResultDuplicate, res)
		}
	}
	require.EqualValues(t, 1, f.counter(t, "k"))

	// Concurrent deliveries wait on the first one's inbox row.
	msg = newMsg("y")
	var calls atomic.Int32
	entered := make(chan struct{}, workers)
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce)
	h := func(ctx context.Context, tx pgx.Tx, m *message.Message) error {
		calls.Add(1)
		entered <- struct{}{}
		<-release
		return f.incrPgx(ctx, tx, "k")
	}
	var wg sync.WaitGroup
	results := make([]inbox.Result, workers)
	errs := make([]error, workers)
	for w := range workers {
		wg.Go(func() { results[w], errs[w] = f.ib.HandlePgx(ctx, pool, msg.Copy(), h) })
	}
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery reached the handler")
	}
	waitFor(t, 10*time.Second, "7 deliveries waiting on the inbox row", func() bool { return lockWaiters(t, env) >= workers-1 })
	releaseOnce()
	wg.Wait()
	count := map[inbox.Result]int{}
	for w := range workers {
		require.NoError(t, errs[w])
		count[results[w]]++
	}
	require.Equal(t, map[inbox.Result]int{inbox.ResultApplied: 1, inbox.ResultDuplicate: workers - 1}, count)
	require.EqualValues(t, 1, calls.Load())
	require.EqualValues(t, 2, f.counter(t, "k"))

	// State and outbox event: both or neither.
	outboxRows := func() int {
		var n int
		require.NoError(t, env.DB.QueryRow("SELECT count(*) FROM "+qualified(env, "accord_outbox")).Scan(&n))
		return n
	}
	emit := func(fail error) inbox.PgxHandlerFunc {
		return func(ctx context.Context, tx pgx.Tx, m *message.Message) error {
			if err := f.incrPgx(ctx, tx, "k"); err != nil {
				return err
			}
			if err := ob.WritePgxTx(ctx, tx, outbox.Event{Topic: "invoices", Message: outbox.NewMessage(m.Payload)}); err != nil {
				return err
			}
			return fail
		}
	}
	transient := errors.New("transient")
	msg = newMsg("z")
	res, err := f.ib.HandlePgx(ctx, pool, msg, emit(transient))
	require.ErrorIs(t, err, transient)
	require.Equal(t, inbox.ResultFailed, res)
	require.EqualValues(t, 2, f.counter(t, "k"))
	require.Zero(t, outboxRows())
	n, last := f.attempts(t, msg.UUID)
	require.Equal(t, 1, n)
	require.Equal(t, "transient", last)
	res, err = inbox.ResultFailed, f.ib.HandlerFuncPgx(pool, emit(nil))(msg)
	require.NoError(t, err)
	require.EqualValues(t, 3, f.counter(t, "k"))
	require.Equal(t, 1, outboxRows())

	// MaxAttempts (2) and permanent errors park.
	msg = newMsg("w", inbox.MetadataTopic, "orders")
	for attempt := 1; attempt <= 2; attempt++ {
		res, err = f.ib.HandlePgx(ctx, pool, msg, emit(transient))
		if attempt == 1 {
			require.ErrorIs(t, err, transient)
			require.Equal(t, inbox.ResultFailed, res)
		} else {
			require.NoError(t, err)
			require.Equal(t, inbox.ResultDeadLettered, res)
		}
	}
	res, err = f.ib.HandlePgx(ctx, pool, newMsg("v"), func(context.Context, pgx.Tx, *message.Message) error {
		return fmt.Errorf("%w: bad JSON", inbox.ErrDecode)
	})
	require.NoError(t, err)
	require.Equal(t, inbox.ResultDeadLettered, res)
	dls, err := f.ib.DeadLetters(ctx, nil)
	require.NoError(t, err)
	require.Len(t, dls, 2)
	require.Equal(t, 2, dls[0].Attempts)
	require.Equal(t, "orders", dls[0].Topic)
	require.Equal(t, "transient", dls[0].Reason)
	require.Equal(t, 1, dls[1].Attempts)
	require.EqualValues(t, 3, f.counter(t, "k"))
	require.Equal(t, 1, outboxRows())

	// pgx needs PostgreSQL.
	sqliteInbox, err := inbox.New(nil, &inbox.Config{Dialect: accord.SQLite, Consumer: "c"})
	require.NoError(t, err)
	_, err = sqliteInbox.HandlePgx(ctx, pool, newMsg("u"), incr)
	require.ErrorContains(t, err, "postgres")
}
