package outbox_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/internal/sqlstore"
	"github.com/accordgo/accord/outbox"
)

// newOutbox returns an Outbox for env's installation, with cfg's optional
// overrides.
func newOutbox(t *testing.T, env dbtest.Env, cfg *outbox.Config) *outbox.Outbox {
	t.Helper()
	c := outbox.Config{}
	if cfg != nil {
		c = *cfg
	}
	c.Dialect, c.Schema = env.Dialect, env.Schema
	ob, err := outbox.New(&c)
	require.NoError(t, err)
	return ob
}

// quote quotes an identifier the way the dialect wants it, written out here
// independently of the code under test.
func quote(d accord.Dialect, ident string) string {
	if d == accord.MySQL {
		return "`" + ident + "`"
	}
	return `"` + ident + `"`
}

// table is the quoted, schema-qualified name of a table of env.
func table(env dbtest.Env, name string) string {
	if env.Schema != "" {
		return quote(env.Dialect, env.Schema) + "." + quote(env.Dialect, name)
	}
	return quote(env.Dialect, name)
}

func outboxTable(env dbtest.Env) string { return table(env, "accord_outbox") }

// storedRow is an outbox row read back with plain SQL, independently of
// the relay's reader.
type storedRow struct {
	Seq       int64
	ID        string
	Topic     string
	Key       string
	Shard     int32
	Version   sql.NullInt64
	Payload   []byte
	Metadata  map[string]string
	CreatedAt time.Time
}

func readRows(t *testing.T, env dbtest.Env) []storedRow {
	t.Helper()
	cols := "seq, id, topic, partition_key, shard, aggregate_version, payload, metadata, created_at"
	if env.Dialect == accord.Postgres {
		cols = "seq, id::text, topic, partition_key, shard, aggregate_version, payload, metadata::text, created_at"
	}
	rs, err := env.DB.QueryContext(context.Background(), "SELECT "+cols+" FROM "+outboxTable(env)+" ORDER BY seq")
	require.NoError(t, err)
	defer rs.Close()
	out := []storedRow{}
	for rs.Next() {
		var r storedRow
		var md []byte
		var created any
		require.NoError(t, rs.Scan(&r.Seq, &r.ID, &r.Topic, &r.Key, &r.Shard, &r.Version, &r.Payload, &md, &created))
		require.NoError(t, json.Unmarshal(md, &r.Metadata), "metadata %s", md)
		switch c := created.(type) {
		case time.Time:
			r.CreatedAt = c
		case int64:
			r.CreatedAt = time.UnixMicro(c)
		default:
			t.Fatalf("created_at has type %T", created)
		}
		out = append(out, r)
	}
	require.NoError(t, rs.Err())
	return out
}

func countRows(t *testing.T, env dbtest.Env) int {
	t.Helper()
	var n int
	require.NoError(t, env.DB.QueryRowContext(context.Background(), "SELECT count(*) FROM "+outboxTable(env)).Scan(&n))
	return n
}

func begin(t *testing.T, db *sql.DB) *sql.Tx {
	t.Helper()
	tx, err := db.BeginTx(context.Background(), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback() })
	return tx
}

func pgxPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dbtest.PostgresURL())
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

func beginPgx(t *testing.T, pool *pgxpool.Pool) pgx.Tx {
	t.Helper()
	tx, err := pool.Begin(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}

func event(topic, key string, payload string) outbox.Event {
	return outbox.Event{Topic: topic, Key: key, Message: outbox.NewMessage([]byte(payload))}
}

func TestWriteTx_Commit(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		now := time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.FixedZone("X", 3600))
		ob := newOutbox(t, env, &outbox.Config{Now: func() time.Time { return now }})

		m1 := outbox.NewMessage([]byte(`{"order":42}`))
		m1.Metadata.Set("source", "test")
		m1.Metadata.Set("unicode", "ünï €")
		m2 := outbox.NewMessage(nil) // stored as an empty payload (the column is NOT NULL)
		m3 := outbox.NewMessage([]byte{0, 1, 2, 0xff, 0})
		events := []outbox.Event{
			{Topic: "orders", Key: "order-42", Version: 3, Message: m1},
			{Topic: "orders", Message: m2},
			{Topic: "payments", Key: "pay-7", Version: 1, Message: m3},
		}

		tx := begin(t, env.DB)
		require.NoError(t, ob.WriteTx(ctx, tx, events...))
		require.NoError(t, tx.Commit())

		rows := readRows(t, env)
		require.Len(t, rows, 3)
		for i, ev := range events {
			r := rows[i]
			require.Equal(t, ev.Message.UUID, r.ID, "row %d", i)
			require.Equal(t, ev.Topic, r.Topic, "row %d", i)
			require.Equal(t, ev.Key, r.Key, "row %d", i)
			require.Equal(t, outbox.Shard(ev.Key), r.Shard, "row %d", i)
			require.Equal(t, sql.NullInt64{Int64: ev.Version, Valid: ev.Version > 0}, r.Version, "row %d", i)
			require.True(t, bytes.Equal(ev.Message.Payload, r.Payload), "row %d payload %q", i, r.Payload)
			require.True(t, r.CreatedAt.Equal(now), "row %d created at %v", i, r.CreatedAt)
			if i > 0 {
				require.Greater(t, r.Seq, rows[i-1].Seq)
			}
		}
		require.Equal(t, map[string]string{"source": "test", "unicode": "ünï €"}, rows[0].Metadata)
		require.Empty(t, rows[1].Metadata)
		require.Empty(t, rows[2].Metadata)
	})
}

func TestWriteTx_Rollback(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		ob := newOutbox(t, env, nil)

		tx := begin(t, env.DB)
		require.NoError(t, ob.WriteTx(ctx, tx, event("orders", "order-1", "a"), event("orders", "order-2", "b")))
		require.NoError(t, tx.Rollback())
		require.Zero(t, countRows(t, env))

		// The same write committed is visible, so the rollback is what
		// removed it.
		tx = begin(t, env.DB)
		require.NoError(t, ob.WriteTx(ctx, tx, event("orders", "order-1", "a")))
		require.NoError(t, tx.Commit())
		require.Equal(t, 1, countRows(t, env))
	})
}

func TestWriteTx_NoEvents(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env, nil)
		tx := begin(t, env.DB)
		require.NoError(t, ob.WriteTx(context.Background(), tx))
		require.NoError(t, tx.Commit())
		require.Zero(t, countRows(t, env))
	})
}

func TestWriteTx_OutsideTransaction(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env, nil)
		require.NoError(t, ob.WriteTx(context.Background(), env.DB, event("orders", "k", "x")))
		require.Equal(t, 1, countRows(t, env))
	})
}

func TestWriteTx_ManyEventsKeepOrder(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		ob := newOutbox(t, env, nil)
		const n = 2500 // crosses the 1,000-row statement chunks of SQLite and MySQL
		events := make([]outbox.Event, n)
		for i := range events {
			events[i] = event("bulk", "key-"+strconv.Itoa(i%7), strconv.Itoa(i))
			events[i].Version = int64(i + 1)
		}
		tx := begin(t, env.DB)
		require.NoError(t, ob.WriteTx(ctx, tx, events...))
		require.NoError(t, tx.Commit())

		rows := readRows(t, env)
		require.Len(t, rows, n)
		for i, r := range rows {
			require.Equal(t, strconv.Itoa(i), string(r.Payload), "row %d out of order", i)
			require.Equal(t, events[i].Message.UUID, r.ID)
			require.Equal(t, int64(i+1), r.Version.Int64)
			require.Equal(t, outbox.Shard(events[i].Key), r.Shard)
			if i > 0 {
				require.Greater(t, r.Seq, rows[i-1].Seq)
			}
		}
	})
}

func TestWritePgxTx(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	pool := pgxPool(t)
	ob := newOutbox(t, env, nil)
	ctx := context.Background()

	// Rollback: nothing.
	tx := beginPgx(t, pool)
	require.NoError(t, ob.WritePgxTx(ctx, tx, event("orders", "order-1", "rolled back")))
	require.NoError(t, tx.Rollback(ctx))
	require.Zero(t, countRows(t, env))

	// Commit: the rows, in order, with every column.
	m := outbox.NewMessage([]byte("first"))
	m.Metadata.Set("source", "pgx")
	events := []outbox.Event{
		{Topic: "orders", Key: "order-1", Version: 9, Message: m},
		event("orders", "", "second"),
	}
	tx = beginPgx(t, pool)
	// The caller's own write in the same transaction.
	_, err := tx.Exec(ctx, `CREATE TABLE "`+env.Schema+`".orders (id int)`)
	require.NoError(t, err)
	require.NoError(t, ob.WritePgxTx(ctx, tx, events...))
	require.NoError(t, tx.Commit(ctx))

	rows := readRows(t, env)
	require.Len(t, rows, 2)
	require.Equal(t, m.UUID, rows[0].ID)
	require.Equal(t, "orders", rows[0].Topic)
	require.Equal(t, "order-1", rows[0].Key)
	require.Equal(t, outbox.Shard("order-1"), rows[0].Shard)
	require.Equal(t, sql.NullInt64{Int64: 9, Valid: true}, rows[0].Version)
	require.Equal(t, "first", string(rows[0].Payload))
	require.Equal(t, map[string]string{"source": "pgx"}, rows[0].Metadata)
	require.Equal(t, "second", string(rows[1].Payload))
	require.False(t, rows[1].Version.Valid)
	require.Equal(t, outbox.Shard(""), rows[1].Shard)

	// Invalid events are rejected before anything is written.
	tx = beginPgx(t, pool)
	err = ob.WritePgxTx(ctx, tx, event("orders", "k", "ok"), outbox.Event{Topic: "", Message: outbox.NewMessage(nil)})
	require.ErrorIs(t, err, outbox.ErrInvalidEvent)
	require.NoError(t, tx.Commit(ctx))
	require.Len(t, readRows(t, env), 2)
}

func TestWritePgxTx_OtherDialectOutbox(t *testing.T) {
	t.Parallel()
	pool := pgxPool(t)
	for _, d := range []accord.Dialect{accord.SQLite, accord.MySQL} {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			ob, err := outbox.New(&outbox.Config{Dialect: d})
			require.NoError(t, err)
			require.Equal(t, d, ob.Dialect())
			tx := beginPgx(t, pool)
			err = ob.WritePgxTx(context.Background(), tx, event("orders", "k", "x"))
			require.Error(t, err)
			require.ErrorContains(t, err, "pgx")
			require.ErrorContains(t, err, string(accord.Postgres))
			require.ErrorContains(t, err, string(d))
			require.False(t, outbox.IsInvalidEvent(err))
			// Nothing was sent: the transaction is still usable.
			var one int
			require.NoError(t, tx.QueryRow(context.Background(), "SELECT 1").Scan(&one))
		})
	}
}

func TestPublisher(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env, nil)

		// Rollback leaves nothing.
		tx := begin(t, env.DB)
		var pub message.Publisher = ob.Publisher(tx)
		require.NoError(t, pub.Publish("orders", outbox.NewMessage([]byte("gone"))))
		require.NoError(t, tx.Rollback())
		require.Zero(t, countRows(t, env))

		// Commit: key and version come from metadata.
		m1 := outbox.NewMessage([]byte("one"))
		m1.Metadata.Set(outbox.MetadataKey, "order-1")
		m1.Metadata.Set(outbox.MetadataVersion, "5")
		m2 := outbox.NewMessage([]byte("two"))
		tx = begin(t, env.DB)
		pub = ob.Publisher(tx)
		require.NoError(t, pub.Publish("orders", m1, m2))
		require.NoError(t, pub.Publish("orders")) // nothing to publish
		require.NoError(t, tx.Commit())

		rows := readRows(t, env)
		require.Len(t, rows, 2)
		require.Equal(t, m1.UUID, rows[0].ID)
		require.Equal(t, "orders", rows[0].Topic)
		require.Equal(t, "order-1", rows[0].Key)
		require.Equal(t, outbox.Shard("order-1"), rows[0].Shard)
		require.Equal(t, sql.NullInt64{Int64: 5, Valid: true}, rows[0].Version)
		require.Equal(t, "one", string(rows[0].Payload))
		require.Equal(t, "", rows[1].Key)
		require.False(t, rows[1].Version.Valid)
		require.Equal(t, "two", string(rows[1].Payload))
	})
}

func TestPublisher_InvalidVersionMetadata(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env, nil)
		for _, v := range []string{"abc", "-1", "1.5", "99999999999999999999"} {
			tx := begin(t, env.DB)
			ok := outbox.NewMessage([]byte("valid"))
			bad := outbox.NewMessage([]byte("bad"))
			bad.Metadata.Set(outbox.MetadataVersion, v)
			err := ob.Publisher(tx).Publish("orders", ok, bad)
			require.ErrorIs(t, err, outbox.ErrInvalidEvent, "version %q", v)
			require.ErrorContains(t, err, outbox.MetadataVersion)
			require.True(t, outbox.IsInvalidEvent(err))
			require.NoError(t, tx.Commit())
		}
		require.Zero(t, countRows(t, env))
	})
}

func TestPublisher_Close(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env, nil)
		tx := begin(t, env.DB)
		pub := ob.Publisher(tx)
		require.NoError(t, pub.Close())
		require.NoError(t, pub.Close(), "Close is idempotent")
		err := pub.Publish("orders", outbox.NewMessage([]byte("x")))
		require.ErrorIs(t, err, outbox.ErrPublisherClosed)
		// Close does not end the caller's transaction.
		require.NoError(t, tx.Commit())
		require.Zero(t, countRows(t, env))
	})
}

func TestPublisher_InvalidMessages(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env, nil)
		tx := begin(t, env.DB)
		pub := ob.Publisher(tx)
		require.ErrorIs(t, pub.Publish("", outbox.NewMessage([]byte("x"))), outbox.ErrInvalidEvent)
		require.ErrorIs(t, pub.Publish("orders", outbox.NewMessage([]byte("x")), nil), outbox.ErrInvalidEvent)
		require.ErrorIs(t, pub.Publish("orders", nil), outbox.ErrInvalidEvent)
		require.NoError(t, tx.Commit())
		require.Zero(t, countRows(t, env))
	})
}

func TestPgxPublisher(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	pool := pgxPool(t)
	ob := newOutbox(t, env, nil)
	ctx := context.Background()

	tx := beginPgx(t, pool)
	require.NoError(t, ob.PgxPublisher(tx).Publish("orders", outbox.NewMessage([]byte("gone"))))
	require.NoError(t, tx.Rollback(ctx))
	require.Zero(t, countRows(t, env))

	m := outbox.NewMessage([]byte("kept"))
	m.Metadata.Set(outbox.MetadataKey, "order-7")
	m.Metadata.Set(outbox.MetadataVersion, "12")
	tx = beginPgx(t, pool)
	pub := ob.PgxPublisher(tx)
	require.NoError(t, pub.Publish("orders", m))

	bad := outbox.NewMessage([]byte("bad"))
	bad.Metadata.Set(outbox.MetadataVersion, "abc")
	require.ErrorIs(t, pub.Publish("orders", bad), outbox.ErrInvalidEvent)

	require.NoError(t, pub.Close())
	require.NoError(t, pub.Close())
	require.ErrorIs(t, pub.Publish("orders", outbox.NewMessage([]byte("late"))), outbox.ErrPublisherClosed)
	require.NoError(t, tx.Commit(ctx))

	rows := readRows(t, env)
	require.Len(t, rows, 1)
	require.Equal(t, m.UUID, rows[0].ID)
	require.Equal(t, "order-7", rows[0].Key)
	require.Equal(t, outbox.Shard("order-7"), rows[0].Shard)
	require.Equal(t, sql.NullInt64{Int64: 12, Valid: true}, rows[0].Version)
	require.Equal(t, "kept", string(rows[0].Payload))
}

func TestDBPublisher(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env, nil)
		pub := ob.DBPublisher(env.DB)

		m := outbox.NewMessage([]byte("one"))
		m.Metadata.Set(outbox.MetadataKey, "k1")
		require.NoError(t, pub.Publish("orders", m))
		// Committed by the call itself.
		require.Equal(t, 1, countRows(t, env))

		require.NoError(t, pub.Publish("orders", outbox.NewMessage([]byte("two")), outbox.NewMessage([]byte("three"))))
		rows := readRows(t, env)
		require.Len(t, rows, 3)
		require.Equal(t, "k1", rows[0].Key)
		require.Equal(t, "two", string(rows[1].Payload))
		require.Equal(t, "three", string(rows[2].Payload))

		// A rejected call writes nothing, not even its valid messages.
		err := pub.Publish("orders", outbox.NewMessage([]byte("four")), message.NewMessage("not-a-uuid", nil))
		require.ErrorIs(t, err, outbox.ErrInvalidEvent)
		require.Equal(t, 3, countRows(t, env))

		require.NoError(t, pub.Close())
		require.ErrorIs(t, pub.Publish("orders", outbox.NewMessage(nil)), outbox.ErrPublisherClosed)
		require.Equal(t, 3, countRows(t, env))
	})
}

func TestNewMessageAndNewID(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 100 {
		m := outbox.NewMessage([]byte("x"))
		id, err := uuid.Parse(m.UUID)
		require.NoError(t, err)
		require.Equal(t, uuid.Version(7), id.Version())
		require.False(t, seen[m.UUID], "duplicate id %s", m.UUID)
		seen[m.UUID] = true
		require.Equal(t, "x", string(m.Payload))

		id, err = uuid.Parse(outbox.NewID())
		require.NoError(t, err)
		require.Equal(t, uuid.Version(7), id.Version())
	}
}

func TestWriteTx_EmptyUUIDGetsV7(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env, nil)
		m := message.NewMessage("", []byte("x"))
		tx := begin(t, env.DB)
		require.NoError(t, ob.WriteTx(context.Background(), tx, outbox.Event{Topic: "orders", Message: m}))
		require.NoError(t, tx.Commit())

		id, err := uuid.Parse(m.UUID)
		require.NoError(t, err, "the message got an id")
		require.Equal(t, uuid.Version(7), id.Version())
		rows := readRows(t, env)
		require.Len(t, rows, 1)
		require.Equal(t, m.UUID, rows[0].ID)
	})
}

func TestWriteTx_NonV7UUIDIsKept(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env, nil)
		id := uuid.NewString() // v4
		tx := begin(t, env.DB)
		require.NoError(t, ob.WriteTx(context.Background(), tx, outbox.Event{Topic: "orders", Message: message.NewMessage(id, nil)}))
		require.NoError(t, tx.Commit())
		rows := readRows(t, env)
		require.Len(t, rows, 1)
		require.Equal(t, id, rows[0].ID)
	})
}

func TestWriteTx_InvalidEvents(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env, nil)
		withMetadata := func(k, v string) *message.Message {
			m := outbox.NewMessage([]byte("x"))
			m.Metadata.Set(k, v)
			return m
		}
		tests := []struct {
			name    string
			event   outbox.Event
			mention string
		}{
			{"InvalidUUID", outbox.Event{Topic: "orders", Message: message.NewMessage("not-a-uuid", nil)}, "not-a-uuid"},
			{"EmptyTopic", outbox.Event{Topic: "", Message: outbox.NewMessage(nil)}, "Topic"},
			{"TopicTooLong", outbox.Event{Topic: strings.Repeat("t", 1025), Message: outbox.NewMessage(nil)}, "1024"},
			{"NilMessage", outbox.Event{Topic: "orders"}, "nil"},
			{"NegativeVersion", outbox.Event{Topic: "orders", Version: -1, Message: outbox.NewMessage(nil)}, "Version"},
			{"NULInMetadataValue", outbox.Event{Topic: "orders", Message: withMetadata("k", "a\x00b")}, "NUL"},
			{"NULInMetadataKey", outbox.Event{Topic: "orders", Message: withMetadata("k\x00", "v")}, "NUL"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				tx := begin(t, env.DB)
				// The invalid event is the second of the call: the valid
				// first one must not be written either.
				err := ob.WriteTx(ctx, tx, event("orders", "k", "valid"), tt.event)
				require.ErrorIs(t, err, outbox.ErrInvalidEvent)
				require.NotErrorIs(t, err, outbox.ErrPayloadTooLarge)
				require.True(t, outbox.IsInvalidEvent(err))
				require.ErrorContains(t, err, "event 2 of 2")
				require.ErrorContains(t, err, tt.mention)
				// The transaction is still usable and commits nothing.
				require.NoError(t, tx.Commit())
				require.Zero(t, countRows(t, env))
			})
		}
	})
}

func TestWriteTx_PayloadTooLarge(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		ob := newOutbox(t, env, &outbox.Config{MaxPayloadBytes: 16})

		tx := begin(t, env.DB)
		err := ob.WriteTx(ctx, tx, event("orders", "k", "small"), event("orders", "k", strings.Repeat("x", 17)))
		require.ErrorIs(t, err, outbox.ErrPayloadTooLarge)
		require.NotErrorIs(t, err, outbox.ErrInvalidEvent)
		require.True(t, outbox.IsInvalidEvent(err))
		require.ErrorContains(t, err, "17 bytes")
		require.NoError(t, tx.Commit())
		require.Zero(t, countRows(t, env))

		// Exactly at the limit is fine.
		require.NoError(t, ob.WriteTx(ctx, env.DB, event("orders", "k", strings.Repeat("x", 16))))
		require.Equal(t, 1, countRows(t, env))

		// The default limit is 1 MiB.
		def := newOutbox(t, env, nil)
		big := strings.Repeat("x", outbox.MaxPayloadBytesDefault+1)
		require.ErrorIs(t, def.WriteTx(ctx, env.DB, event("orders", "k", big)), outbox.ErrPayloadTooLarge)

		// -1 disables the check.
		unbounded := newOutbox(t, env, &outbox.Config{MaxPayloadBytes: -1})
		require.NoError(t, unbounded.WriteTx(ctx, env.DB, event("orders", "k", big)))
		rows := readRows(t, env)
		require.Len(t, rows, 2)
		require.Len(t, rows[1].Payload, len(big))
	})
}

func TestIsInvalidEvent(t *testing.T) {
	t.Parallel()
	require.True(t, outbox.IsInvalidEvent(outbox.ErrInvalidEvent))
	require.True(t, outbox.IsInvalidEvent(fmt.Errorf("wrapped: %w", outbox.ErrInvalidEvent)))
	require.True(t, outbox.IsInvalidEvent(fmt.Errorf("wrapped: %w", outbox.ErrPayloadTooLarge)))
	require.False(t, outbox.IsInvalidEvent(nil))
	require.False(t, outbox.IsInvalidEvent(errors.New("connection reset")))
	require.False(t, outbox.IsInvalidEvent(outbox.ErrPublisherClosed))
	require.False(t, outbox.IsInvalidEvent(outbox.ErrInvalidConfig))
}

func spanContext(t *testing.T) trace.SpanContext {
	t.Helper()
	traceID, err := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	require.NoError(t, err)
	spanID, err := trace.SpanIDFromHex("00f067aa0ba902b7")
	require.NoError(t, err)
	state, err := trace.ParseTraceState("vendor=value")
	require.NoError(t, err)
	return trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled, TraceState: state,
	})
}

func TestWriteTx_TraceContext(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ob := newOutbox(t, env, nil)
		sc := spanContext(t)
		traced := trace.ContextWithSpanContext(context.Background(), sc)

		// From the write's context.
		withSpan := outbox.NewMessage([]byte("a"))
		withSpan.Metadata.Set("source", "test")
		tx := begin(t, env.DB)
		require.NoError(t, ob.WriteTx(traced, tx, outbox.Event{Topic: "orders", Message: withSpan}))
		// Without a span: no trace context.
		require.NoError(t, ob.WriteTx(context.Background(), tx, event("orders", "", "b")))
		require.NoError(t, tx.Commit())

		// Through a publisher, from the message's context.
		fromMsg := outbox.NewMessage([]byte("c"))
		fromMsg.SetContext(traced)
		tx = begin(t, env.DB)
		require.NoError(t, ob.Publisher(tx).Publish("orders", fromMsg))
		require.NoError(t, tx.Commit())

		rows := readRows(t, env)
		require.Len(t, rows, 3)
		want := "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"
		for _, i := range []int{0, 2} {
			require.Equal(t, want, rows[i].Metadata["traceparent"], "row %d", i)
			require.Contains(t, rows[i].Metadata["traceparent"], "4bf92f3577b34da6a3ce929d0e0e4736")
			require.Equal(t, "vendor=value", rows[i].Metadata["tracestate"], "row %d", i)
		}
		require.Equal(t, "test", rows[0].Metadata["source"])
		require.NotContains(t, rows[1].Metadata, "traceparent")
		require.NotContains(t, rows[1].Metadata, "tracestate")
		// The caller's message metadata is not modified.
		require.Empty(t, withSpan.Metadata.Get("traceparent"))
	})
}

func TestWriteTx_NotMigrated(t *testing.T) {
	t.Parallel()
	check := func(t *testing.T, err error) {
		t.Helper()
		require.Error(t, err)
		require.ErrorContains(t, err, "accord migrate up")
		require.False(t, outbox.IsInvalidEvent(err))
	}
	t.Run("PostgresEmptySchema", func(t *testing.T) {
		t.Parallel()
		db := dbtest.Postgres(t)
		ctx := context.Background()
		schema := dbtest.RandomName("t_")
		_, err := db.ExecContext(ctx, `CREATE SCHEMA "`+schema+`"`)
		require.NoError(t, err)
		t.Cleanup(func() { _, _ = db.ExecContext(context.Background(), `DROP SCHEMA IF EXISTS "`+schema+`" CASCADE`) })
		ob, err := outbox.New(&outbox.Config{Dialect: accord.Postgres, Schema: schema})
		require.NoError(t, err)

		tx := begin(t, db)
		check(t, ob.WriteTx(ctx, tx, event("orders", "k", "x")))
		require.NoError(t, tx.Rollback())

		pool := pgxPool(t)
		ptx := beginPgx(t, pool)
		check(t, ob.WritePgxTx(ctx, ptx, event("orders", "k", "x")))
	})
	t.Run("PostgresMissingSchema", func(t *testing.T) {
		t.Parallel()
		db := dbtest.Postgres(t)
		ob, err := outbox.New(&outbox.Config{Dialect: accord.Postgres, Schema: dbtest.RandomName("t_")})
		require.NoError(t, err)
		check(t, ob.WriteTx(context.Background(), db, event("orders", "k", "x")))
	})
	t.Run("PostgresOtherPrefix", func(t *testing.T) {
		t.Parallel()
		env := dbtest.PostgresSchema(t)
		ob, err := outbox.New(&outbox.Config{Dialect: accord.Postgres, Schema: env.Schema, TablePrefix: "other_"})
		require.NoError(t, err)
		err = ob.WriteTx(context.Background(), env.DB, event("orders", "k", "x"))
		check(t, err)
		require.ErrorContains(t, err, `"other_outbox"`)
	})
	t.Run("MySQLEmptyDatabase", func(t *testing.T) {
		t.Parallel()
		db := dbtest.MySQL(t)
		ctx := context.Background()
		schema := dbtest.RandomName("t_")
		_, err := db.ExecContext(ctx, "CREATE DATABASE `"+schema+"`")
		require.NoError(t, err)
		t.Cleanup(func() { _, _ = db.ExecContext(context.Background(), "DROP DATABASE IF EXISTS `"+schema+"`") })
		ob, err := outbox.New(&outbox.Config{Dialect: accord.MySQL, Schema: schema})
		require.NoError(t, err)

		tx := begin(t, db)
		check(t, ob.WriteTx(ctx, tx, event("orders", "k", "x")))
		require.NoError(t, tx.Rollback())
		// A publisher bound to the pool reports it too.
		err = ob.DBPublisher(db).Publish("orders", outbox.NewMessage([]byte("x")))
		check(t, err)
	})
	t.Run("MySQLMissingDatabase", func(t *testing.T) {
		t.Parallel()
		db := dbtest.MySQL(t)
		ob, err := outbox.New(&outbox.Config{Dialect: accord.MySQL, Schema: dbtest.RandomName("t_")})
		require.NoError(t, err)
		check(t, ob.WriteTx(context.Background(), db, event("orders", "k", "x")))
	})
	t.Run("MySQLOtherPrefix", func(t *testing.T) {
		t.Parallel()
		env := dbtest.MySQLSchema(t)
		ob, err := outbox.New(&outbox.Config{Dialect: accord.MySQL, Schema: env.Schema, TablePrefix: "other_"})
		require.NoError(t, err)
		err = ob.WriteTx(context.Background(), env.DB, event("orders", "k", "x"))
		check(t, err)
		require.ErrorContains(t, err, "`other_outbox`")
	})
	t.Run("SQLite", func(t *testing.T) {
		t.Parallel()
		db, d, err := accord.OpenDB("sqlite://" + t.TempDir() + "/empty.db")
		require.NoError(t, err)
		t.Cleanup(func() { _ = db.Close() })
		ob, err := outbox.New(&outbox.Config{Dialect: d})
		require.NoError(t, err)
		tx := begin(t, db)
		check(t, ob.WriteTx(context.Background(), tx, event("orders", "k", "x")))
	})
}

func TestNew_InvalidConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     *outbox.Config
		mention string
	}{
		{"Nil", nil, "dialect"},
		{"EmptyDialect", &outbox.Config{}, "dialect"},
		{"UnknownDialect", &outbox.Config{Dialect: "oracle"}, "oracle"},
		{"UnknownDialectListsSupported", &outbox.Config{Dialect: "oracle"}, `"postgres", "mysql" or "sqlite"`},
		{"DialectCase", &outbox.Config{Dialect: "MySQL"}, `"MySQL"`},
		{"SchemaOnSQLite", &outbox.Config{Dialect: accord.SQLite, Schema: "main"}, "Schema"},
		{"MySQLBadSchema", &outbox.Config{Dialect: accord.MySQL, Schema: "a`b"}, "Schema"},
		{"MySQLBadPrefix", &outbox.Config{Dialect: accord.MySQL, TablePrefix: "svc-"}, "TablePrefix"},
		{"BadSchema", &outbox.Config{Dialect: accord.Postgres, Schema: "a;drop table x"}, "Schema"},
		{"BadPrefix", &outbox.Config{Dialect: accord.Postgres, TablePrefix: "Svc"}, "TablePrefix"},
		{"LongPrefix", &outbox.Config{Dialect: accord.Postgres, TablePrefix: strings.Repeat("p", 60)}, "TablePrefix"},
		{"NegativeMaxPayload", &outbox.Config{Dialect: accord.SQLite, MaxPayloadBytes: -2}, "MaxPayloadBytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ob, err := outbox.New(tt.cfg)
			require.Nil(t, ob)
			require.ErrorIs(t, err, outbox.ErrInvalidConfig)
			require.Contains(t, strings.ToLower(err.Error()), strings.ToLower(tt.mention))
		})
	}
	t.Run("Valid", func(t *testing.T) {
		t.Parallel()
		for _, cfg := range []*outbox.Config{
			{Dialect: accord.SQLite},
			{Dialect: accord.Postgres, Schema: "svc", TablePrefix: "svc_", MaxPayloadBytes: -1},
			{Dialect: accord.MySQL},
			{Dialect: accord.MySQL, Schema: "svc", TablePrefix: "svc_", MaxPayloadBytes: 10},
		} {
			ob, err := outbox.New(cfg)
			require.NoError(t, err)
			require.Equal(t, cfg.Dialect, ob.Dialect())
		}
	})
}

func TestConfig_WithDefaults(t *testing.T) {
	t.Parallel()
	var nilCfg *outbox.Config
	c := nilCfg.WithDefaults()
	require.Equal(t, outbox.TablePrefixDefault, c.TablePrefix)
	require.Equal(t, outbox.MaxPayloadBytesDefault, c.MaxPayloadBytes)
	require.NotNil(t, c.Propagator)
	require.NotNil(t, c.Now)

	in := &outbox.Config{Dialect: accord.SQLite, MaxPayloadBytes: -1}
	out := in.WithDefaults()
	require.Equal(t, -1, out.MaxPayloadBytes)
	require.Empty(t, in.TablePrefix, "WithDefaults must not modify its receiver")
}

func TestShard(t *testing.T) {
	t.Parallel()
	shards := map[int32]bool{}
	for i := range 10000 {
		s := outbox.Shard("key-" + strconv.Itoa(i))
		require.GreaterOrEqual(t, s, int32(0))
		require.Less(t, s, int32(outbox.ShardCount))
		shards[s] = true
	}
	// 10,000 keys spread over (nearly) every shard.
	require.Greater(t, len(shards), outbox.ShardCount*9/10)
	require.Equal(t, outbox.Shard("order-42"), outbox.Shard("order-42"))
	// The hash is part of the stored data: pin it (FNV-1a 32 mod 1024).
	require.Equal(t, int32(0x811c9dc5%outbox.ShardCount), outbox.Shard(""))
}

// TestWriteTx_MySQLRoundTrip follows events through MySQL as an application
// and the relay see them: written with a business row in one InnoDB
// transaction and rolled back or committed with it; many events in several
// INSERT statements, in order; created_at stored as Unix microseconds (UTC,
// whatever the writer's zone); read back in seq order by the relay's
// reader, counted, and deleted in chunks; seq never reused after deletes.
func TestWriteTx_MySQLRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := dbtest.MySQLSchema(t)
	// 12:08:09.123456789 UTC, written from another zone; stored truncated to
	// the microsecond.
	now := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.FixedZone("EST", -5*3600))
	const nowMicros = int64(1714997289123456)
	stored := time.UnixMicro(nowMicros)
	ob := newOutbox(t, env, &outbox.Config{Now: func() time.Time { return now }})

	var dataType string
	require.NoError(t, env.DB.QueryRowContext(ctx, `SELECT data_type FROM information_schema.columns
		WHERE table_schema = ? AND table_name = 'accord_outbox' AND column_name = 'created_at'`, env.Schema).Scan(&dataType))
	require.Equal(t, "bigint", dataType)

	orders := table(env, "orders")
	_, err := env.DB.ExecContext(ctx, "CREATE TABLE "+orders+" (id VARCHAR(64) PRIMARY KEY, total_cents BIGINT NOT NULL) ENGINE = InnoDB")
	require.NoError(t, err)
	countOrders := func() int {
		var n int
		require.NoError(t, env.DB.QueryRowContext(ctx, "SELECT count(*) FROM "+orders).Scan(&n))
		return n
	}
	placeOrder := func(id string, commit bool, events ...outbox.Event) {
		tx := begin(t, env.DB)
		_, err := tx.ExecContext(ctx, "INSERT INTO "+orders+" (id, total_cents) VALUES (?, ?)", id, 1999)
		require.NoError(t, err)
		require.NoError(t, ob.WriteTx(ctx, tx, events...))
		if commit {
			require.NoError(t, tx.Commit())
		} else {
			require.NoError(t, tx.Rollback())
		}
	}

	// Rolled back: neither the order nor its event.
	placeOrder("o-1", false, event("orders.placed", "o-1", "rolled back"))
	require.Zero(t, countOrders())
	require.Zero(t, countRows(t, env))

	// Committed: the order and all its events, in write order.
	const n = 2500 // three INSERT statements of at most 1,000 rows
	events := make([]outbox.Event, n)
	for i := range events {
		events[i] = event("orders.placed", "key-"+strconv.Itoa(i%7), strconv.Itoa(i))
		events[i].Version = int64(i + 1)
	}
	events[0].Message.Metadata.Set("unicode", "ünï € 🚀")
	placeOrder("o-2", true, events...)
	require.Equal(t, 1, countOrders())

	var minCreated, maxCreated int64
	require.NoError(t, env.DB.QueryRowContext(ctx, "SELECT min(created_at), max(created_at) FROM "+outboxTable(env)).Scan(&minCreated, &maxCreated))
	require.Equal(t, nowMicros, minCreated)
	require.Equal(t, nowMicros, maxCreated)

	rows := readRows(t, env)
	require.Len(t, rows, n)
	for i, r := range rows {
		require.Equal(t, strconv.Itoa(i), string(r.Payload), "row %d out of order", i)
		require.Equal(t, events[i].Message.UUID, r.ID)
		require.Equal(t, events[i].Key, r.Key)
		require.Equal(t, outbox.Shard(events[i].Key), r.Shard)
		require.Equal(t, sql.NullInt64{Int64: int64(i + 1), Valid: true}, r.Version)
		require.True(t, r.CreatedAt.Equal(stored), "row %d created at %v", i, r.CreatedAt)
		if i > 0 {
			require.Greater(t, r.Seq, rows[i-1].Seq)
		}
	}
	require.Equal(t, map[string]string{"unicode": "ünï € 🚀"}, rows[0].Metadata)

	// The relay's reader sees the same rows, page by page, in seq order.
	names, err := sqlstore.NewNames(accord.MySQL, env.Schema, outbox.TablePrefixDefault)
	require.NoError(t, err)
	var read []sqlstore.Row
	for after := int64(0); ; {
		page, err := names.ReadAfter(ctx, env.DB, after, 700)
		require.NoError(t, err)
		if len(page) == 0 {
			break
		}
		require.LessOrEqual(t, len(page), 700)
		read = append(read, page...)
		after = page[len(page)-1].Seq
	}
	require.Len(t, read, n)
	for i, r := range read {
		require.Equal(t, rows[i].Seq, r.Seq)
		require.Equal(t, rows[i].ID, r.ID)
		require.Equal(t, "orders.placed", r.Topic)
		require.Equal(t, rows[i].Key, r.Key)
		require.Equal(t, rows[i].Shard, r.Shard)
		require.Equal(t, rows[i].Version, r.Version)
		require.Equal(t, rows[i].Payload, r.Payload)
		require.Zero(t, r.Attempts)
		require.True(t, r.CreatedAt.Equal(stored), "row %d created at %v", i, r.CreatedAt)
		require.Equal(t, time.UTC, r.CreatedAt.Location())
	}
	one, err := names.ReadOne(ctx, env.DB, read[42].Seq)
	require.NoError(t, err)
	require.Equal(t, read[42], *one)

	stats, err := names.Stats(ctx, env.DB)
	require.NoError(t, err)
	require.Equal(t, int64(n), stats.Pending)
	require.True(t, stats.Oldest.Equal(stored), "oldest %v", stats.Oldest)

	// Published rows are deleted, more than one statement's worth at once.
	seqs := make([]int64, len(read))
	for i, r := range read {
		seqs[i] = r.Seq
	}
	require.NoError(t, names.Delete(ctx, env.DB, seqs))
	require.Zero(t, countRows(t, env))
	stats, err = names.Stats(ctx, env.DB)
	require.NoError(t, err)
	require.Zero(t, stats.Pending)
	require.True(t, stats.Oldest.IsZero())

	// seq is never reused, even with the table empty: the relay's cursor
	// cannot skip the next event.
	require.NoError(t, ob.WriteTx(ctx, env.DB, event("orders.placed", "o-3", "after delete")))
	rows = readRows(t, env)
	require.Len(t, rows, 1)
	require.Greater(t, rows[0].Seq, seqs[len(seqs)-1])
	require.Equal(t, "after delete", string(rows[0].Payload))
}
