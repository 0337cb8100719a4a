package relay_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// readCounter counts the relay's reads of the outbox.
type readCounter struct {
	relay.ObserverDefaults
	reads atomic.Int64
}

func (c *readCounter) Read(context.Context, int, bool, time.Duration) { c.reads.Add(1) }

// On MySQL a row becomes visible to the relay before a row with a smaller
// sequence number whose commit is not visible yet (InnoDB can release a
// committing transaction's locks before its commit is visible, so a writer
// serialized behind it commits first in the relay's eyes). The test stages
// that order with a transaction held open: while the relay reads, the
// younger row waits out VisibilityDelay, the older one commits within it,
// and both go out in sequence order. With the delay turned off, the younger
// row goes out first.
func TestVisibilityDelayMySQL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		delay   time.Duration
		inOrder bool
	}{{"delay", 3 * time.Second, true}, {"off", -1, false}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := dbtest.MySQLSchema(t)
			ctx := context.Background()
			ob := newOutbox(t, env)
			sink := newMemSink()
			reads := &readCounter{}
			r := startRelay(t, env, sink, &relay.Config{VisibilityDelay: tc.delay, Observer: reads})

			// The older row: inserted first (smaller seq), committed last.
			txA, err := env.DB.Begin()
			require.NoError(t, err)
			older := outbox.NewMessage([]byte("older"))
			require.NoError(t, ob.WriteTx(ctx, txA, outbox.Event{Topic: "t", Key: "k", Message: older}))
			younger := writePayloads(t, env, ob, "k", "younger")[0]

			// Let the relay read while only the younger row is visible.
			before := reads.reads.Load()
			r.Wake()
			waitFor(t, 10*time.Second, "two reads after the younger row's commit", func() bool { return reads.reads.Load() >= before+2 })
			require.NoError(t, txA.Commit())
			r.Wake()
			waitFor(t, 20*time.Second, "both rows published", func() bool { return sink.has(older.UUID) && sink.has(younger) })

			var order []string
			for _, m := range sink.snapshot() {
				order = append(order, m.UUID)
			}
			if tc.inOrder {
				require.Equal(t, []string{older.UUID, younger}, order, "sequence order")
			} else {
				require.Equal(t, []string{younger, older.UUID}, order, "without the delay the visible row goes first")
			}
		})
	}
}

// Every dialect but MySQL leaves VisibilityDelay at 0; MySQL defaults it.
func TestVisibilityDelayDefaults(t *testing.T) {
	t.Parallel()
	require.Equal(t, relay.VisibilityDelayDefault, (&relay.Config{Dialect: accord.MySQL}).WithDefaults().VisibilityDelay)
	require.Equal(t, time.Duration(-1), (&relay.Config{Dialect: accord.MySQL, VisibilityDelay: -1}).WithDefaults().VisibilityDelay)
	require.Zero(t, (&relay.Config{Dialect: accord.Postgres}).WithDefaults().VisibilityDelay)
	require.Zero(t, (&relay.Config{Dialect: accord.SQLite}).WithDefaults().VisibilityDelay)
}

// On an outbox migrated before version 008 (no inserted_at column), a MySQL
// relay with the visibility delay does not start: ErrNotMigrated names the
// missing column; with the delay off it runs.
func TestVisibilityDelayNeedsMigration(t *testing.T) {
	t.Parallel()
	env := dbtest.MySQLSchema(t)
	_, err := env.DB.Exec("ALTER TABLE " + table(env, "outbox") + " DROP COLUMN inserted_at")
	require.NoError(t, err)
	r, err := relay.New(env.DB, newMemSink(), &relay.Config{Dialect: accord.MySQL, Schema: env.Schema, Logger: discardLogger()})
	require.NoError(t, err)
	err = r.Run(context.Background())
	require.ErrorIs(t, err, relay.ErrNotMigrated)
	require.ErrorContains(t, err, "inserted_at")
	require.ErrorContains(t, err, "accord migrate up")

	sink := newMemSink()
	startRelay(t, env, sink, &relay.Config{VisibilityDelay: -1})
	ids := writeEvents(t, env, newOutbox(t, env), "t", "k", 3)
	waitFor(t, 20*time.Second, "delivery with the delay off", func() bool { return sink.has(ids[2]) })
}
