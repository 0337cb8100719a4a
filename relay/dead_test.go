package relay_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// poisonSink rejects every message whose payload is "poison" until cured.
type poisonSink struct {
	*memSink
	mu    sync.Mutex
	cured bool
}

func newPoisonSink() *poisonSink {
	p := &poisonSink{memSink: newMemSink()}
	p.memSink.setFail(func(_ string, msgs []*message.Message) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, m := range msgs {
			if string(m.Payload) == "poison" && !p.cured {
				return errors.New("broker rejects this payload")
			}
		}
		return nil
	})
	return p
}

func (p *poisonSink) cure() {
	p.mu.Lock()
	p.cured = true
	p.mu.Unlock()
}

// writePayloads writes one event per payload for key in one transaction.
func writePayloads(t *testing.T, env dbtest.Env, ob *outbox.Outbox, key string, payloads ...string) []string {
	t.Helper()
	tx, err := env.DB.Begin()
	require.NoError(t, err)
	var ids []string
	var evs []outbox.Event
	for _, p := range payloads {
		m := outbox.NewMessage([]byte(p))
		ids = append(ids, m.UUID)
		evs = append(evs, outbox.Event{Topic: "t", Key: key, Message: m})
	}
	require.NoError(t, ob.WriteTx(context.Background(), tx, evs...))
	require.NoError(t, tx.Commit())
	return ids
}

// A row that keeps failing goes to the dead letters after DeadLetterAfter
// attempts; with ParkKey its key's later rows wait, other keys (even in the
// same publish call and lane) keep flowing; requeued, it goes out first and
// the key's order holds.
func TestDeadLetterParkKey(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		ob := newOutbox(t, env)
		sink := newPoisonSink()
		// One lane: the poison row shares its publish calls with other keys.
		r := startRelay(t, env, sink, &relay.Config{Lanes: 1, DeadLetterAfter: 3})
		bad := writePayloads(t, env, ob, "k-bad", "first", "poison", "after-1", "after-2")
		var good []string
		for i := 0; i < 5; i++ {
			good = append(good, writePayloads(t, env, ob, "k-good-"+strconv.Itoa(i), "a", "b")...)
		}
		r.Wake()
		waitFor(t, 20*time.Second, "the poison row in the dead letters", func() bool { return r.Stats().DeadLettered == 1 })
		waitFor(t, 20*time.Second, "the other keys", func() bool {
			for _, id := range append(good, bad[0]) {
				if !sink.has(id) {
					return false
				}
			}
			return true
		})
		dead, err := ob.DeadLetters(ctx, env.DB, nil)
		require.NoError(t, err)
		require.Len(t, dead, 1)
		require.Equal(t, bad[1], dead[0].ID)
		require.Equal(t, "k-bad", dead[0].Key)
		require.True(t, dead[0].Parked)
		require.GreaterOrEqual(t, dead[0].Attempts, 3)
		require.Equal(t, "broker rejects this payload", dead[0].LastError)
		// The key is parked: its later rows wait in the outbox (the others'
		// are deleted just after they are published).
		waitFor(t, 10*time.Second, "only the parked key's rows left", func() bool { return pending(t, env) == 2 })
		require.False(t, sink.has(bad[2]))

		sink.cure()
		require.NoError(t, ob.RequeueDeadLetter(ctx, env.DB, dead[0].Seq))
		require.ErrorIs(t, ob.RequeueDeadLetter(ctx, env.DB, dead[0].Seq), outbox.ErrDeadLetterNotFound)
		r.Wake()
		waitFor(t, 20*time.Second, "the requeued row and the held rows", func() bool { return sink.has(bad[3]) })
		waitFor(t, 10*time.Second, "an empty outbox", func() bool { return pending(t, env) == 0 })
		var order []string
		for _, m := range sink.snapshot() {
			if m.Metadata.Get(outbox.MetadataKey) == "k-bad" {
				order = append(order, m.UUID)
			}
		}
		require.Equal(t, bad, order, "key order after requeue")
		dead, err = ob.DeadLetters(ctx, env.DB, nil)
		require.NoError(t, err)
		require.Empty(t, dead)
	})
}

// With SkipKey the key keeps flowing past its dead letter; dropping the
// dead letter deletes it for good.
func TestDeadLetterSkipKey(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		ob := newOutbox(t, env)
		sink := newPoisonSink()
		r := startRelay(t, env, sink, &relay.Config{DeadLetterAfter: 2, DeadLetterPolicy: relay.SkipKey})
		bad := writePayloads(t, env, ob, "k", "poison", "next")
		r.Wake()
		waitFor(t, 20*time.Second, "the next row of the key", func() bool { return sink.has(bad[1]) })
		waitFor(t, 10*time.Second, "an empty outbox", func() bool { return pending(t, env) == 0 })
		dead, err := ob.DeadLetters(ctx, env.DB, &outbox.DeadLetterListParams{Limit: 10})
		require.NoError(t, err)
		require.Len(t, dead, 1)
		require.False(t, dead[0].Parked)
		require.Equal(t, []byte("poison"), dead[0].Payload)
		require.NoError(t, ob.DropDeadLetter(ctx, env.DB, dead[0].Seq))
		require.ErrorIs(t, ob.DropDeadLetter(ctx, env.DB, dead[0].Seq), outbox.ErrDeadLetterNotFound)
		dead, err = ob.DeadLetters(ctx, env.DB, nil)
		require.NoError(t, err)
		require.Empty(t, dead)
		require.False(t, sink.has(bad[0]))
	})
}

// A parked key survives a relay restart: the new relay still holds the
// key's rows back (the park is in the database, not in memory).
func TestDeadLetterParkSurvivesRestart(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	ctx := context.Background()
	ob := newOutbox(t, env)
	sink := newPoisonSink()
	r, err := relay.New(env.DB, sink, &relay.Config{Dialect: env.Dialect, Schema: env.Schema, DeadLetterAfter: 1,
		RetryBackoffMin: time.Millisecond, RetryBackoffMax: 5 * time.Millisecond, Logger: discardLogger()})
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	bad := writePayloads(t, env, ob, "k", "poison", "held")
	waitFor(t, 20*time.Second, "the dead letter", func() bool { return r.Stats().DeadLettered == 1 })
	cancel()
	require.NoError(t, <-done)

	sink2 := newMemSink()
	r2 := startRelay(t, env, sink2, nil)
	other := writePayloads(t, env, ob, "other", "x")
	waitFor(t, 20*time.Second, "another key", func() bool { return sink2.has(other[0]) })
	waitFor(t, 10*time.Second, "the other key's row deleted", func() bool { return pending(t, env) == 1 })
	require.False(t, sink2.has(bad[1]), "a parked key's row was published after a restart")
	require.NotNil(t, r2)
}

// sweepWatch counts the sweeps a relay made while many rows were in flight
// (the sweeps that read sequence numbers first).
type sweepWatch struct {
	relay.ObserverDefaults
	r      atomic.Pointer[relay.Relay]
	loaded atomic.Int64
}

func (w *sweepWatch) Read(_ context.Context, _ int, sweep bool, _ time.Duration) {
	if r := w.r.Load(); r != nil && sweep && r.Stats().InFlight >= 256 {
		w.loaded.Add(1)
	}
}

// A parked key's later rows keep waiting, and every other key flows in
// order, while a large backlog is in flight (sweeps then read sequence
// numbers first and fetch only the rows not in flight).
func TestDeadLetterParkKeyUnderBacklog(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		ob := newOutbox(t, env)
		var cured atomic.Bool
		sink := newMemSink()
		sink.setFail(func(_ string, msgs []*message.Message) error {
			time.Sleep(2 * time.Millisecond) // a broker round trip: rows stay in flight
			for _, m := range msgs {
				if string(m.Payload) == "poison" && !cured.Load() {
					return errors.New("broker rejects this payload")
				}
			}
			return nil
		})
		const keys, perKey = 40, 60
		want := map[string][]string{}
		for round := 0; round < perKey; round += 10 {
			tx, err := env.DB.Begin()
			require.NoError(t, err)
			var evs []outbox.Event
			for i := round; i < round+10; i++ {
				for k := 0; k < keys; k++ {
					key, payload := "k-"+strconv.Itoa(k), "p"
					if k == 0 && i == 1 {
						payload = "poison"
					}
					m := outbox.NewMessage([]byte(payload))
					want[key] = append(want[key], m.UUID)
					evs = append(evs, outbox.Event{Topic: "t", Key: key, Message: m})
				}
			}
			require.NoError(t, ob.WriteTx(ctx, tx, evs...))
			require.NoError(t, tx.Commit())
		}
		watch := &sweepWatch{}
		r := startRelay(t, env, sink, &relay.Config{Lanes: 4, BatchSize: 200, DeadLetterAfter: 2,
			SweepInterval: 20 * time.Millisecond, Observer: watch})
		watch.r.Store(r)
		r.Wake()
		waitFor(t, 60*time.Second, "every other key delivered", func() bool {
			for k := 1; k < keys; k++ {
				for _, id := range want["k-"+strconv.Itoa(k)] {
					if !sink.has(id) {
						return false
					}
				}
			}
			return r.Stats().DeadLettered == 1
		})
		waitFor(t, 20*time.Second, "only the parked key's rows left", func() bool { return pending(t, env) == perKey-2 })
		for _, id := range want["k-0"][2:] {
			require.False(t, sink.has(id), "a parked key's later row was published")
		}
		require.Positive(t, watch.loaded.Load(), "no sweep ran with many rows in flight: the test does not cover that read")

		cured.Store(true)
		dead, err := ob.DeadLetters(ctx, env.DB, nil)
		require.NoError(t, err)
		require.Len(t, dead, 1)
		require.NoError(t, ob.RequeueDeadLetter(ctx, env.DB, dead[0].Seq))
		r.Wake()
		waitFor(t, 30*time.Second, "an empty outbox", func() bool { return pending(t, env) == 0 })
		got := map[string][]string{}
		seen := map[string]bool{}
		for _, m := range sink.snapshot() {
			if !seen[m.UUID] {
				seen[m.UUID] = true
				key := m.Metadata.Get(outbox.MetadataKey)
				got[key] = append(got[key], m.UUID)
			}
		}
		require.Equal(t, want, got, "per-key order (first arrivals), nothing lost")
	})
}

// A parked key with more rows than a read takes does not hold back the
// other rows: with one relay (reads from the floor, parked rows thin) and
// while two relays share the outbox (every read a sweep of some slots,
// parked rows left out).
func TestDeadLetterParkKeyManyHeldRows(t *testing.T) {
	t.Parallel()
	for _, relays := range []int{1, 2} {
		t.Run("relays="+strconv.Itoa(relays), func(t *testing.T) {
			t.Parallel()
			env := dbtest.PostgresSchema(t)
			ob := newOutbox(t, env)
			sink := newPoisonSink()
			cfg := &relay.Config{BatchSize: 20, DeadLetterAfter: 2, LeaseTTL: 2 * time.Second}
			var rs []*relay.Relay
			for range relays {
				rs = append(rs, startRelay(t, env, sink, cfg))
			}
			waitFor(t, 30*time.Second, "the relays holding their shares of the slots", func() bool {
				sum := 0
				for _, r := range rs {
					if r.Leases() == 0 {
						return false
					}
					sum += r.Leases()
				}
				return sum == relay.Slots
			})
			payloads := []string{"first", "poison"}
			for i := 0; i < 150; i++ {
				payloads = append(payloads, "held-"+strconv.Itoa(i))
			}
			bad := writePayloads(t, env, ob, "k-bad", payloads...)
			var good []string
			for k := 0; k < 30; k++ {
				good = append(good, writePayloads(t, env, ob, "k-good-"+strconv.Itoa(k), "a", "b", "c")...)
			}
			for _, r := range rs {
				r.Wake()
			}
			waitFor(t, 20*time.Second, "the poison row in the dead letters", func() bool {
				n := int64(0)
				for _, r := range rs {
					n += r.Stats().DeadLettered
				}
				return n == 1
			})
			waitFor(t, 30*time.Second, "every other key's rows", func() bool {
				for _, id := range good {
					if !sink.has(id) {
						return false
					}
				}
				return true
			})
			require.True(t, sink.has(bad[0]))
			for _, id := range bad[2:] {
				require.False(t, sink.has(id), "a parked key's later row was published")
			}
		})
	}
}
