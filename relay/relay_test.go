package relay_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// A transaction that took its sequence number first but commits after
// later rows were published must still be published (watermill issue 311).
func TestLateCommitNotLost(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	ob := newOutbox(t, env)
	sink := newMemSink()
	startRelay(t, env, sink, &relay.Config{SweepInterval: time.Hour})
	ctx := context.Background()

	late, err := env.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	lateMsg := outbox.NewMessage([]byte("late"))
	require.NoError(t, ob.WriteTx(ctx, late, outbox.Event{Topic: "t", Key: "a", Message: lateMsg}))

	// Rows written after the late one are committed and published first,
	// so the relay's cursor moves past the late row's sequence number.
	for i := 0; i < 3; i++ {
		ids := writeEvents(t, env, ob, "t", "b", 10)
		waitFor(t, 10*time.Second, "early rows", func() bool { return sink.has(ids[len(ids)-1]) })
	}
	require.False(t, sink.has(lateMsg.UUID), "an uncommitted row was published")

	require.NoError(t, late.Commit())
	waitFor(t, 10*time.Second, "the late-committed row", func() bool { return sink.has(lateMsg.UUID) })
	waitFor(t, 10*time.Second, "an empty outbox", func() bool { return pending(t, env) == 0 })
}

// 16 writers, random rollbacks, overlapping transactions: every committed
// event arrives exactly once, no rolled-back one does, and each key's
// versions arrive in order with no gap.
func TestConcurrentWritersOrderPerKey(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		ob := newOutbox(t, env)
		const keys, writers = 40, 16
		txPerWriter := 150
		if env.Dialect == accord.SQLite {
			txPerWriter = 40
		}
		aggs := "agg_" + strconv.Itoa(rand.IntN(1<<30))
		if env.Schema != "" {
			aggs = env.Schema + "." + aggs
		}
		_, err := env.DB.Exec("CREATE TABLE " + aggs + " (id VARCHAR(64) PRIMARY KEY, version BIGINT NOT NULL)")
		require.NoError(t, err)
		for k := 0; k < keys; k++ {
			_, err := env.DB.Exec("INSERT INTO "+aggs+" (id, version) VALUES ("+ph(env, 1)+", 0)", "k"+strconv.Itoa(k))
			require.NoError(t, err)
		}
		sink := newMemSink()
		startRelay(t, env, sink, &relay.Config{Lanes: 8, BatchSize: 50})

		var mu sync.Mutex
		committed := map[string]bool{}
		rolledBack := map[string]bool{}
		var wg sync.WaitGroup
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(w), 42))
				for i := 0; i < txPerWriter; i++ {
					key := "k" + strconv.Itoa(rng.IntN(keys))
					tx, err := env.DB.BeginTx(ctx, nil)
					if err != nil {
						t.Error(err)
						return
					}
					// The state change first: it locks the aggregate row, which
					// serializes writers of one key.
					var version int64
					_, err = tx.ExecContext(ctx, "UPDATE "+aggs+" SET version = version + 1 WHERE id = "+ph(env, 1), key)
					if err == nil {
						err = tx.QueryRowContext(ctx, "SELECT version FROM "+aggs+" WHERE id = "+ph(env, 1), key).Scan(&version)
					}
					if err != nil {
						_ = tx.Rollback()
						t.Error(err)
						return
					}
					var evs []outbox.Event
					for j := 0; j < 1+rng.IntN(3); j++ {
						m := outbox.NewMessage([]byte(fmt.Sprintf("%s/%d/%d", key, version, j)))
						m.Metadata.Set("sub", strconv.Itoa(j))
						evs = append(evs, outbox.Event{Topic: "orders", Key: key, Version: version, Message: m})
					}
					if err := ob.WriteTx(ctx, tx, evs...); err != nil {
						_ = tx.Rollback()
						t.Error(err)
						return
					}
					if env.Dialect == accord.Postgres && rng.IntN(4) == 0 {
						// Hold the transaction open a little so commits overlap
						// and land out of sequence order.
						_, _ = tx.ExecContext(ctx, "SELECT pg_sleep(0.002)")
					}
					rollback := rng.IntN(5) == 0
					mu.Lock()
					for _, e := range evs {
						if rollback {
							rolledBack[e.Message.UUID] = true
						} else {
							committed[e.Message.UUID] = true
						}
					}
					mu.Unlock()
					if rollback {
						require.NoError(t, tx.Rollback())
					} else if err := tx.Commit(); err != nil {
						t.Error(err)
						return
					}
				}
			}(w)
		}
		wg.Wait()
		require.False(t, t.Failed())
		waitFor(t, 60*time.Second, "all committed events", func() bool { return sink.distinct() >= len(committed) })
		waitFor(t, 10*time.Second, "an empty outbox", func() bool { return pending(t, env) == 0 })

		msgs := sink.snapshot()
		require.Len(t, msgs, len(committed), "duplicates in steady state")
		type pos struct{ version, sub int64 }
		last := map[string]pos{}
		for _, m := range msgs {
			require.True(t, committed[m.UUID], "unexpected message %s (rolled back: %v)", m.UUID, rolledBack[m.UUID])
			key := m.Metadata.Get(outbox.MetadataKey)
			v, err := strconv.ParseInt(m.Metadata.Get(outbox.MetadataVersion), 10, 64)
			require.NoError(t, err)
			sub, _ := strconv.ParseInt(m.Metadata.Get("sub"), 10, 64)
			prev := last[key]
			if v == prev.version {
				require.Equal(t, prev.sub+1, sub, "key %s version %d: events of one transaction out of order", key, v)
			} else {
				require.Equal(t, prev.version+1, v, "key %s: version %d after %d", key, v, prev.version)
				require.Equal(t, int64(0), sub)
			}
			last[key] = pos{v, sub}
		}
		// Every key's last version is the aggregate's committed version.
		for k := 0; k < keys; k++ {
			key := "k" + strconv.Itoa(k)
			var v int64
			require.NoError(t, env.DB.QueryRow("SELECT version FROM "+aggs+" WHERE id = "+ph(env, 1), key).Scan(&v))
			require.Equal(t, v, last[key].version, "key %s", key)
		}
	})
}

func ph(env dbtest.Env, n int) string {
	if env.Dialect == accord.Postgres {
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

// A publish that fails is retried with backoff, recorded on the row, and
// blocks only its own lane; nothing is dropped.
func TestPublishFailureRetried(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env)
		sink := newMemSink()
		brokerDown := errors.New("broker says no: payload rejected")
		var failing sync.Map
		failing.Store("poison", true)
		sink.setFail(func(topic string, msgs []*message.Message) error {
			for _, m := range msgs {
				if _, ok := failing.Load(m.Metadata.Get(outbox.MetadataKey)); ok {
					return brokerDown
				}
			}
			return nil
		})
		// Lanes: 1024 puts every shard in its own lane, so "poison" and the
		// other keys never share one.
		r := startRelay(t, env, sink, &relay.Config{Lanes: 1024})
		bad := writeEvents(t, env, ob, "t", "poison", 1)[0]
		var good []string
		for i := 0; i < 20; i++ {
			key := "good-" + strconv.Itoa(i)
			if outbox.Shard(key) == outbox.Shard("poison") {
				continue
			}
			good = append(good, writeEvents(t, env, ob, "t", key, 5)...)
		}
		waitFor(t, 20*time.Second, "other keys to flow past the failing one", func() bool {
			for _, id := range good {
				if !sink.has(id) {
					return false
				}
			}
			return true
		})
		waitFor(t, 20*time.Second, "failed attempts recorded on the row", func() bool {
			var attempts int
			var lastErr *string
			err := env.DB.QueryRow("SELECT attempts, last_error FROM "+table(env, "outbox")+" WHERE id = "+ph(env, 1), bad).Scan(&attempts, &lastErr)
			return err == nil && attempts >= 2 && lastErr != nil && *lastErr == brokerDown.Error()
		})
		require.False(t, sink.has(bad))
		require.Positive(t, r.Stats().Failures)

		failing.Delete("poison")
		waitFor(t, 20*time.Second, "the failing event after the broker recovered", func() bool { return sink.has(bad) })
		waitFor(t, 10*time.Second, "an empty outbox", func() bool { return pending(t, env) == 0 })
	})
}

// A row that cannot become a message is retried, never dropped, and goes
// out once repaired.
func TestMalformedRowRetried(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env)
		sink := newMemSink()
		startRelay(t, env, sink, nil)
		id := outbox.NewID()
		_, err := env.DB.Exec("INSERT INTO "+table(env, "outbox")+
			" (id, topic, partition_key, shard, payload, metadata, created_at) VALUES ("+
			ph(env, 1)+", 't', 'bad', 0, "+ph(env, 2)+", "+ph(env, 3)+", "+ph(env, 4)+")",
			id, []byte("x"), `{"not": ["strings"]}`, createdAt(env))
		require.NoError(t, err)
		waitFor(t, 20*time.Second, "the malformed row's error recorded", func() bool {
			var lastErr *string
			err := env.DB.QueryRow("SELECT last_error FROM "+table(env, "outbox")+" WHERE id = "+ph(env, 1), id).Scan(&lastErr)
			return err == nil && lastErr != nil && len(*lastErr) > 0
		})
		var lastErr string
		require.NoError(t, env.DB.QueryRow("SELECT last_error FROM "+table(env, "outbox")+" WHERE id = "+ph(env, 1), id).Scan(&lastErr))
		require.Contains(t, lastErr, "malformed outbox row")

		// Other events keep flowing (different shard, different lane).
		ok := writeEvents(t, env, ob, "t", "fine", 3)
		waitFor(t, 10*time.Second, "a healthy event", func() bool { return sink.has(ok[2]) })

		_, err = env.DB.Exec("UPDATE "+table(env, "outbox")+" SET metadata = '{}' WHERE id = "+ph(env, 1), id)
		require.NoError(t, err)
		waitFor(t, 20*time.Second, "the repaired row", func() bool { return sink.has(id) })
		waitFor(t, 10*time.Second, "an empty outbox", func() bool { return pending(t, env) == 0 })
	})
}

func createdAt(env dbtest.Env) any {
	if env.Dialect != accord.Postgres {
		return time.Now().UnixMicro()
	}
	return time.Now()
}

// Published rows are deleted: the table does not grow.
func TestTableEmptiedAfterPublish(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env)
		sink := newMemSink()
		r := startRelay(t, env, sink, &relay.Config{BatchSize: 100})
		var ids []string
		for i := 0; i < 10; i++ {
			ids = append(ids, writeEvents(t, env, ob, "t", "k"+strconv.Itoa(i), 300)...)
		}
		waitFor(t, 30*time.Second, "all events", func() bool { return sink.distinct() == len(ids) })
		waitFor(t, 10*time.Second, "an empty outbox", func() bool { return pending(t, env) == 0 })
		// The counter moves just after the DELETE returns.
		waitFor(t, 10*time.Second, "the deleted counter", func() bool { return r.Stats().Deleted >= int64(len(ids)) })
		st := r.Stats()
		require.Equal(t, int64(len(ids)), st.Published, "duplicates in steady state")
		require.Equal(t, int64(len(ids)), st.Deleted)
		for _, m := range sink.snapshot() {
			require.NotEmpty(t, m.Metadata.Get(outbox.MetadataCreatedAt))
			require.Equal(t, "t", m.Metadata.Get("test_topic"))
		}
	})
}

// An idle relay is woken by the commit itself (LISTEN/NOTIFY on PostgreSQL,
// Wake on MySQL and SQLite), not by polling.
func TestCommitWakesIdleRelay(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env)
		sink := newMemSink()
		r := startRelay(t, env, sink, &relay.Config{PollInterval: time.Hour, SweepInterval: time.Hour})
		for i := 0; i < 3; i++ {
			// The first read happens at start; after it the relay only wakes
			// on a notification.
			id := writeEvents(t, env, ob, "t", "k", 1)[0]
			if env.Dialect != accord.Postgres {
				r.Wake() // no LISTEN/NOTIFY on MySQL and SQLite
			}
			waitFor(t, 20*time.Second, "a wake-up on commit", func() bool { return sink.has(id) })
		}
	})
}

func TestRunNotMigrated(t *testing.T) {
	t.Parallel()
	db := dbtest.Postgres(t)
	r, err := relay.New(db, newMemSink(), &relay.Config{Dialect: accord.Postgres, Schema: dbtest.RandomName("none_")})
	require.NoError(t, err)
	err = r.Run(context.Background())
	require.ErrorIs(t, err, relay.ErrNotMigrated)
	require.Contains(t, err.Error(), "accord migrate up")
	require.ErrorIs(t, r.Run(context.Background()), relay.ErrAlreadyRunning)
	require.NoError(t, r.Close())
	require.NoError(t, r.Close())
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	db := dbtest.Postgres(t)
	for name, cfg := range map[string]*relay.Config{
		"no dialect":      {},
		"bad prefix":      {Dialect: accord.Postgres, TablePrefix: "Bad-Prefix"},
		"sql in schema":   {Dialect: accord.Postgres, Schema: `x"; drop table y; --`},
		"too many lanes":  {Dialect: accord.Postgres, Lanes: relay.LanesMax + 1},
		"huge batch":      {Dialect: accord.Postgres, BatchSize: relay.BatchSizeMax + 1},
		"small inflight":  {Dialect: accord.Postgres, BatchSize: 100, MaxInFlight: 10},
		"negative poll":   {Dialect: accord.Postgres, PollInterval: -time.Second},
		"backoff min>max": {Dialect: accord.Postgres, RetryBackoffMin: time.Minute, RetryBackoffMax: time.Second},
		"short lease":     {Dialect: accord.Postgres, LeaseTTL: 100 * time.Millisecond},
		"delay on pg":     {Dialect: accord.Postgres, VisibilityDelay: time.Millisecond},
		"delay on sqlite": {Dialect: accord.SQLite, VisibilityDelay: time.Millisecond},
		"long delay":      {Dialect: accord.MySQL, VisibilityDelay: relay.VisibilityDelayMax + 1},
	} {
		_, err := relay.New(db, newMemSink(), cfg)
		require.ErrorIs(t, err, relay.ErrInvalidConfig, name)
	}
	_, err := relay.New(nil, nil, &relay.Config{Dialect: accord.SQLite})
	require.ErrorIs(t, err, relay.ErrInvalidConfig)
	require.ErrorContains(t, err, "db is nil")
	require.ErrorContains(t, err, "publisher is nil")

	r, err := relay.New(db, newMemSink(), nil)
	require.Nil(t, r)
	require.ErrorIs(t, err, accord.ErrUnknownDialect)
}

// Close before Run makes Run return at once; Close is idempotent.
func TestCloseBeforeRun(t *testing.T) {
	t.Parallel()
	env := dbtest.SQLite(t)
	r, err := relay.New(env.DB, newMemSink(), &relay.Config{Dialect: env.Dialect})
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.NoError(t, r.Close())
	require.NoError(t, r.Run(context.Background()))
}

// A transaction left open elsewhere in the cluster (here: a write in another
// database, which holds back the cluster-wide xmin) does not hold delivery
// back: events are published while it is still open.
func TestOpenTransactionElsewhereDoesNotStall(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	ob := newOutbox(t, env)
	sink := newMemSink()
	startRelay(t, env, sink, nil)

	other, err := sql.Open("pgx", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
	require.NoError(t, err)
	defer other.Close()
	ctx := context.Background()
	tx, err := other.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	var xid string
	require.NoError(t, tx.QueryRowContext(ctx, "SELECT pg_current_xact_id()::text").Scan(&xid))
	var xmin string
	require.NoError(t, env.DB.QueryRow("SELECT pg_snapshot_xmin(pg_current_snapshot())::text").Scan(&xmin))
	require.LessOrEqual(t, len(xmin), len(xid))
	require.True(t, len(xmin) < len(xid) || xmin <= xid, "the other transaction does not hold back xmin (xmin %s, xid %s)", xmin, xid)

	ids := writeEvents(t, env, ob, "t", "k", 10)
	waitFor(t, 10*time.Second, "delivery while another database's transaction is open", func() bool { return sink.has(ids[9]) })
	// The other transaction is still open: it did not stall delivery.
	var one int
	require.NoError(t, tx.QueryRowContext(ctx, "SELECT 1").Scan(&one))
}

// gatedSink blocks every publish to topic "slow" until gate is closed, like
// a hung broker.
type gatedSink struct{ gate chan struct{} }

func (s gatedSink) Publish(topic string, _ ...*message.Message) error {
	if topic == "slow" {
		<-s.gate
	}
	return nil
}

func (s gatedSink) Close() error { return nil }

// MaxInFlight bounds the rows read but not deleted, even while a lane is
// stuck.
func TestMaxInFlightBound(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	ob := newOutbox(t, env)
	fast, slow := "", "" // two keys on different lanes of 2
	for i := 0; fast == "" || slow == ""; i++ {
		k := fmt.Sprintf("k%d", i)
		if outbox.Shard(k)%2 == 0 && fast == "" {
			fast = k
		} else if outbox.Shard(k)%2 == 1 && slow == "" {
			slow = k
		}
	}
	writeEvents(t, env, ob, "fast", fast, 1)
	writeEvents(t, env, ob, "slow", slow, 30)
	sink := gatedSink{gate: make(chan struct{})}
	r := startRelay(t, env, sink, &relay.Config{BatchSize: 10, MaxInFlight: 10, Lanes: 2, ShutdownTimeout: time.Second})
	t.Cleanup(func() { close(sink.gate) }) // runs before the relay's cleanup
	waitFor(t, 10*time.Second, "the fast row deleted", func() bool { return r.Stats().Deleted == 1 })
	require.Never(t, func() bool { return r.Stats().InFlight > 10 }, time.Second, 5*time.Millisecond, "more rows in flight than MaxInFlight")
	require.Equal(t, int64(10), r.Stats().InFlight)
}

// ShutdownTimeout bounds Run even when a publish call hangs in the broker;
// the unpublished rows stay in the outbox.
func TestShutdownTimeoutBoundsHungPublish(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	ob := newOutbox(t, env)
	writeEvents(t, env, ob, "slow", "k", 5)
	sink := gatedSink{gate: make(chan struct{})}
	defer close(sink.gate)
	r, err := relay.New(env.DB, sink, &relay.Config{Dialect: env.Dialect, Schema: env.Schema, ShutdownTimeout: 500 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()
	<-r.Running()
	waitFor(t, 10*time.Second, "rows in flight", func() bool { return r.Stats().InFlight == 5 })
	cancel()
	select {
	case err := <-errc:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return 10 s after cancel with ShutdownTimeout 500ms")
	}
	require.Equal(t, 5, pending(t, env))
}

// countingObserver counts what the relay reports.
type countingObserver struct {
	relay.ObserverDefaults
	mu                  sync.Mutex
	published, failed   int
	deleted, reads      int
	lastAttempt, maxLag time.Duration
}

func (o *countingObserver) Published(_ context.Context, p relay.Publication) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.published += p.Messages
	for _, c := range p.CreatedAt {
		o.maxLag = max(o.maxLag, time.Since(c))
	}
}

func (o *countingObserver) PublishFailed(_ context.Context, p relay.Publication) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failed += p.Messages
	o.lastAttempt = p.RetryIn
}

func (o *countingObserver) Deleted(_ context.Context, n int, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.deleted += n
}

func (o *countingObserver) Read(context.Context, int, bool, time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reads++
}

// The Observer sees every publish, failure, delete and read.
func TestObserver(t *testing.T) {
	t.Parallel()
	env := dbtest.SQLite(t)
	ob := newOutbox(t, env)
	sink := newMemSink()
	var failOnce sync.Once
	sink.setFail(func(string, []*message.Message) error {
		var err error
		failOnce.Do(func() { err = errors.New("first publish fails") })
		return err
	})
	obs := &countingObserver{}
	r := startRelay(t, env, sink, &relay.Config{Observer: obs})
	writeEvents(t, env, ob, "t", "k", 20)
	r.Wake()
	waitFor(t, 10*time.Second, "deletes observed", func() bool {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		return obs.deleted == 20
	})
	obs.mu.Lock()
	defer obs.mu.Unlock()
	require.Equal(t, 20, obs.published)
	require.Equal(t, 20, obs.failed)
	require.Positive(t, obs.lastAttempt)
	require.Positive(t, obs.reads)
	require.Positive(t, obs.maxLag)
}

// With accord.notify = 'off' the trigger does not NOTIFY (write-heavy
// producers avoid PostgreSQL's commit serialization); the relay still finds
// the rows by polling.
func TestNotifyCanBeTurnedOff(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	ob := newOutbox(t, env)
	ctx := context.Background()
	connect := func() *pgx.Conn {
		c, err := pgx.Connect(ctx, dbtest.PostgresURL())
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close(context.Background()) })
		return c
	}
	listener, quiet, loud := connect(), connect(), connect()
	_, err := listener.Exec(ctx, `LISTEN "`+env.Schema+`.accord_outbox"`)
	require.NoError(t, err)
	_, err = quiet.Exec(ctx, "SET accord.notify = 'off'")
	require.NoError(t, err)
	write := func(c *pgx.Conn) string {
		tx, err := c.Begin(ctx)
		require.NoError(t, err)
		m := outbox.NewMessage([]byte("x"))
		require.NoError(t, ob.WritePgxTx(ctx, tx, outbox.Event{Topic: "t", Key: "k", Message: m}))
		require.NoError(t, tx.Commit(ctx))
		return m.UUID
	}
	quietID := write(quiet)
	write(loud)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := listener.WaitForNotification(wctx)
	require.NoError(t, err)
	// The quiet transaction committed first: had it notified, its
	// notification would come first.
	require.Equal(t, loud.PgConn().PID(), n.PID, "the quiet transaction notified")

	sink := newMemSink()
	startRelay(t, env, sink, &relay.Config{PollInterval: 50 * time.Millisecond, DisableNotify: true})
	waitFor(t, 10*time.Second, "the quiet row found by polling", func() bool { return sink.has(quietID) })
}
