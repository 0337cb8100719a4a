package replica_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/replica"
)

// ---------------------------------------------------------------------------
// Fixture

// bundle is one migrated installation with a replica whose ApplyFunc keeps
// a business table "state" (k, version, val) and appends every application
// to "history" (id, k, prev, version, val), in the applying transaction: the
// history is exactly what committed, in the order the key moved.
type bundle struct {
	env     dbtest.Env
	r       *replica.Replica
	obs     *recorder
	clock   *clock
	state   string
	history string
}

func setup(t *testing.T, env dbtest.Env, cfg replica.Config) *bundle {
	t.Helper()
	b := &bundle{
		env:     env,
		obs:     &recorder{},
		clock:   &clock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)},
		state:   qualified(env, "state"),
		history: qualified(env, "history"),
	}
	id := "id INTEGER PRIMARY KEY AUTOINCREMENT"
	switch env.Dialect {
	case accord.Postgres:
		id = "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
	case accord.MySQL:
		id = "id BIGINT AUTO_INCREMENT PRIMARY KEY"
	}
	_, err := env.DB.Exec("CREATE TABLE " + b.state + " (k VARCHAR(100) PRIMARY KEY, version BIGINT NOT NULL, val VARCHAR(100) NOT NULL)")
	require.NoError(t, err)
	_, err = env.DB.Exec("CREATE TABLE " + b.history + " (" + id + ", k VARCHAR(100) NOT NULL, prev BIGINT NOT NULL, version BIGINT NOT NULL, val VARCHAR(100) NOT NULL)")
	require.NoError(t, err)

	cfg.Dialect, cfg.Schema = env.Dialect, env.Schema
	if cfg.Name == "" {
		cfg.Name = "test.items"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Observer = b.obs
	cfg.Now = b.clock.Now
	b.r, err = replica.New(env.DB, &cfg, b.applyFunc)
	require.NoError(t, err)
	return b
}

// another returns a bundle on b's tables and clock with a second replica
// (its own observer) configured by cfg, applying with apply (b's ApplyFunc
// if nil).
func (b *bundle) another(t *testing.T, cfg replica.Config, apply replica.ApplyFunc) *bundle {
	t.Helper()
	b2 := *b
	b2.obs = &recorder{}
	cfg.Dialect, cfg.Schema = b.env.Dialect, b.env.Schema
	cfg.Observer, cfg.Now, cfg.Logger = b2.obs, b.clock.Now, slog.New(slog.DiscardHandler)
	if apply == nil {
		apply = b.applyFunc
	}
	var err error
	b2.r, err = replica.New(b.env.DB, &cfg, apply)
	require.NoError(t, err)
	return &b2
}

// applyFunc records c as the key's new state. The value is the message's
// payload (or "v<version>" without a message).
func (b *bundle) applyFunc(ctx context.Context, tx *sql.Tx, c replica.Change) error {
	return b.write(ctx, tx, c.Key, c.Version, valueOf(c))
}

func valueOf(c replica.Change) string {
	if c.Message != nil {
		return string(c.Message.Payload)
	}
	return "v" + strconv.FormatInt(c.Version, 10)
}

func (b *bundle) write(ctx context.Context, tx *sql.Tx, key string, version int64, val string) error {
	lock := " FOR UPDATE"
	if b.env.Dialect == accord.SQLite {
		lock = ""
	}
	var prev int64
	err := tx.QueryRowContext(ctx, "SELECT version FROM "+b.state+" WHERE k = "+b.ph(1)+lock, key).Scan(&prev)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+b.history+" (k, prev, version, val) VALUES ("+b.ph(1)+", "+b.ph(2)+", "+b.ph(3)+", "+b.ph(4)+")",
		key, prev, version, val); err != nil {
		return err
	}
	upsert := " ON CONFLICT (k) DO UPDATE SET version = excluded.version, val = excluded.val"
	if b.env.Dialect == accord.MySQL {
		upsert = " ON DUPLICATE KEY UPDATE version = VALUES(version), val = VALUES(val)"
	}
	_, err = tx.ExecContext(ctx, "INSERT INTO "+b.state+" (k, version, val) VALUES ("+b.ph(1)+", "+b.ph(2)+", "+b.ph(3)+")"+upsert, key, version, val)
	return err
}

func (b *bundle) ph(n int) string {
	if b.env.Dialect == accord.Postgres {
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

type step struct {
	Prev, Version int64
	Val           string
}

// historyOf returns the applications of key in commit order.
func (b *bundle) historyOf(t *testing.T, key string) []step {
	t.Helper()
	rows, err := b.env.DB.Query("SELECT prev, version, val FROM "+b.history+" WHERE k = "+b.ph(1)+" ORDER BY id", key)
	require.NoError(t, err)
	defer rows.Close()
	var out []step
	for rows.Next() {
		var s step
		require.NoError(t, rows.Scan(&s.Prev, &s.Version, &s.Val))
		out = append(out, s)
	}
	require.NoError(t, rows.Err())
	return out
}

func versionsOf(h []step) []int64 {
	out := make([]int64, len(h))
	for i, s := range h {
		out[i] = s.Version
	}
	return out
}

// requireForward checks that the key's history is a chain that only moves
// forward: each application starts from the previous one's version.
func requireForward(t *testing.T, key string, h []step) {
	t.Helper()
	var at int64
	for i, s := range h {
		require.Equal(t, at, s.Prev, "key %s, application %d: started from version %d, the state was at %d", key, i, s.Prev, at)
		require.Greater(t, s.Version, at, "key %s, application %d: moved from %d back to %d", key, i, at, s.Version)
		at = s.Version
	}
}

func (b *bundle) stateOf(t *testing.T, key string) (int64, string) {
	t.Helper()
	var v int64
	var val string
	require.NoError(t, b.env.DB.QueryRow("SELECT version, val FROM "+b.state+" WHERE k = "+b.ph(1), key).Scan(&v, &val))
	return v, val
}

// parked returns the parked versions of key, in order.
func (b *bundle) parked(t *testing.T, key string) []int64 {
	t.Helper()
	rows, err := b.env.DB.Query("SELECT version FROM "+qualified(b.env, "accord_replica_parked")+" WHERE entity_key = "+b.ph(1)+" ORDER BY version", key)
	require.NoError(t, err)
	defer rows.Close()
	out := []int64{}
	for rows.Next() {
		var v int64
		require.NoError(t, rows.Scan(&v))
		out = append(out, v)
	}
	require.NoError(t, rows.Err())
	return out
}

func (b *bundle) position(t *testing.T, key string) int64 {
	t.Helper()
	v, _, _, err := b.r.Position(context.Background(), key)
	require.NoError(t, err)
	return v
}

func qualified(env dbtest.Env, name string) string {
	switch env.Dialect {
	case accord.MySQL:
		return "`" + env.Schema + "`.`" + name + "`"
	case accord.Postgres:
		return `"` + env.Schema + `"."` + name + `"`
	}
	return `"` + name + `"`
}

// msgChange is a change of key at version carrying a message whose payload
// is val.
func msgChange(key string, version int64, val string) replica.Change {
	m := message.NewMessage(outbox.NewID(), []byte(val))
	m.Metadata.Set("trace", key+"/"+val)
	return replica.Change{Key: key, Version: version, Message: m}
}

// clock is a controllable Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// recorder is an Observer that keeps every observation.
type recorder struct {
	mu  sync.Mutex
	obs map[string][]replica.Observation
}

func (r *recorder) add(kind string, o replica.Observation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.obs == nil {
		r.obs = map[string][]replica.Observation{}
	}
	r.obs[kind] = append(r.obs[kind], o)
}

func (r *recorder) get(kind string) []replica.Observation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]replica.Observation(nil), r.obs[kind]...)
}

// counts returns the number of observations per kind.
func (r *recorder) counts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.obs {
		out[k] = len(v)
	}
	return out
}

func (r *recorder) Applied(_ context.Context, o replica.Observation) { r.add("applied", o) }
func (r *recorder) Stale(_ context.Context, o replica.Observation)   { r.add("stale", o) }
func (r *recorder) Gap(_ context.Context, o replica.Observation)     { r.add("gap", o) }
func (r *recorder) Parked(_ context.Context, o replica.Observation)  { r.add("parked", o) }
func (r *recorder) Resync(_ context.Context, o replica.Observation)  { r.add("resync", o) }

func apply(t *testing.T, b *bundle, c replica.Change) replica.Outcome {
	t.Helper()
	o, err := b.r.Apply(context.Background(), c)
	require.NoError(t, err, "apply %s v%d", c.Key, c.Version)
	return o
}

// ---------------------------------------------------------------------------
// Configuration and changes (no database)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	noop := func(context.Context, *sql.Tx, replica.Change) error { return nil }
	db := &sql.DB{}

	_, err := replica.New(db, nil, noop)
	require.ErrorIs(t, err, replica.ErrInvalidConfig)
	for _, field := range []string{"dialect", "Name: required", "Mode: required"} {
		require.ErrorContains(t, err, field)
	}

	_, err = replica.New(nil, &replica.Config{Dialect: accord.SQLite, Name: "x", Mode: replica.ByVersion}, nil)
	require.ErrorIs(t, err, replica.ErrInvalidConfig)
	require.ErrorContains(t, err, "db is nil")
	require.ErrorContains(t, err, "apply (the ApplyFunc) is nil")

	_, err = replica.New(db, &replica.Config{Dialect: accord.SQLite, Name: "x", Mode: replica.BySequence, GapPolicy: replica.Reject, GapTimeout: -time.Second}, noop)
	require.ErrorIs(t, err, replica.ErrInvalidConfig)
	require.ErrorContains(t, err, "GapPolicy reject: only ByVersion")
	require.ErrorContains(t, err, "GapTimeout -1s")

	_, err = replica.New(db, &replica.Config{Dialect: accord.SQLite, Schema: "s", Name: "x", Mode: 7}, noop)
	require.ErrorContains(t, err, "Mode 7: unknown")
	require.ErrorContains(t, err, "sqlite has no schemas")

	r, err := replica.New(db, &replica.Config{Dialect: accord.Postgres, Name: "x", Mode: replica.ByTimestamp}, noop)
	require.NoError(t, err)
	require.Equal(t, "x", r.Name())
	require.Equal(t, replica.ByTimestamp, r.Mode())

	cfg := (&replica.Config{}).WithDefaults()
	require.Equal(t, replica.GapTimeoutDefault, cfg.GapTimeout)
	require.Equal(t, "accord_", cfg.TablePrefix)
	require.NotNil(t, cfg.Logger)
	require.NotNil(t, cfg.Observer)
	require.NotNil(t, cfg.Now)
}

func TestChangeFromMessage(t *testing.T) {
	t.Parallel()
	created := time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.UTC)
	msg := message.NewMessage("2f0c1a3e-0000-4000-8000-000000000001", []byte("x"))
	msg.Metadata.Set(outbox.MetadataKey, "customer-7")
	msg.Metadata.Set(outbox.MetadataVersion, "12")
	msg.Metadata.Set(outbox.MetadataCreatedAt, created.Format(time.RFC3339Nano))
	c, err := replica.ChangeFromMessage(msg)
	require.NoError(t, err)
	require.Equal(t, replica.Change{Key: "customer-7", Version: 12, Timestamp: created, Message: msg}, c)

	noKey := message.NewMessage("m2", nil)
	_, err = replica.ChangeFromMessage(noKey)
	require.ErrorIs(t, err, replica.ErrMissingKey)
	require.ErrorContains(t, err, "accord_key")
	require.True(t, replica.IsInvalidChange(err))

	bad := message.NewMessage("m3", nil)
	bad.Metadata.Set(outbox.MetadataKey, "k")
	bad.Metadata.Set(outbox.MetadataVersion, "twelve")
	_, err = replica.ChangeFromMessage(bad)
	require.ErrorIs(t, err, replica.ErrInvalidChange)
	require.ErrorContains(t, err, `accord_version="twelve"`)

	bad.Metadata.Set(outbox.MetadataVersion, "1")
	bad.Metadata.Set(outbox.MetadataCreatedAt, "yesterday")
	_, err = replica.ChangeFromMessage(bad)
	require.ErrorIs(t, err, replica.ErrInvalidChange)
	require.ErrorContains(t, err, "accord_created_at")

	_, err = replica.ChangeFromMessage(nil)
	require.ErrorIs(t, err, replica.ErrInvalidChange)
}

// Changes that cannot be applied are refused before anything is written,
// with errors that say what is missing.
func TestInvalidChanges(t *testing.T) {
	t.Parallel()
	env := dbtest.SQLite(t)
	ctx := context.Background()
	bv := setup(t, env, replica.Config{Name: "v", Mode: replica.ByVersion})
	bs, err := replica.New(env.DB, &replica.Config{Dialect: env.Dialect, Name: "s", Mode: replica.BySequence}, bv.applyFunc)
	require.NoError(t, err)
	bt, err := replica.New(env.DB, &replica.Config{Dialect: env.Dialect, Name: "t", Mode: replica.ByTimestamp}, bv.applyFunc)
	require.NoError(t, err)

	noVersion := message.NewMessage("m1", nil)
	noVersion.Metadata.Set(outbox.MetadataKey, "k")
	c, err := replica.ChangeFromMessage(noVersion)
	require.NoError(t, err)
	_, err = bv.r.Apply(ctx, c)
	require.ErrorIs(t, err, replica.ErrMissingVersion)
	require.ErrorContains(t, err, "message m1")
	require.ErrorContains(t, err, "accord_version")
	_, err = bt.Apply(ctx, c)
	require.ErrorIs(t, err, replica.ErrMissingTimestamp)

	_, err = bs.Apply(ctx, replica.Change{Key: "k", Version: 1})
	require.ErrorIs(t, err, replica.ErrInvalidChange)
	require.ErrorContains(t, err, "needs Change.Message")
	_, err = bv.r.Apply(ctx, replica.Change{Version: 1})
	require.ErrorIs(t, err, replica.ErrMissingKey)
	_, err = bv.r.Apply(ctx, replica.Change{Key: "k", Version: -1})
	require.ErrorIs(t, err, replica.ErrInvalidChange)
	_, err = bv.r.Apply(ctx, replica.Change{Key: "k", Version: 1, Origin: "a\x1fb"})
	require.ErrorIs(t, err, replica.ErrInvalidChange)
	_, err = bv.r.Apply(ctx, replica.Change{Key: string(make([]byte, replica.KeyMaxLength+1)), Version: 1})
	require.ErrorIs(t, err, replica.ErrInvalidChange)

	require.Empty(t, bv.historyOf(t, "k"))
	require.Empty(t, bv.obs.counts())
}

// ---------------------------------------------------------------------------
// ByVersion

// 10 keys × versions 1..50 arrive in one shuffled order, with duplicates
// of earlier deliveries mixed in, to an ApplyAndReport replica. A change is
// applied exactly when it is newer than everything before it, so the
// applications per key, the gaps and the stale changes are known in
// advance from the arrival order; the history recorded in the applying
// transactions must only move forward and end at 50.
func TestByVersionShuffledNeverMovesBack(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		const keys, versions = 10, 50
		b := setup(t, env, replica.Config{Mode: replica.ByVersion})
		var arrivals []replica.Change
		for k := range keys {
			for v := int64(1); v <= versions; v++ {
				arrivals = append(arrivals, replica.Change{Key: fmt.Sprintf("key-%d", k), Version: v})
			}
		}
		rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
		rnd.Shuffle(len(arrivals), func(i, j int) { arrivals[i], arrivals[j] = arrivals[j], arrivals[i] })
		for range 50 { // redeliveries of earlier messages
			j := rnd.IntN(len(arrivals) - 1)
			k := j + 1 + rnd.IntN(len(arrivals)-j-1)
			arrivals = append(arrivals[:k], append([]replica.Change{arrivals[j]}, arrivals[k:]...)...)
		}

		newest := map[string]int64{}
		wantHistory := map[string][]int64{}
		wantGaps, wantStale := 0, 0
		for _, c := range arrivals {
			want := replica.Stale
			if c.Version > newest[c.Key] {
				want = replica.Applied
				if c.Version > newest[c.Key]+1 {
					want = replica.Gap
					wantGaps++
				}
				newest[c.Key] = c.Version
				wantHistory[c.Key] = append(wantHistory[c.Key], c.Version)
			} else {
				wantStale++
			}
			require.Equal(t, want, apply(t, b, c), "%s v%d", c.Key, c.Version)
		}
		applied := 0
		for k := range keys {
			key := fmt.Sprintf("key-%d", k)
			h := b.historyOf(t, key)
			requireForward(t, key, h)
			require.Equal(t, wantHistory[key], versionsOf(h))
			require.EqualValues(t, versions, h[len(h)-1].Version)
			require.EqualValues(t, versions, b.position(t, key))
			applied += len(h)
		}
		require.Equal(t, map[string]int{"applied": applied, "gap": wantGaps, "stale": wantStale}, b.obs.counts())
	})
}

// 10 keys × versions 1..20 arrive shuffled at 8 concurrent workers and are
// redelivered until all are applied (a Reject replica refuses every change
// whose predecessors are missing, as a consumer that nacks would), with
// duplicates of applied changes mixed in. Each key must be applied exactly
// 1, 2, ..., 20, in that order, and every refusal and duplicate be
// reported.
func TestByVersionRejectRedelivered(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		const keys, versions, workers = 10, 20, 8
		b := setup(t, env, replica.Config{Mode: replica.ByVersion, GapPolicy: replica.Reject})
		ctx := context.Background()

		type delivery struct {
			c   replica.Change
			dup bool // a message that was acknowledged already
		}
		var queue []delivery
		for k := range keys {
			for v := int64(1); v <= versions; v++ {
				queue = append(queue, delivery{c: replica.Change{Key: fmt.Sprintf("key-%d", k), Version: v}})
			}
		}
		rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
		rnd.Shuffle(len(queue), func(i, j int) { queue[i], queue[j] = queue[j], queue[i] })

		var (
			mu                           sync.Mutex
			rejected, duplicates, stales int
			applied                      = map[string]int{}
			pending                      = len(queue)
		)
		// redeliver puts d back at the end of the queue, like a broker
		// redelivering a nacked message after a delay.
		redeliver := func(d delivery) { queue = append(queue, d) }
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		fail := func(err error) {
			pending = -1 // stops the others
			errs <- err
		}
		for range workers {
			wg.Go(func() {
				for {
					mu.Lock()
					if pending <= 0 {
						mu.Unlock()
						return
					}
					if len(queue) == 0 { // the others hold the rest
						mu.Unlock()
						time.Sleep(time.Millisecond)
						continue
					}
					d := queue[0]
					queue = queue[1:]
					mu.Unlock()

					o, err := b.r.Apply(ctx, d.c)

					mu.Lock()
					switch {
					case err != nil && !(replica.IsGap(err) && o == replica.Rejected):
						fail(fmt.Errorf("%s v%d: %s: %w", d.c.Key, d.c.Version, o, err))
					case o == replica.Rejected && !d.dup:
						rejected++
						redeliver(d)
					case o == replica.Applied && !d.dup:
						applied[d.c.Key]++
						pending--
						if rnd.IntN(10) == 0 {
							duplicates++
							pending++
							redeliver(delivery{c: d.c, dup: true})
						}
					case o == replica.Stale && d.dup:
						stales++
						pending--
					default:
						fail(fmt.Errorf("%s v%d (duplicate: %t): unexpected outcome %s", d.c.Key, d.c.Version, d.dup, o))
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}

		require.Equal(t, duplicates, stales, "every duplicate is stale, nothing else is")
		for k := range keys {
			key := fmt.Sprintf("key-%d", k)
			h := b.historyOf(t, key)
			requireForward(t, key, h)
			want := make([]int64, versions)
			for i := range want {
				want[i] = int64(i + 1)
			}
			require.Equal(t, want, versionsOf(h), "key %s applied out of order or more than once", key)
			require.Equal(t, versions, applied[key])
			require.EqualValues(t, versions, b.position(t, key))
			v, _ := b.stateOf(t, key)
			require.EqualValues(t, versions, v)
		}
		counts := b.obs.counts()
		require.Equal(t, keys*versions, counts["applied"])
		require.Equal(t, stales, counts["stale"])
		require.Equal(t, rejected, counts["gap"])
		require.Zero(t, counts["parked"])
		for _, o := range b.obs.get("gap") {
			require.Equal(t, replica.Rejected, o.Outcome)
			require.Greater(t, o.Version, o.Position+1)
		}
		t.Logf("%d deliveries: %d applied, %d rejected, %d duplicates", keys*versions+rejected+duplicates, keys*versions, rejected, duplicates)
	})
}

func TestByVersionStaleAndGap(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		b := setup(t, env, replica.Config{Mode: replica.ByVersion}) // ApplyAndReport

		require.Equal(t, replica.Applied, apply(t, b, replica.Change{Key: "a", Version: 1}))
		require.Equal(t, replica.Gap, apply(t, b, replica.Change{Key: "a", Version: 4, Origin: "orders"}))
		for _, v := range []int64{2, 3, 4, 1} {
			require.Equal(t, replica.Stale, apply(t, b, replica.Change{Key: "a", Version: v}))
		}
		require.Equal(t, replica.Applied, apply(t, b, replica.Change{Key: "a", Version: 5}))
		require.Equal(t, []int64{1, 4, 5}, versionsOf(b.historyOf(t, "a")))
		requireForward(t, "a", b.historyOf(t, "a"))
		require.Equal(t, map[string]int{"applied": 3, "gap": 1, "stale": 4}, b.obs.counts())
		gap := b.obs.get("gap")[0]
		require.Equal(t, replica.Observation{Replica: "test.items", Key: "a", Mode: replica.ByVersion, Outcome: replica.Gap,
			Version: 4, Position: 1, Origin: "orders"}, gap)
		stale := b.obs.get("stale")
		require.EqualValues(t, 2, stale[0].Version)
		require.EqualValues(t, 4, stale[0].Position)

		// Reject: nothing applied, an error to nack with, the position
		// unchanged; the change applies once its predecessor did.
		rj := b.another(t, replica.Config{Name: "reject", Mode: replica.ByVersion, GapPolicy: replica.Reject}, nil)
		require.Equal(t, replica.Applied, apply(t, rj, replica.Change{Key: "r", Version: 1}))
		o, err := rj.r.Apply(ctx, replica.Change{Key: "r", Version: 3})
		require.Equal(t, replica.Rejected, o)
		require.ErrorIs(t, err, replica.ErrGap)
		require.True(t, replica.IsGap(err))
		require.ErrorContains(t, err, "versions 2 to 2 missing")
		require.EqualValues(t, 1, rj.position(t, "r"))
		require.Equal(t, replica.Applied, apply(t, rj, replica.Change{Key: "r", Version: 2}))
		require.Equal(t, replica.Applied, apply(t, rj, replica.Change{Key: "r", Version: 3}))
		require.Equal(t, []int64{1, 2, 3}, versionsOf(rj.historyOf(t, "r")))
		require.Equal(t, map[string]int{"applied": 3, "gap": 1}, rj.obs.counts())
		require.Equal(t, replica.Rejected, rj.obs.get("gap")[0].Outcome)

		// The first version of a new key may not skip with Reject either.
		o, err = rj.r.Apply(ctx, replica.Change{Key: "new", Version: 2})
		require.Equal(t, replica.Rejected, o)
		require.ErrorIs(t, err, replica.ErrGap)
		require.Zero(t, rj.position(t, "new"))

		// ApplyTx composes with the caller's transaction: a rollback undoes
		// the change and the position together.
		tx, err := env.DB.BeginTx(ctx, nil)
		require.NoError(t, err)
		o, err = b.r.ApplyTx(ctx, tx, replica.Change{Key: "a", Version: 6})
		require.NoError(t, err)
		require.Equal(t, replica.Applied, o)
		require.NoError(t, tx.Rollback())
		require.EqualValues(t, 5, b.position(t, "a"))
		require.Equal(t, replica.Applied, apply(t, b, replica.Change{Key: "a", Version: 6}))
		require.Equal(t, []int64{1, 4, 5, 6}, versionsOf(b.historyOf(t, "a")))
	})
}

// An ApplyFunc error rolls back the change and its position; Apply returns
// it wrapped, and the observer hears nothing.
func TestApplyFuncError(t *testing.T) {
	t.Parallel()
	env := dbtest.SQLite(t)
	boom := errors.New("boom")
	obs := &recorder{}
	r, err := replica.New(env.DB, &replica.Config{Dialect: env.Dialect, Name: "e", Mode: replica.BySequence, Observer: obs,
		Logger: slog.New(slog.DiscardHandler)},
		func(_ context.Context, _ *sql.Tx, c replica.Change) error {
			if c.Version == 3 {
				return boom
			}
			return nil
		})
	require.NoError(t, err)
	ctx := context.Background()
	for _, v := range []int64{1, 3} {
		_, err := r.Apply(ctx, msgChange("k", v, "x"))
		require.NoError(t, err)
	}
	_, err = r.Apply(ctx, msgChange("k", 2, "x")) // drains 3, which fails
	require.ErrorIs(t, err, boom)
	require.ErrorContains(t, err, "version 3")
	v, _, _, err := r.Position(ctx, "k")
	require.NoError(t, err)
	require.EqualValues(t, 1, v)
	require.Equal(t, map[string]int{"applied": 1, "parked": 1}, obs.counts())
}

// ---------------------------------------------------------------------------
// BySequence

func TestBySequenceParksAndDrains(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		b := setup(t, env, replica.Config{Mode: replica.BySequence})
		ts := time.Date(2025, 5, 6, 7, 8, 9, 123456000, time.UTC)
		changes := map[int64]replica.Change{}
		for v := int64(1); v <= 5; v++ {
			c := msgChange("acct", v, fmt.Sprintf("delta-%d", v))
			c.Timestamp, c.Origin = ts.Add(time.Duration(v)*time.Second), "ledger"
			changes[v] = c
		}
		var seen []replica.Change
		b = b.another(t, replica.Config{Name: "seq", Mode: replica.BySequence}, func(ctx context.Context, tx *sql.Tx, c replica.Change) error {
			seen = append(seen, c)
			return b.applyFunc(ctx, tx, c)
		})

		require.Equal(t, replica.Applied, apply(t, b, changes[1]))
		require.Equal(t, replica.Applied, apply(t, b, changes[2]))
		require.Equal(t, replica.Parked, apply(t, b, changes[4]))
		require.Equal(t, replica.Parked, apply(t, b, changes[5]))
		require.Equal(t, replica.Stale, apply(t, b, changes[5]), "a parked change delivered again")
		require.Equal(t, []int64{4, 5}, b.parked(t, "acct"))
		require.EqualValues(t, 2, b.position(t, "acct"))
		require.Equal(t, []int64{1, 2}, versionsOf(b.historyOf(t, "acct")))

		require.Equal(t, replica.Applied, apply(t, b, changes[3]))
		h := b.historyOf(t, "acct")
		require.Equal(t, []int64{1, 2, 3, 4, 5}, versionsOf(h))
		requireForward(t, "acct", h)
		require.Equal(t, "delta-4", h[3].Val)
		require.Empty(t, b.parked(t, "acct"))
		v, ts5, origin, err := b.r.Position(context.Background(), "acct")
		require.NoError(t, err)
		require.EqualValues(t, 5, v)
		require.Equal(t, changes[5].Timestamp, ts5)
		require.Equal(t, "ledger", origin)

		// The drained changes are the ones delivered: same key, version,
		// timestamp, origin, message id, payload and metadata.
		require.Len(t, seen, 5)
		for i, c := range seen {
			want := changes[int64(i+1)]
			require.Equal(t, want.Key, c.Key)
			require.Equal(t, want.Version, c.Version)
			require.True(t, want.Timestamp.Equal(c.Timestamp), "timestamp of %d", c.Version)
			require.Equal(t, want.Origin, c.Origin)
			require.Equal(t, want.Message.UUID, c.Message.UUID)
			require.Equal(t, string(want.Message.Payload), string(c.Message.Payload))
			require.Equal(t, want.Message.Metadata, c.Message.Metadata)
		}

		require.Equal(t, map[string]int{"applied": 5, "parked": 2, "stale": 1}, b.obs.counts())
		var drained []int64
		for _, o := range b.obs.get("applied") {
			if o.Drained {
				drained = append(drained, o.Version)
			}
		}
		require.Equal(t, []int64{4, 5}, drained)
		p := b.obs.get("parked")[0]
		require.EqualValues(t, 4, p.Version)
		require.EqualValues(t, 2, p.Position)

		require.Equal(t, replica.Stale, apply(t, b, changes[4]))
		require.Len(t, b.historyOf(t, "acct"), 5)
	})
}

// A gap that never fills: after GapTimeout, CheckGaps reports the key and
// calls Resync; the application resyncs from a snapshot at 6, which drops
// the parked changes up to 6 and drains 7 and after.
func TestBySequenceGapResync(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		var b *bundle
		type call struct {
			key string
			pos int64
		}
		var calls []call
		resync := func(ctx context.Context, key string, position int64) error {
			calls = append(calls, call{key, position})
			o, err := b.r.Resync(ctx, key, 6, func(ctx context.Context, tx *sql.Tx) error {
				return b.write(ctx, tx, key, 6, "snapshot-6")
			})
			if err == nil && o != replica.Applied {
				err = fmt.Errorf("resync outcome %s", o)
			}
			return err
		}
		b = setup(t, env, replica.Config{Mode: replica.BySequence, GapTimeout: time.Minute, Resync: resync})

		for _, v := range []int64{1, 2} {
			require.Equal(t, replica.Applied, apply(t, b, msgChange("k", v, fmt.Sprint(v))))
		}
		for _, v := range []int64{4, 5, 7, 8, 9} {
			require.Equal(t, replica.Parked, apply(t, b, msgChange("k", v, fmt.Sprint(v))))
			b.clock.Advance(time.Second)
		}
		// A gap younger than GapTimeout is not reported.
		b.clock.Advance(50 * time.Second) // the oldest was parked 55 s ago
		gaps, err := b.r.CheckGaps(ctx)
		require.NoError(t, err)
		require.Empty(t, gaps)
		require.Empty(t, calls)

		b.clock.Advance(10 * time.Second)
		gaps, err = b.r.CheckGaps(ctx)
		require.NoError(t, err)
		require.Len(t, gaps, 1)
		g := gaps[0]
		require.Equal(t, "k", g.Key)
		require.EqualValues(t, 2, g.Position)
		require.EqualValues(t, 4, g.FirstParked)
		require.Equal(t, 5, g.Parked)
		require.True(t, g.Since.Equal(b.clock.Now().Add(-65*time.Second)), "since %s", g.Since)
		require.Equal(t, []call{{"k", 2}}, calls)

		h := b.historyOf(t, "k")
		require.Equal(t, []int64{1, 2, 6, 7, 8, 9}, versionsOf(h))
		requireForward(t, "k", h)
		require.Equal(t, "snapshot-6", h[2].Val)
		require.EqualValues(t, 9, b.position(t, "k"))
		require.Empty(t, b.parked(t, "k"))

		counts := b.obs.counts()
		require.Equal(t, map[string]int{"applied": 5, "parked": 5, "gap": 1, "resync": 1}, counts)
		gap := b.obs.get("gap")[0]
		require.Equal(t, replica.Parked, gap.Outcome)
		require.EqualValues(t, 4, gap.Version)
		require.EqualValues(t, 2, gap.Position)
		require.Equal(t, 5, gap.Parked)
		rs := b.obs.get("resync")[0]
		require.EqualValues(t, 6, rs.Version)
		require.EqualValues(t, 2, rs.Position)
		require.Equal(t, 2, rs.Dropped)

		// The gap is closed: nothing more to report.
		b.clock.Advance(time.Hour)
		gaps, err = b.r.CheckGaps(ctx)
		require.NoError(t, err)
		require.Empty(t, gaps)

		// A snapshot older than the replica never moves it back.
		o, err := b.r.Resync(ctx, "k", 5, func(context.Context, *sql.Tx) error { return errors.New("must not be called") })
		require.NoError(t, err)
		require.Equal(t, replica.Stale, o)
		require.EqualValues(t, 9, b.position(t, "k"))

		// RunGapChecker does the same on its own; a failing Resync is
		// reported by CheckGaps and retried on the next round.
		b.clock.Advance(-time.Hour)
		var (
			b2       *bundle
			attempts atomic.Int32
		)
		b2 = b.another(t, replica.Config{Name: "loop", Mode: replica.BySequence, GapTimeout: time.Minute,
			Resync: func(ctx context.Context, key string, position int64) error {
				if attempts.Add(1) == 1 {
					return errors.New("producer unreachable")
				}
				// The application wrote the snapshot itself: move the
				// position only.
				_, err := b2.r.Resync(ctx, key, 1, nil)
				return err
			}}, nil)
		require.Equal(t, replica.Parked, apply(t, b2, msgChange("q", 2, "x")))
		b.clock.Advance(2 * time.Minute)
		_, err = b2.r.CheckGaps(ctx)
		require.ErrorContains(t, err, "producer unreachable")
		require.EqualValues(t, 1, attempts.Load())
		loopCtx, cancel := context.WithCancel(ctx)
		ran := make(chan error, 1)
		go func() { ran <- b2.r.RunGapChecker(loopCtx, 5*time.Millisecond) }()
		deadline := time.Now().Add(10 * time.Second)
		for b2.position(t, "q") != 2 {
			require.True(t, time.Now().Before(deadline), "RunGapChecker did not resync within 10 s")
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
		select {
		case err := <-ran:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("RunGapChecker did not return after cancellation")
		}
		require.EqualValues(t, 2, attempts.Load(), "no resync once the gap closed")
		require.Equal(t, []int64{2}, versionsOf(b2.historyOf(t, "q")))
		require.Empty(t, b2.parked(t, "q"))
		require.Equal(t, 1, b2.obs.counts()["resync"])
	})
}

// ---------------------------------------------------------------------------
// ByTimestamp

// Four concurrent writes of one key, two of them tied on timestamp and
// origin: in every one of the 24 arrival orders the replica ends with the
// same winner.
func TestByTimestampLastWriterWins(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		b := setup(t, env, replica.Config{Mode: replica.ByTimestamp})
		t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
		mk := func(ts time.Time, origin, id, val string) replica.Change {
			return replica.Change{Timestamp: ts, Origin: origin, Message: message.NewMessage(id, []byte(val))}
		}
		writes := []replica.Change{
			mk(t0, "eu", "00000000-0000-4000-8000-000000000009", "early"),
			mk(t0.Add(time.Second), "eu", "00000000-0000-4000-8000-000000000003", "eu-late"),
			mk(t0.Add(time.Second), "us", "00000000-0000-4000-8000-000000000001", "us-late-1"),
			mk(t0.Add(time.Second), "us", "00000000-0000-4000-8000-000000000002", "us-late-2"), // wins: same ts, "us" > "eu", id 2 > 1
		}
		perms := permutations(len(writes))
		require.Len(t, perms, 24)
		for i, perm := range perms {
			key := fmt.Sprintf("doc-%02d", i)
			for _, j := range perm {
				c := writes[j]
				c.Key = key
				o := apply(t, b, c)
				require.Contains(t, []replica.Outcome{replica.Applied, replica.Stale}, o)
			}
			_, val := b.stateOf(t, key)
			require.Equal(t, "us-late-2", val, "arrival order %v", perm)
			_, ts, origin, err := b.r.Position(context.Background(), key)
			require.NoError(t, err)
			require.Equal(t, t0.Add(time.Second), ts)
			require.Equal(t, "us", origin)
			// Each application beat the one before it.
			rank := map[string]int{"early": 0, "eu-late": 1, "us-late-1": 2, "us-late-2": 3}
			last := -1
			for _, s := range b.historyOf(t, key) {
				require.Greater(t, rank[s.Val], last, "order %v: %s applied after a newer write", perm, s.Val)
				last = rank[s.Val]
			}
		}
		counts := b.obs.counts()
		require.Equal(t, 24*4, counts["applied"]+counts["stale"])
		var applied int
		for _, perm := range perms {
			applied += winsInOrder(perm)
		}
		require.Equal(t, applied, counts["applied"], "applied exactly when newer than everything before")
		for _, o := range b.obs.get("stale") {
			require.True(t, !o.Timestamp.After(o.PositionTimestamp), "a stale write is never newer than the winner")
		}

		// The exact same write again is a duplicate.
		c := writes[3]
		c.Key = "doc-00"
		require.Equal(t, replica.Stale, apply(t, b, c))
	})
}

// winsInOrder counts the writes (indexes into the test's writes, ordered
// from oldest to newest) that are newer than all before them.
func winsInOrder(perm []int) int {
	best, n := -1, 0
	for _, j := range perm {
		if j > best {
			best, n = j, n+1
		}
	}
	return n
}

func permutations(n int) [][]int {
	if n == 0 {
		return [][]int{{}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			q := append(append(append([]int{}, p[:i]...), n-1), p[i:]...)
			out = append(out, q)
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Concurrency

// 8 goroutines apply the same changes, each in its own shuffled order,
// concurrently. The history the ApplyFunc records in each transaction must
// never move back, end at the maximum, and (BySequence) be exactly 1..N.
func TestConcurrentAppliers(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		base := setup(t, env, replica.Config{Mode: replica.ByVersion})
		for _, mode := range []replica.Mode{replica.ByVersion, replica.BySequence} {
			const keys, versions, workers = 4, 20, 8
			b := base.another(t, replica.Config{Name: "c-" + mode.String(), Mode: mode}, nil)

			var all []replica.Change
			for k := range keys {
				for v := int64(1); v <= versions; v++ {
					all = append(all, msgChange(fmt.Sprintf("%s-%d", mode, k), v, fmt.Sprint(v)))
				}
			}
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				mine := append([]replica.Change(nil), all...)
				rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
				rnd.Shuffle(len(mine), func(i, j int) { mine[i], mine[j] = mine[j], mine[i] })
				wg.Go(func() {
					for _, c := range mine {
						if _, err := b.r.Apply(context.Background(), c); err != nil {
							errs <- fmt.Errorf("%s %s v%d: %w", mode, c.Key, c.Version, err)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}

			total := 0
			for k := range keys {
				key := fmt.Sprintf("%s-%d", mode, k)
				h := b.historyOf(t, key)
				requireForward(t, key, h)
				require.EqualValues(t, versions, h[len(h)-1].Version, "%s: key %s did not end at the maximum", mode, key)
				require.EqualValues(t, versions, b.position(t, key))
				if mode == replica.BySequence {
					want := make([]int64, versions)
					for i := range want {
						want[i] = int64(i + 1)
					}
					require.Equal(t, want, versionsOf(h), "%s: key %s", mode, key)
					require.Empty(t, b.parked(t, key))
				}
				total += len(h)
			}
			counts := b.obs.counts()
			require.Equal(t, total, counts["applied"], "%s: one Applied per application", mode)
			require.Equal(t, keys*versions*workers, counts["applied"]+counts["stale"]+counts["parked"]-drainedCount(b.obs),
				"%s: one outcome per delivery", mode)
			if mode == replica.ByVersion {
				require.Zero(t, counts["parked"])
				overGap := 0
				for _, o := range b.obs.get("applied") {
					if o.Version > o.Position+1 {
						overGap++
					}
				}
				require.Equal(t, overGap, counts["gap"], "%s: every application over a gap reported", mode)
			}
			t.Logf("%s: %v", mode, counts)
		}
	})
}

func drainedCount(r *recorder) int {
	n := 0
	for _, o := range r.get("applied") {
		if o.Drained {
			n++
		}
	}
	return n
}
