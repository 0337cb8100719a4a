package relay_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// memSink is an in-process message.Publisher that records every message it
// accepts, in order. failFunc, when set, can reject a publish call.
type memSink struct {
	mu       sync.Mutex
	msgs     []*message.Message
	byID     map[string]int
	changed  chan struct{}
	failFunc func(topic string, msgs []*message.Message) error
}

func newMemSink() *memSink {
	return &memSink{byID: map[string]int{}, changed: make(chan struct{}, 1)}
}

func (s *memSink) Publish(topic string, msgs ...*message.Message) error {
	s.mu.Lock()
	fail := s.failFunc
	s.mu.Unlock()
	if fail != nil {
		if err := fail(topic, msgs); err != nil {
			return err
		}
	}
	s.mu.Lock()
	for _, m := range msgs {
		m.Metadata.Set("test_topic", topic)
		s.msgs = append(s.msgs, m)
		s.byID[m.UUID]++
	}
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
	return nil
}

func (s *memSink) Close() error { return nil }

func (s *memSink) setFail(f func(topic string, msgs []*message.Message) error) {
	s.mu.Lock()
	s.failFunc = f
	s.mu.Unlock()
}

func (s *memSink) has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byID[id] > 0
}

func (s *memSink) snapshot() []*message.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*message.Message(nil), s.msgs...)
}

func (s *memSink) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byID)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startRelay runs a relay until the test ends and returns it once running.
func startRelay(t *testing.T, env dbtest.Env, pub message.Publisher, cfg *relay.Config) *relay.Relay {
	t.Helper()
	c := relay.Config{}
	if cfg != nil {
		c = *cfg
	}
	c.Dialect, c.Schema = env.Dialect, env.Schema
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if c.RetryBackoffMin == 0 {
		c.RetryBackoffMin, c.RetryBackoffMax = 5*time.Millisecond, 50*time.Millisecond
	}
	r, err := relay.New(env.DB, pub, &c)
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() { errc <- r.Run(context.Background()) }()
	t.Cleanup(func() {
		require.NoError(t, r.Close())
		require.NoError(t, <-errc)
	})
	select {
	case <-r.Running():
	case err := <-errc:
		t.Fatalf("relay stopped at start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not start")
	}
	return r
}

// testWriter sends log lines to t.Log, and ignores them after the test.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // logging after the test ended
	w.t.Log(string(p))
	return len(p), nil
}

func newOutbox(t *testing.T, env dbtest.Env) *outbox.Outbox {
	t.Helper()
	ob, err := outbox.New(&outbox.Config{Dialect: env.Dialect, Schema: env.Schema})
	require.NoError(t, err)
	return ob
}

func pending(t *testing.T, env dbtest.Env) int {
	t.Helper()
	var n int
	require.NoError(t, env.DB.QueryRow("SELECT count(*) FROM "+table(env, "outbox")).Scan(&n))
	return n
}

func table(env dbtest.Env, name string) string {
	q := `"`
	if env.Dialect == accord.MySQL {
		q = "`"
	}
	if env.Schema != "" {
		return fmt.Sprintf(`%s%s%s.%saccord_%s%s`, q, env.Schema, q, q, name, q)
	}
	return q + "accord_" + name + q
}

// writeEvents writes n events for key in one committed transaction.
func writeEvents(t *testing.T, env dbtest.Env, ob *outbox.Outbox, topic, key string, n int) []string {
	t.Helper()
	tx, err := env.DB.Begin()
	require.NoError(t, err)
	ids := make([]string, n)
	evs := make([]outbox.Event, n)
	for i := range evs {
		m := outbox.NewMessage([]byte(strconv.Itoa(i)))
		ids[i] = m.UUID
		evs[i] = outbox.Event{Topic: topic, Key: key, Message: m}
	}
	require.NoError(t, ob.WriteTx(context.Background(), tx, evs...))
	require.NoError(t, tx.Commit())
	return ids
}

var _ = sql.ErrNoRows
