package inbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/inbox"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
)

// fixture is one migrated installation with an inbox and a business table
// "state" (id, n) whose counters the handlers increment.
type fixture struct {
	env   dbtest.Env
	ib    *inbox.Inbox
	obs   *recorder
	state string // quoted, qualified
}

// setup creates the state table and an Inbox with consumer "billing" (cfg
// may override fields; Dialect and Schema always come from env).
func setup(t testing.TB, env dbtest.Env, cfg *inbox.Config) *fixture {
	t.Helper()
	c := inbox.Config{}
	if cfg != nil {
		c = *cfg
	}
	c.Dialect, c.Schema = env.Dialect, env.Schema
	if c.Consumer == "" {
		c.Consumer = "billing"
	}
	obs := &recorder{}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Observer == nil {
		c.Observer = obs
	}
	ib, err := inbox.New(env.DB, &c)
	require.NoError(t, err)
	f := &fixture{env: env, ib: ib, obs: obs, state: qualified(env, "state")}
	_, err = env.DB.Exec("CREATE TABLE " + f.state + " (id VARCHAR(64) PRIMARY KEY, n BIGINT NOT NULL)")
	require.NoError(t, err)
	return f
}

// qualified quotes table name in env's schema.
func qualified(env dbtest.Env, name string) string {
	switch env.Dialect {
	case accord.MySQL:
		return "`" + env.Schema + "`.`" + name + "`"
	case accord.Postgres:
		return `"` + env.Schema + `"."` + name + `"`
	}
	return `"` + name + `"`
}

func ph(env dbtest.Env, n int) string {
	if env.Dialect == accord.Postgres {
		return fmt.Sprintf("$%d", n)
	}
	return "?"
}

// seed creates counter key at 0.
func (f *fixture) seed(t testing.TB, keys ...string) {
	t.Helper()
	for _, k := range keys {
		_, err := f.env.DB.Exec("INSERT INTO "+f.state+" (id, n) VALUES ("+ph(f.env, 1)+", 0)", k)
		require.NoError(t, err)
	}
}

// counter returns key's counter.
func (f *fixture) counter(t testing.TB, key string) int64 {
	t.Helper()
	var n int64
	require.NoError(t, f.env.DB.QueryRow("SELECT n FROM "+f.state+" WHERE id = "+ph(f.env, 1), key).Scan(&n))
	return n
}

// incr returns a handler that increments key's counter in the inbox
// transaction.
func (f *fixture) incr(key string) inbox.HandlerFunc {
	return func(ctx context.Context, tx *sql.Tx, _ *message.Message) error {
		return f.incrTx(ctx, tx, key)
	}
}

func (f *fixture) incrTx(ctx context.Context, tx *sql.Tx, key string) error {
	res, err := tx.ExecContext(ctx, "UPDATE "+f.state+" SET n = n + 1 WHERE id = "+ph(f.env, 1), key)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("counter %q does not exist", key)
	}
	return nil
}

// rows counts the rows of an Accord table (suffix) for consumer.
func (f *fixture) rows(t testing.TB, suffix, consumer string) int {
	t.Helper()
	var n int
	q := "SELECT count(*) FROM " + qualified(f.env, "accord_"+suffix) + " WHERE consumer = " + ph(f.env, 1)
	require.NoError(t, f.env.DB.QueryRow(q, consumer).Scan(&n))
	return n
}

// attempts returns the failed attempts recorded for a message (0 if none).
func (f *fixture) attempts(t testing.TB, id string) (int, string) {
	t.Helper()
	var n int
	var last string
	q := "SELECT attempts, last_error FROM " + qualified(f.env, "accord_inbox_attempt") +
		" WHERE consumer = " + ph(f.env, 1) + " AND message_id = " + ph(f.env, 2)
	err := f.env.DB.QueryRow(q, f.ib.Consumer(), inbox.StoredID(id)).Scan(&n, &last)
	if err == sql.ErrNoRows {
		return 0, ""
	}
	require.NoError(t, err)
	return n, last
}

// newMsg returns a message with a new UUIDv7 and metadata pairs.
func newMsg(payload string, kv ...string) *message.Message {
	m := outbox.NewMessage([]byte(payload))
	for i := 0; i+1 < len(kv); i += 2 {
		m.Metadata.Set(kv[i], kv[i+1])
	}
	return m
}

// recorder is an inbox.Observer that counts outcomes.
type recorder struct {
	inbox.ObserverDefaults
	applied, duplicate, failed, deadLettered atomic.Int64

	mu   sync.Mutex
	last []inbox.Observation
}

func (r *recorder) keep(o inbox.Observation) {
	r.mu.Lock()
	r.last = append(r.last, o)
	r.mu.Unlock()
}

func (r *recorder) Applied(_ context.Context, o inbox.Observation) { r.applied.Add(1); r.keep(o) }
func (r *recorder) Duplicate(_ context.Context, o inbox.Observation) {
	r.duplicate.Add(1)
	r.keep(o)
}
func (r *recorder) Failed(_ context.Context, o inbox.Observation) { r.failed.Add(1); r.keep(o) }
func (r *recorder) DeadLettered(_ context.Context, o inbox.Observation) {
	r.deadLettered.Add(1)
	r.keep(o)
}

func (r *recorder) observations() []inbox.Observation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]inbox.Observation(nil), r.last...)
}

// waitFor polls cond every 10 ms until it holds, failing t after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lockWaiters counts the sessions of env's server blocked on a row lock in a
// statement on env's schema (PostgreSQL and MySQL).
func lockWaiters(t testing.TB, env dbtest.Env) int {
	t.Helper()
	var n int
	var err error
	switch env.Dialect {
	case accord.Postgres:
		err = env.DB.QueryRow(`SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND position($1 in query) > 0`, env.Schema).Scan(&n)
	case accord.MySQL:
		// MariaDB's innodb_trx shows some lock waits as RUNNING; the
		// process list shows every blocked INSERT in state "Update".
		err = env.DB.QueryRow(`SELECT count(*) FROM information_schema.processlist
			WHERE command IN ('Query', 'Execute') AND state = 'Update' AND LOCATE(?, info) > 0
			AND info LIKE 'INSERT%'`, env.Schema).Scan(&n)
	default:
		t.Fatalf("lockWaiters: no lock view on %s", env.Dialect)
	}
	require.NoError(t, err)
	return n
}
