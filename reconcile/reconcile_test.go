package reconcile_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/reconcile"
	"github.com/accordgo/accord/relay"
)

func qualify(env dbtest.Env, table string) string {
	q := `"`
	if env.Dialect == accord.MySQL {
		q = "`"
	}
	if env.Schema != "" {
		return q + env.Schema + q + "." + q + table + q
	}
	return q + table + q
}

func ph(d accord.Dialect, n int) string {
	if d == accord.Postgres {
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

func createUsers(t *testing.T, env dbtest.Env, table string) {
	t.Helper()
	_, err := env.DB.Exec("CREATE TABLE " + qualify(env, table) + " (id VARCHAR(64) PRIMARY KEY, name VARCHAR(255) NOT NULL, version BIGINT NOT NULL)")
	require.NoError(t, err)
}

func upsert(t *testing.T, env dbtest.Env, table, id, name string, version int64) {
	t.Helper()
	_, err := env.DB.Exec("DELETE FROM "+qualify(env, table)+" WHERE id = "+ph(env.Dialect, 1), id)
	require.NoError(t, err)
	_, err = env.DB.Exec("INSERT INTO "+qualify(env, table)+" (id, name, version) VALUES ("+ph(env.Dialect, 1)+", "+ph(env.Dialect, 2)+", "+ph(env.Dialect, 3)+")", id, name, version)
	require.NoError(t, err)
}

// applier is the consumer: it applies snapshot events to the replica table.
type applier struct {
	t     *testing.T
	env   dbtest.Env
	table string
	mu    sync.Mutex
	n     int
}

func (a *applier) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		key := strings.TrimPrefix(m.Metadata.Get(outbox.MetadataKey), "user-")
		if m.Metadata.Get(reconcile.MetadataTombstone) == "true" {
			if _, err := a.env.DB.Exec("DELETE FROM "+qualify(a.env, a.table)+" WHERE id = "+ph(a.env.Dialect, 1), key); err != nil {
				return err
			}
		} else {
			var row struct {
				Name    string `json:"name"`
				Version int64  `json:"version"`
			}
			if err := jsonUnmarshal(m.Payload, &row); err != nil {
				return err
			}
			v, _ := strconv.ParseInt(m.Metadata.Get(outbox.MetadataVersion), 10, 64)
			if v != row.Version {
				return fmt.Errorf("event version %d != payload version %d", v, row.Version)
			}
			if _, err := a.env.DB.Exec("DELETE FROM "+qualify(a.env, a.table)+" WHERE id = "+ph(a.env.Dialect, 1), key); err != nil {
				return err
			}
			if _, err := a.env.DB.Exec("INSERT INTO "+qualify(a.env, a.table)+" (id, name, version) VALUES ("+ph(a.env.Dialect, 1)+", "+ph(a.env.Dialect, 2)+", "+ph(a.env.Dialect, 3)+")", key, row.Name, row.Version); err != nil {
				return err
			}
		}
		a.mu.Lock()
		a.n++
		a.mu.Unlock()
	}
	return nil
}

func (a *applier) Close() error { return nil }

func (a *applier) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n
}

// Drift injected behind the consumer's back (rows edited, deleted, added,
// pushed ahead) is found exactly, repaired through the outbox and relay, and
// a second run finds the replica in sync. The source is on PostgreSQL and
// served over HTTP; the replica is on each dialect.
func TestFindAndRepairDrift(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, replicaEnv dbtest.Env) {
		ctx := context.Background()
		src := dbtest.PostgresSchema(t)
		createUsers(t, src, "users")
		createUsers(t, replicaEnv, "users_replica")
		for i := 0; i < 300; i++ {
			id := "u" + strconv.Itoa(i)
			v := int64(1 + i%4)
			upsert(t, src, "users", id, "name-"+id, v)
			upsert(t, replicaEnv, "users_replica", id, "name-"+id, v)
		}
		srcSide, err := reconcile.NewSQLSide(src.DB, reconcile.SQLSideConfig{Dialect: src.Dialect, Schema: src.Schema, Table: "users", KeyColumn: "id", VersionColumn: "version", KeyPrefix: "user-"})
		require.NoError(t, err)
		server := httptest.NewServer(reconcile.Handler(srcSide))
		defer server.Close()
		source := reconcile.HTTPSide{BaseURL: server.URL}
		replica, err := reconcile.NewSQLSide(replicaEnv.DB, reconcile.SQLSideConfig{Dialect: replicaEnv.Dialect, Schema: replicaEnv.Schema, Table: "users_replica", KeyColumn: "id", VersionColumn: "version", KeyPrefix: "user-"})
		require.NoError(t, err)

		rep, err := reconcile.Run(ctx, source, replica, &reconcile.Options{Buckets: 64})
		require.NoError(t, err)
		require.True(t, rep.InSync())
		require.Zero(t, rep.MismatchedBuckets)
		require.Equal(t, int64(300), rep.SourceKeys)

		// Drift behind the consumer's back.
		upsert(t, replicaEnv, "users_replica", "u10", "corrupted", 0) // stale
		upsert(t, replicaEnv, "users_replica", "u11", "corrupted", 1) // stale (source has 4)
		upsert(t, replicaEnv, "users_replica", "u12", "corrupted", 9) // ahead
		for _, id := range []string{"u20", "u21", "u22"} {            // missing
			_, err := replicaEnv.DB.Exec("DELETE FROM "+qualify(replicaEnv, "users_replica")+" WHERE id = "+ph(replicaEnv.Dialect, 1), id)
			require.NoError(t, err)
		}
		upsert(t, replicaEnv, "users_replica", "ghost", "nobody", 1) // extra
		// The source moved on for one key, which the replica never saw.
		upsert(t, src, "users", "u30", "renamed", 7)

		rep, err = reconcile.Run(ctx, source, replica, &reconcile.Options{Buckets: 64})
		require.NoError(t, err)
		require.False(t, rep.InSync())
		keys := func(ds []reconcile.KeyDrift) []string {
			var out []string
			for _, d := range ds {
				out = append(out, d.Key)
			}
			return out
		}
		require.Equal(t, []string{"user-u20", "user-u21", "user-u22"}, keys(rep.Missing))
		require.Equal(t, []string{"user-u10", "user-u11", "user-u30"}, keys(rep.Stale))
		require.Equal(t, []string{"user-u12"}, keys(rep.Ahead))
		require.Equal(t, []string{"user-ghost"}, keys(rep.Extra))
		require.Less(t, rep.KeysCompared, 300, "whole tables were compared instead of mismatched buckets")

		// Repair: re-emit snapshots through the source's outbox and relay.
		ob, err := outbox.New(&outbox.Config{Dialect: src.Dialect, Schema: src.Schema})
		require.NoError(t, err)
		emitter := &reconcile.SnapshotEmitter{DB: src.DB, Outbox: ob, Topic: "users.snapshot",
			Load: func(ctx context.Context, tx *sql.Tx, key string) ([]byte, int64, bool, error) {
				return srcSide.RowJSON(ctx, tx, key)
			}}
		require.NoError(t, emitter.Repair(ctx, rep.DriftedKeys()))
		sink := &applier{t: t, env: replicaEnv, table: "users_replica"}
		r, err := relay.New(src.DB, sink, &relay.Config{Dialect: src.Dialect, Schema: src.Schema})
		require.NoError(t, err)
		go func() { _ = r.Run(ctx) }()
		defer r.Close()
		deadline := time.Now().Add(20 * time.Second)
		for sink.count() < len(rep.DriftedKeys()) {
			require.True(t, time.Now().Before(deadline), "repair events not applied: %d of %d", sink.count(), len(rep.DriftedKeys()))
			time.Sleep(10 * time.Millisecond)
		}

		rep, err = reconcile.Run(ctx, source, replica, &reconcile.Options{Buckets: 64})
		require.NoError(t, err)
		require.True(t, rep.InSync(), "still drifting after repair: %+v", rep)
		var name string
		require.NoError(t, replicaEnv.DB.QueryRow("SELECT name FROM "+qualify(replicaEnv, "users_replica")+" WHERE id = "+ph(replicaEnv.Dialect, 1), "u30").Scan(&name))
		require.Equal(t, "renamed", name)
	})
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	db := dbtest.Postgres(t)
	for name, cfg := range map[string]reconcile.SQLSideConfig{
		"no table":        {Dialect: accord.Postgres, KeyColumn: "id", VersionColumn: "v"},
		"injected table":  {Dialect: accord.Postgres, Table: "users; drop table x", KeyColumn: "id", VersionColumn: "v"},
		"quoted column":   {Dialect: accord.Postgres, Table: "users", KeyColumn: `id"`, VersionColumn: "v"},
		"unknown dialect": {Dialect: "oracle", Table: "users", KeyColumn: "id", VersionColumn: "v"},
		"bad filter":      {Dialect: accord.Postgres, Table: "users", KeyColumn: "id", VersionColumn: "v", FilterColumn: "a b"},
	} {
		_, err := reconcile.NewSQLSide(db, cfg)
		require.ErrorIs(t, err, reconcile.ErrInvalidOptions, name)
	}
	_, err := reconcile.Run(context.Background(), reconcile.HTTPSide{}, reconcile.HTTPSide{}, &reconcile.Options{Buckets: -1})
	require.ErrorIs(t, err, reconcile.ErrInvalidOptions)

	server := httptest.NewServer(reconcile.Handler(reconcile.HTTPSide{BaseURL: "http://127.0.0.1:1"}))
	defer server.Close()
	for _, q := range []string{"/digests?buckets=0", "/digests?buckets=x", "/versions?buckets=4&which=9", "/versions?buckets=4&which=a"} {
		resp, err := server.Client().Get(server.URL + q)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 400, resp.StatusCode, q)
	}
}
