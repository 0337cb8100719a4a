package feed_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/feed"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// pullChildEnv, when set, makes the test binary run as a pull consumer
// process (see runPullChild) instead of running tests. Its value is a JSON
// pullChildSpec. TestPullerKillDashNine starts such processes and kills them
// with SIGKILL.
const pullChildEnv = "ACCORD_FEED_PULL_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(pullChildEnv); spec != "" {
		os.Exit(runPullChild(spec))
	}
	os.Exit(m.Run())
}

// ---------------------------------------------------------------------------
// helpers

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newSource(t *testing.T, env dbtest.Env, cfg *feed.SourceConfig) *feed.Source {
	t.Helper()
	c := feed.SourceConfig{}
	if cfg != nil {
		c = *cfg
	}
	c.Dialect, c.Schema = env.Dialect, env.Schema
	if c.Name == "" {
		c.Name = "orders"
	}
	if c.Logger == nil {
		c.Logger = quietLogger()
	}
	src, err := feed.NewSource(env.DB, &c)
	require.NoError(t, err)
	return src
}

// table returns the quoted, qualified name of a table of env.
func table(env dbtest.Env, name string) string {
	switch env.Dialect {
	case accord.Postgres:
		return `"` + env.Schema + `"."` + name + `"`
	case accord.MySQL:
		return "`" + env.Schema + "`.`" + name + "`"
	}
	return `"` + name + `"`
}

// ph returns the n-th bind parameter of env's dialect.
func ph(env dbtest.Env, n int) string {
	if env.Dialect == accord.Postgres {
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

func makeEvents(n int, topic, key string, firstVersion int64) []feed.Event {
	evs := make([]feed.Event, n)
	for i := range evs {
		v := firstVersion + int64(i)
		evs[i] = feed.Event{
			ID:       outbox.NewID(),
			Topic:    topic,
			Key:      key,
			Version:  v,
			Payload:  []byte(fmt.Sprintf(`{"key":%q,"v":%d}`, key, v)),
			Metadata: map[string]string{"k": strconv.FormatInt(v, 10)},
		}
	}
	return evs
}

func appendEvents(t *testing.T, src *feed.Source, evs []feed.Event) {
	t.Helper()
	n, err := src.Append(context.Background(), evs...)
	require.NoError(t, err)
	require.Equal(t, len(evs), n)
}

// readAll reads every event after cursor with pages of limit.
func readAll(t *testing.T, f feed.Fetcher, cursor string, limit int) ([]feed.Event, string) {
	t.Helper()
	var all []feed.Event
	for {
		page, err := f.Read(context.Background(), cursor, limit, 0)
		require.NoError(t, err)
		all = append(all, page.Events...)
		cursor = page.Next
		if !page.More {
			return all, cursor
		}
	}
}

// waitFor polls cond until it holds, failing t after timeout.
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

// createApplied creates the consumer's table of applied events: a UNIQUE
// event id, so applying an event twice fails, and seq for the apply order.
func createApplied(t *testing.T, env dbtest.Env, name string) {
	t.Helper()
	var ddl string
	switch env.Dialect {
	case accord.Postgres:
		ddl = `CREATE TABLE ` + table(env, name) + ` (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, position BIGINT NOT NULL)`
	case accord.MySQL:
		ddl = `CREATE TABLE ` + table(env, name) + ` (seq BIGINT AUTO_INCREMENT PRIMARY KEY, event_id VARCHAR(255) NOT NULL UNIQUE, position BIGINT NOT NULL)`
	default:
		ddl = `CREATE TABLE ` + table(env, name) + ` (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, position INTEGER NOT NULL)`
	}
	_, err := env.DB.Exec(ddl)
	require.NoError(t, err)
}

func insertApplied(ctx context.Context, env dbtest.Env, name string, tx *sql.Tx, ev feed.Event) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO `+table(env, name)+` (event_id, position) VALUES (`+ph(env, 1)+`, `+ph(env, 2)+`)`, ev.ID, ev.Position)
	return err
}

type appliedRow struct {
	ID       string
	Position int64
}

func appliedRows(t *testing.T, env dbtest.Env, name string) []appliedRow {
	t.Helper()
	rows, err := env.DB.Query(`SELECT event_id, position FROM ` + table(env, name) + ` ORDER BY seq`)
	require.NoError(t, err)
	defer rows.Close()
	var out []appliedRow
	for rows.Next() {
		var r appliedRow
		require.NoError(t, rows.Scan(&r.ID, &r.Position))
		out = append(out, r)
	}
	require.NoError(t, rows.Err())
	return out
}

func countRows(t *testing.T, env dbtest.Env, name string) int {
	t.Helper()
	var n int
	require.NoError(t, env.DB.QueryRow(`SELECT count(*) FROM `+table(env, name)).Scan(&n))
	return n
}

// requireAppliedInOrder checks that the consumer applied exactly the feed's
// events 1..n, once each, in position order.
func requireAppliedInOrder(t *testing.T, env dbtest.Env, name string, feedEvents []feed.Event) {
	t.Helper()
	rows := appliedRows(t, env, name)
	require.Len(t, rows, len(feedEvents))
	for i, r := range rows {
		require.Equal(t, int64(i+1), r.Position, "apply order at row %d", i)
		require.Equal(t, feedEvents[i].ID, r.ID, "event id at position %d", i+1)
	}
}

// clock is a settable clock for SourceConfig.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// ---------------------------------------------------------------------------
// configuration

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	db, err := sql.Open("sqlite", "file::memory:")
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })

	_, err = feed.NewSource(nil, &feed.SourceConfig{Dialect: "oracle", TablePrefix: "Bad-Prefix", DedupWindow: -5, PollInterval: -1})
	require.ErrorIs(t, err, feed.ErrInvalidConfig)
	for _, want := range []string{"db is nil", "oracle", "TablePrefix", "Name is empty", "DedupWindow", "PollInterval"} {
		require.ErrorContains(t, err, want)
	}

	_, err = feed.NewPuller(nil, nil, &feed.PullerConfig{Dialect: accord.SQLite, BatchSize: 5000, Wait: 2 * time.Minute,
		RetryBackoffMin: time.Second, RetryBackoffMax: time.Millisecond}, nil)
	require.ErrorIs(t, err, feed.ErrInvalidConfig)
	for _, want := range []string{"db is nil", "fetcher is nil", "handler is nil", "Consumer is empty", "Feed is empty", "BatchSize", "Wait", "RetryBackoffMax"} {
		require.ErrorContains(t, err, want)
	}

	src, err := feed.NewSource(db, &feed.SourceConfig{Dialect: accord.SQLite, Name: "orders"})
	require.NoError(t, err)
	p, err := feed.NewPuller(db, src, &feed.PullerConfig{Dialect: accord.SQLite, Consumer: "c", Feed: "orders", Wait: -1},
		func(context.Context, *sql.Tx, feed.Event) error { return nil })
	require.NoError(t, err)
	require.NoError(t, p.Close())
	require.NoError(t, p.Close())

	_, err = feed.NewHTTPFetcher("ftp://x", nil)
	require.ErrorIs(t, err, feed.ErrInvalidConfig)
	_, err = feed.NewHTTPFetcher("http://", nil)
	require.ErrorIs(t, err, feed.ErrInvalidConfig)
}

// ---------------------------------------------------------------------------
// commit-ordered positions

// Eight goroutines publish concurrently while two readers poll: one through
// Source.Read, one with raw SQL on the table (so the test does not rely on
// Read's own gap check). Every page either reader sees starts right after
// the previous one and has no gap: a reader never observes position N+1
// before N. Positions end up 1..total, and each writer's events are in its
// publish order.
func TestPublishConcurrentPositionsCommitOrdered(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		src := newSource(t, env, nil)
		pub := src.Publisher()
		const writers, calls, perCall = 8, 20, 5
		const total = writers * calls * perCall
		deadline := time.Now().Add(20 * time.Second)

		// Raw reader: the newest rows straight from the table.
		type result struct {
			pages      int
			last       int64
			violations []string
			err        error
		}
		rawDone := make(chan result, 1)
		go func() {
			var res result
			q := `SELECT position FROM ` + table(env, "accord_feed") + ` WHERE position > ` + ph(env, 1) + ` ORDER BY position LIMIT 37`
			for res.last < total && time.Now().Before(deadline) {
				rows, err := env.DB.QueryContext(ctx, q, res.last)
				if err != nil {
					res.err = err
					break
				}
				var page []int64
				for rows.Next() {
					var p int64
					if err := rows.Scan(&p); err != nil {
						res.err = err
					}
					page = append(page, p)
				}
				_ = rows.Close()
				if len(page) > 0 {
					res.pages++
				}
				for _, p := range page {
					if p != res.last+1 {
						res.violations = append(res.violations, fmt.Sprintf("saw %d right after %d (page %v)", p, res.last, page))
					}
					res.last = p
				}
			}
			rawDone <- res
		}()
		// API reader: Source.Read with a short long-poll.
		apiDone := make(chan result, 1)
		go func() {
			var res result
			cursor := ""
			for res.last < total && time.Now().Before(deadline) {
				page, err := src.Read(ctx, cursor, 23, 50*time.Millisecond)
				if err != nil {
					res.err = err
					break
				}
				if len(page.Events) > 0 {
					res.pages++
				}
				for _, ev := range page.Events {
					if ev.Position != res.last+1 {
						res.violations = append(res.violations, fmt.Sprintf("saw %d right after %d", ev.Position, res.last))
					}
					res.last = ev.Position
				}
				cursor = page.Next
			}
			apiDone <- res
		}()

		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for c := range calls {
					msgs := make([]*message.Message, perCall)
					for i := range msgs {
						v := c*perCall + i + 1
						msgs[i] = message.NewMessage(outbox.NewID(), []byte(fmt.Sprintf("w%d-%d", w, v)))
						msgs[i].Metadata.Set(outbox.MetadataKey, fmt.Sprintf("writer-%d", w))
						msgs[i].Metadata.Set(outbox.MetadataVersion, strconv.Itoa(v))
					}
					if err := pub.Publish("orders.changed", msgs...); err != nil {
						errs <- fmt.Errorf("writer %d call %d: %w", w, c, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		for name, ch := range map[string]chan result{"raw reader": rawDone, "Read": apiDone} {
			res := <-ch
			require.NoError(t, res.err, name)
			if name == "raw reader" && env.Dialect == accord.MySQL {
				// InnoDB releases a writer's locks a moment before its commit
				// is visible, so a raw SELECT can see the next writer's rows
				// first; Source.Read stops at such a hole (checked below).
				t.Logf("raw reader on MySQL: %d holes seen", len(res.violations))
			} else {
				require.Empty(t, res.violations, name)
			}
			require.Equal(t, int64(total), res.last, name)
			t.Logf("%s saw %d events in %d pages", name, res.last, res.pages)
		}

		all, next := readAll(t, src, "", 1000)
		require.Len(t, all, total)
		require.Equal(t, src.Cursor(total), next)
		lastVersion := map[string]int64{}
		for i, ev := range all {
			require.Equal(t, int64(i+1), ev.Position)
			require.Equal(t, lastVersion[ev.Key]+1, ev.Version, "key %s out of order at position %d", ev.Key, ev.Position)
			lastVersion[ev.Key] = ev.Version
			require.Equal(t, "orders.changed", ev.Topic)
			require.Equal(t, ev.Key, ev.Metadata[outbox.MetadataKey])
		}
		require.Len(t, lastVersion, writers)
	})
}

// ---------------------------------------------------------------------------
// appends and duplicates

func TestAppendSkipsKnownIDs(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		src := newSource(t, env, nil)
		evs := makeEvents(4, "orders.placed", "order-1", 1)

		n, err := src.Append(ctx, evs[0], evs[1], evs[2])
		require.NoError(t, err)
		require.Equal(t, 3, n)
		n, err = src.Append(ctx, evs[1], evs[2], evs[3], evs[3]) // two known, one new given twice
		require.NoError(t, err)
		require.Equal(t, 1, n)

		// A new Source (a restarted producer) knows the ids too.
		n, err = newSource(t, env, nil).Append(ctx, evs...)
		require.NoError(t, err)
		require.Equal(t, 0, n)

		// Through the Publisher, as a relay that publishes again after a crash.
		msg := message.NewMessage(evs[0].ID, evs[0].Payload)
		require.NoError(t, src.Publisher().Publish("orders.placed", msg))

		// AppendTx: nothing visible after a rollback, appended after a commit.
		extra := makeEvents(2, "orders.paid", "order-1", 5)
		tx, err := env.DB.BeginTx(ctx, nil)
		require.NoError(t, err)
		n, err = src.AppendTx(ctx, tx, extra...)
		require.NoError(t, err)
		require.Equal(t, 2, n)
		require.NoError(t, tx.Rollback())
		tx, err = env.DB.BeginTx(ctx, nil)
		require.NoError(t, err)
		n, err = src.AppendTx(ctx, tx, extra...)
		require.NoError(t, err)
		require.Equal(t, 2, n)
		require.NoError(t, tx.Commit())

		all, _ := readAll(t, src, "", 100)
		require.Len(t, all, 6)
		for i, want := range append(evs, extra...) {
			require.Equal(t, int64(i+1), all[i].Position)
			require.Equal(t, want.ID, all[i].ID)
			require.Equal(t, want.Payload, all[i].Payload)
			require.Equal(t, want.Version, all[i].Version)
			require.Equal(t, want.Metadata, all[i].Metadata)
		}

		// Invalid events: nothing of the call is written.
		_, err = src.Append(ctx, makeEvents(1, "t", "k", 1)[0], feed.Event{ID: "x"})
		require.ErrorIs(t, err, feed.ErrInvalidEvent)
		_, err = src.Append(ctx, feed.Event{ID: strings.Repeat("x", 300), Topic: "t"})
		require.ErrorIs(t, err, feed.ErrInvalidEvent)
		bad := message.NewMessage(outbox.NewID(), nil)
		bad.Metadata.Set(outbox.MetadataVersion, "seven")
		require.ErrorIs(t, src.Publisher().Publish("t", bad), feed.ErrInvalidEvent)
		head, err := src.Head(ctx)
		require.NoError(t, err)
		require.Equal(t, src.Cursor(6), head)

		// Ids older than the window are not checked.
		small := newSource(t, env, &feed.SourceConfig{DedupWindow: 3})
		n, err = small.Append(ctx, evs[0])
		require.NoError(t, err)
		require.Equal(t, 1, n, "evs[0] is 6 positions back, outside a window of 3")
		n, err = small.Append(ctx, evs[0], extra[1])
		require.NoError(t, err)
		require.Equal(t, 0, n)

		pub := src.Publisher()
		require.NoError(t, pub.Close())
		require.NoError(t, pub.Close())
		require.ErrorIs(t, pub.Publish("t", message.NewMessage(outbox.NewID(), nil)), feed.ErrPublisherClosed)
	})
}

// ---------------------------------------------------------------------------
// reads

func TestReadPages(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		src := newSource(t, env, nil)

		page, err := src.Read(ctx, "", 10, 0)
		require.NoError(t, err)
		require.Empty(t, page.Events)
		require.NotNil(t, page.Events)
		require.Equal(t, src.Cursor(0), page.Next, "the empty cursor becomes the start cursor")
		require.False(t, page.More)

		appendEvents(t, src, makeEvents(1005, "orders.placed", "k", 1))

		page, err = src.Read(ctx, "", 0, 0)
		require.NoError(t, err)
		require.Len(t, page.Events, feed.ReadLimitDefault)
		require.True(t, page.More)

		page, err = src.Read(ctx, "", 5000, 0)
		require.NoError(t, err)
		require.Len(t, page.Events, feed.ReadLimitMax)
		require.True(t, page.More)

		cursor := src.Cursor(0)
		var sizes []int
		var mores []bool
		for {
			page, err := src.Read(ctx, cursor, 400, 0)
			require.NoError(t, err)
			sizes = append(sizes, len(page.Events))
			mores = append(mores, page.More)
			pos, err := src.ParseCursor(ctx, cursor)
			require.NoError(t, err)
			for i, ev := range page.Events {
				require.Equal(t, pos+int64(i)+1, ev.Position)
			}
			cursor = page.Next
			if !page.More {
				break
			}
		}
		require.Equal(t, []int{400, 400, 205}, sizes)
		require.Equal(t, []bool{true, true, false}, mores)
		require.Equal(t, src.Cursor(1005), cursor)

		page, err = src.Read(ctx, cursor, 10, 0)
		require.NoError(t, err)
		require.Empty(t, page.Events)
		require.Equal(t, cursor, page.Next)
		head, err := src.Head(ctx)
		require.NoError(t, err)
		require.Equal(t, cursor, head)
	})
}

// A read that waits returns as soon as an event is appended, and an empty
// page when the wait is over.
func TestReadLongPoll(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		// PollInterval of an hour: only the in-process wake-up can end the wait
		// in time.
		src := newSource(t, env, &feed.SourceConfig{PollInterval: time.Hour})
		appendEvents(t, src, makeEvents(3, "t", "k", 1))
		head, err := src.Head(ctx)
		require.NoError(t, err)

		type res struct {
			page    feed.Page
			err     error
			elapsed time.Duration
		}
		read := func(s *feed.Source, cursor string, wait time.Duration) chan res {
			ch := make(chan res, 1)
			go func() {
				start := time.Now()
				page, err := s.Read(ctx, cursor, 10, wait)
				ch <- res{page, err, time.Since(start)}
			}()
			return ch
		}

		got := read(src, head, 30*time.Second)
		waitFor(t, 5*time.Second, "the read to wait", func() bool { return feed.Waiting(src) == 1 })
		evs := makeEvents(1, "t", "k", 4)
		appendEvents(t, src, evs)
		select {
		case r := <-got:
			require.NoError(t, r.err)
			require.Len(t, r.page.Events, 1)
			require.Equal(t, evs[0].ID, r.page.Events[0].ID)
			require.Less(t, r.elapsed, 10*time.Second)
		case <-time.After(10 * time.Second):
			t.Fatal("the waiting read did not return after an append")
		}

		// Nothing appended: an empty page after the wait.
		head = src.Cursor(4)
		start := time.Now()
		page, err := src.Read(ctx, head, 10, 300*time.Millisecond)
		require.NoError(t, err)
		require.Empty(t, page.Events)
		require.Equal(t, head, page.Next)
		require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)

		// Another Source on the same table (another process) sees the append
		// by polling.
		other := newSource(t, env, &feed.SourceConfig{PollInterval: 20 * time.Millisecond})
		got = read(other, head, 30*time.Second)
		waitFor(t, 5*time.Second, "the other read to wait", func() bool { return feed.Waiting(other) == 1 })
		appendEvents(t, src, makeEvents(1, "t", "k", 5))
		select {
		case r := <-got:
			require.NoError(t, r.err)
			require.Len(t, r.page.Events, 1)
			require.Equal(t, int64(5), r.page.Events[0].Position)
		case <-time.After(10 * time.Second):
			t.Fatal("the polling read did not see the append")
		}

		// A cancelled context ends the wait.
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := src.Read(cctx, src.Cursor(5), 10, 30*time.Second)
			done <- err
		}()
		waitFor(t, 5*time.Second, "the read to wait", func() bool { return feed.Waiting(src) == 1 })
		cancel()
		select {
		case err := <-done:
			require.ErrorIs(t, err, context.Canceled)
		case <-time.After(10 * time.Second):
			t.Fatal("the read did not end with its context")
		}
	})
}

func TestCursorErrorsAndPrune(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		clk := &clock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
		src := newSource(t, env, &feed.SourceConfig{Now: clk.Now, PruneBatchSize: 3})
		other := newSource(t, env, &feed.SourceConfig{Name: "payments"})

		for _, c := range []string{"garbage", "v1.x", "v2." + strings.Split(src.Cursor(1), ".")[1] + ".1", "v1..1", "v1.abc.-1",
			"v1.ABC.1", "v1.abc.1.2", "v1." + strings.Split(src.Cursor(1), ".")[1] + "." + strings.Repeat("z", 20)} {
			_, err := src.Read(ctx, c, 10, 0)
			require.ErrorIs(t, err, feed.ErrMalformedCursor, c)
			require.True(t, feed.IsCursorError(err))
			_, err = src.ParseCursor(ctx, c)
			require.ErrorIs(t, err, feed.ErrMalformedCursor, c)
		}

		appendEvents(t, src, makeEvents(10, "t", "k", 1)) // appended on 2025-01-01
		clk.Set(clk.Now().Add(48 * time.Hour))
		appendEvents(t, src, makeEvents(5, "t", "k", 11)) // two days later

		for _, c := range []string{src.Cursor(16), src.Cursor(1000), other.Cursor(3)} {
			_, err := src.Read(ctx, c, 10, 0)
			require.ErrorIs(t, err, feed.ErrCursorFromFuture, c)
			_, err = src.ParseCursor(ctx, c)
			require.ErrorIs(t, err, feed.ErrCursorFromFuture, c)
		}
		_, err := src.Read(ctx, src.Cursor(15), 10, 0)
		require.NoError(t, err)

		deleted, err := src.Prune(ctx, 24*time.Hour)
		require.NoError(t, err)
		require.Equal(t, int64(10), deleted)

		for _, pos := range []int64{0, 3, 9} {
			_, err := src.Read(ctx, src.Cursor(pos), 10, 0)
			require.ErrorIs(t, err, feed.ErrCursorExpired, "position %d", pos)
			_, err = src.ParseCursor(ctx, src.Cursor(pos))
			require.ErrorIs(t, err, feed.ErrCursorExpired)
		}
		page, err := src.Read(ctx, src.Cursor(10), 10, 0)
		require.NoError(t, err)
		require.Len(t, page.Events, 5)
		require.Equal(t, int64(11), page.Events[0].Position)
		page, err = src.Read(ctx, "", 10, 0) // the start: the oldest retained event
		require.NoError(t, err)
		require.Equal(t, int64(11), page.Events[0].Position)

		// Everything old: the newest event is kept, so positions go on.
		clk.Set(clk.Now().Add(72 * time.Hour))
		deleted, err = src.Prune(ctx, time.Hour)
		require.NoError(t, err)
		require.Equal(t, int64(4), deleted)
		appendEvents(t, src, makeEvents(1, "t", "k", 16))
		page, err = src.Read(ctx, src.Cursor(15), 10, 0)
		require.NoError(t, err)
		require.Len(t, page.Events, 1)
		require.Equal(t, int64(16), page.Events[0].Position)
		deleted, err = src.Prune(ctx, time.Hour)
		require.NoError(t, err)
		require.Equal(t, int64(1), deleted, "15 is old and no longer the newest")
		deleted, err = src.Prune(ctx, time.Hour)
		require.NoError(t, err)
		require.Equal(t, int64(0), deleted, "16 is young")
	})
}

// ---------------------------------------------------------------------------
// HTTP

func getJSON(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var body map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	return resp.StatusCode, body
}

func TestHTTP(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		clk := &clock{now: time.Now().Add(-48 * time.Hour)}
		src := newSource(t, env, &feed.SourceConfig{Now: clk.Now})
		other := newSource(t, env, &feed.SourceConfig{Name: "payments"})
		mux := http.NewServeMux()
		mux.Handle("/api/feeds/orders", src.Handler()) // any path
		srv := httptest.NewServer(mux)
		t.Cleanup(srv.Close)
		base := srv.URL + "/api/feeds/orders"
		client, err := feed.NewHTTPFetcher(base, srv.Client())
		require.NoError(t, err)

		evs := makeEvents(3, "orders.placed", "order-7", 1)
		evs[0].Payload = []byte{0, 1, 2, 255}
		appendEvents(t, src, evs)
		clk.Set(time.Now())
		appendEvents(t, src, makeEvents(1002, "orders.paid", "order-8", 1))

		// The JSON shape.
		status, body := getJSON(t, base+"?limit=2")
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, true, body["more"])
		require.Equal(t, src.Cursor(2), body["next"])
		first := body["events"].([]any)[0].(map[string]any)
		require.Equal(t, float64(1), first["position"])
		require.Equal(t, evs[0].ID, first["id"])
		require.Equal(t, "orders.placed", first["topic"])
		require.Equal(t, "order-7", first["key"])
		require.Equal(t, float64(1), first["version"])
		require.Equal(t, base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 255}), first["payload"])
		require.Equal(t, map[string]any{"k": "1"}, first["metadata"])
		created, err := time.Parse(time.RFC3339Nano, first["created_at"].(string))
		require.NoError(t, err)
		require.WithinDuration(t, time.Now().Add(-48*time.Hour), created, time.Hour)

		// The client reads the same pages as the Source.
		page, err := client.Read(ctx, src.Cursor(1), 2, 0)
		require.NoError(t, err)
		direct, err := src.Read(ctx, src.Cursor(1), 2, 0)
		require.NoError(t, err)
		require.Equal(t, len(direct.Events), len(page.Events))
		for i := range page.Events {
			require.Equal(t, direct.Events[i].ID, page.Events[i].ID)
			require.Equal(t, direct.Events[i].Payload, page.Events[i].Payload)
			require.Equal(t, direct.Events[i].Metadata, page.Events[i].Metadata)
			require.True(t, direct.Events[i].CreatedAt.Equal(page.Events[i].CreatedAt))
		}
		require.Equal(t, direct.Next, page.Next)
		require.Equal(t, direct.More, page.More)

		// Limits are capped.
		status, body = getJSON(t, base+"?limit=5000")
		require.Equal(t, http.StatusOK, status)
		require.Len(t, body["events"], feed.ReadLimitMax)
		status, body = getJSON(t, base)
		require.Equal(t, http.StatusOK, status)
		require.Len(t, body["events"], feed.ReadLimitDefault)

		// Waiting: an empty page after the wait.
		start := time.Now()
		status, body = getJSON(t, base+"?after="+src.Cursor(1005)+"&wait=200ms")
		require.Equal(t, http.StatusOK, status)
		require.Empty(t, body["events"])
		require.Equal(t, src.Cursor(1005), body["next"])
		require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
		status, _ = getJSON(t, base+"?after="+src.Cursor(1005)+"&wait=0")
		require.Equal(t, http.StatusOK, status)

		_, err = src.Prune(ctx, 24*time.Hour)
		require.NoError(t, err)

		for _, c := range []struct {
			query  string
			status int
			code   string
			err    error
		}{
			{"after=garbage", 400, feed.CodeMalformedCursor, feed.ErrMalformedCursor},
			{"limit=0", 400, feed.CodeMalformedLimit, nil},
			{"limit=-3", 400, feed.CodeMalformedLimit, nil},
			{"limit=ten", 400, feed.CodeMalformedLimit, nil},
			{"wait=soon", 400, feed.CodeMalformedWait, nil},
			{"wait=-1s", 400, feed.CodeMalformedWait, nil},
			{"after=" + src.Cursor(2000), 409, feed.CodeCursorFromFuture, feed.ErrCursorFromFuture},
			{"after=" + other.Cursor(1), 409, feed.CodeCursorFromFuture, feed.ErrCursorFromFuture},
			{"after=" + src.Cursor(1), 410, feed.CodeCursorExpired, feed.ErrCursorExpired},
		} {
			status, body := getJSON(t, base+"?"+c.query)
			require.Equal(t, c.status, status, c.query)
			require.Equal(t, c.code, body["code"], c.query)
			require.NotEmpty(t, body["error"], c.query)
			if c.err != nil {
				cursor := strings.TrimPrefix(c.query, "after=")
				_, err := client.Read(ctx, cursor, 10, 0)
				require.ErrorIs(t, err, c.err, c.query)
				require.True(t, feed.IsCursorError(err))
				var se *feed.ServerError
				require.ErrorAs(t, err, &se)
				require.Equal(t, c.status, se.StatusCode)
			}
		}
		resp, err := http.Post(base, "application/json", strings.NewReader("{}"))
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

		// After pruning, the start of the feed is the oldest retained event.
		page, err = client.Read(ctx, "", 1, 0)
		require.NoError(t, err)
		require.Equal(t, int64(4), page.Events[0].Position)
	})
}

// ---------------------------------------------------------------------------
// relay → feed

// The relay publishes the outbox into the feed through feed.Publisher:
// every event arrives, in order per key, and publishing the same messages
// again (what a relay does after a crash) adds nothing.
func TestRelayToFeed(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	ctx := context.Background()
	src := newSource(t, env, &feed.SourceConfig{PollInterval: time.Hour})
	ob, err := outbox.New(&outbox.Config{Dialect: env.Dialect, Schema: env.Schema})
	require.NoError(t, err)
	r, err := relay.New(env.DB, src.Publisher(), &relay.Config{Dialect: env.Dialect, Schema: env.Schema,
		Lanes: 4, BatchSize: 50, PollInterval: 50 * time.Millisecond, Logger: quietLogger()})
	require.NoError(t, err)
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	t.Cleanup(func() {
		require.NoError(t, r.Close())
		require.NoError(t, <-runErr)
	})

	const keys, versions = 10, 20
	sent := map[string]bool{}
	for v := 1; v <= versions; v++ {
		tx, err := env.DB.BeginTx(ctx, nil)
		require.NoError(t, err)
		var batch []outbox.Event
		for k := range keys {
			msg := outbox.NewMessage([]byte(fmt.Sprintf("k%d-v%d", k, v)))
			sent[msg.UUID] = true
			batch = append(batch, outbox.Event{Topic: "orders.changed", Key: fmt.Sprintf("order-%d", k), Version: int64(v), Message: msg})
		}
		require.NoError(t, ob.WriteTx(ctx, tx, batch...))
		require.NoError(t, tx.Commit())
	}

	var got []feed.Event
	cursor := ""
	deadline := time.Now().Add(20 * time.Second)
	for len(got) < keys*versions {
		require.True(t, time.Now().Before(deadline), "only %d of %d events reached the feed", len(got), keys*versions)
		page, err := src.Read(ctx, cursor, 1000, 2*time.Second)
		require.NoError(t, err)
		got = append(got, page.Events...)
		cursor = page.Next
	}
	require.Len(t, got, keys*versions)
	last := map[string]int64{}
	for i, ev := range got {
		require.Equal(t, int64(i+1), ev.Position)
		require.True(t, sent[ev.ID], "unknown id %s", ev.ID)
		delete(sent, ev.ID)
		require.Equal(t, last[ev.Key]+1, ev.Version, "key %s out of order", ev.Key)
		last[ev.Key] = ev.Version
		require.Equal(t, ev.Key, ev.Metadata[outbox.MetadataKey])
		require.NotEmpty(t, ev.Metadata[outbox.MetadataCreatedAt])
	}
	require.Empty(t, sent)

	// The relay publishes again after a crash: same ids, nothing added (also
	// through a restarted producer's Source).
	for _, s := range []*feed.Source{src, newSource(t, env, nil)} {
		for start := 0; start < len(got); start += 30 {
			var msgs []*message.Message
			for _, ev := range got[start:min(start+30, len(got))] {
				m := message.NewMessage(ev.ID, ev.Payload)
				for k, v := range ev.Metadata {
					m.Metadata.Set(k, v)
				}
				msgs = append(msgs, m)
			}
			require.NoError(t, s.Publisher().Publish("orders.changed", msgs...))
		}
	}
	head, err := src.Head(ctx)
	require.NoError(t, err)
	require.Equal(t, src.Cursor(keys*versions), head)
}

// ---------------------------------------------------------------------------
// puller

// recObserver records what a Puller reports.
type recObserver struct {
	mu            sync.Mutex
	fetchFailures []time.Time
	maxAttempt    int
	applied       int
}

func (o *recObserver) Fetched(_ context.Context, fi feed.FetchInfo) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if fi.Err != nil {
		o.fetchFailures = append(o.fetchFailures, time.Now())
	}
}

func (o *recObserver) Applied(_ context.Context, ai feed.ApplyInfo) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.maxAttempt = max(o.maxAttempt, ai.Attempt)
	if ai.Err == nil {
		o.applied += ai.Events
	}
}

func (o *recObserver) failures() []time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]time.Time(nil), o.fetchFailures...)
}

func pullerConfig(env dbtest.Env, consumer string) *feed.PullerConfig {
	return &feed.PullerConfig{Dialect: env.Dialect, Schema: env.Schema, Consumer: consumer, Feed: "orders",
		BatchSize: 64, Wait: 200 * time.Millisecond, IdleInterval: 10 * time.Millisecond,
		RetryBackoffMin: 10 * time.Millisecond, RetryBackoffMax: 100 * time.Millisecond, Logger: quietLogger()}
}

func startPuller(t *testing.T, p *feed.Puller) chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background()) }()
	select {
	case <-p.Running():
	case err := <-done:
		t.Fatalf("Run returned at once: %v", err)
	}
	return done
}

func TestPuller(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		src := newSource(t, env, nil)
		appendEvents(t, src, makeEvents(300, "orders.changed", "k", 1))

		// Run applies everything, then follows new events.
		createApplied(t, env, "applied_main")
		obs := &recObserver{}
		cfg := pullerConfig(env, "main")
		cfg.Observer = obs
		p, err := feed.NewPuller(env.DB, src, cfg, func(ctx context.Context, tx *sql.Tx, ev feed.Event) error {
			return insertApplied(ctx, env, "applied_main", tx, ev)
		})
		require.NoError(t, err)
		done := startPuller(t, p)
		require.ErrorIs(t, p.Run(ctx), feed.ErrAlreadyRunning)
		waitFor(t, 15*time.Second, "300 events applied", func() bool { return countRows(t, env, "applied_main") == 300 })
		appendEvents(t, src, makeEvents(50, "orders.changed", "k", 301))
		waitFor(t, 15*time.Second, "350 events applied", func() bool { return countRows(t, env, "applied_main") == 350 })
		require.NoError(t, p.Close())
		require.NoError(t, <-done)
		require.NoError(t, p.Close())
		all, _ := readAll(t, src, "", 1000)
		requireAppliedInOrder(t, env, "applied_main", all)
		cursor, err := p.Cursor(ctx)
		require.NoError(t, err)
		require.Equal(t, src.Cursor(350), cursor)
		require.Equal(t, 350, obs.applied)

		// A failing handler rolls its page back and is retried; nothing is
		// applied twice (applied has a UNIQUE event id).
		createApplied(t, env, "applied_flaky")
		obs = &recObserver{}
		cfg = pullerConfig(env, "flaky")
		cfg.Observer = obs
		var failures atomic.Int32
		p, err = feed.NewPuller(env.DB, src, cfg, func(ctx context.Context, tx *sql.Tx, ev feed.Event) error {
			if err := insertApplied(ctx, env, "applied_flaky", tx, ev); err != nil {
				return feed.Permanent(err)
			}
			if ev.Position == 100 && failures.Add(1) <= 2 {
				return errors.New("transient failure")
			}
			if ev.Position == 200 && failures.Add(1) <= 4 {
				panic("handler bug")
			}
			return nil
		})
		require.NoError(t, err)
		done = startPuller(t, p)
		waitFor(t, 15*time.Second, "350 events applied", func() bool { return countRows(t, env, "applied_flaky") == 350 })
		require.NoError(t, p.Close())
		require.NoError(t, <-done)
		requireAppliedInOrder(t, env, "applied_flaky", all)
		require.Equal(t, 3, obs.maxAttempt)

		// A permanent error stops Run; the failing page is rolled back.
		createApplied(t, env, "applied_strict")
		cfg = pullerConfig(env, "strict")
		cfg.BatchSize = 4
		p, err = feed.NewPuller(env.DB, src, cfg, func(ctx context.Context, tx *sql.Tx, ev feed.Event) error {
			if err := insertApplied(ctx, env, "applied_strict", tx, ev); err != nil {
				return err
			}
			if ev.Position == 6 {
				return feed.Permanent(errors.New("cannot decode"))
			}
			return nil
		})
		require.NoError(t, err)
		err = p.Run(ctx)
		require.True(t, feed.IsPermanent(err), "%v", err)
		require.ErrorContains(t, err, "cannot decode")
		require.Equal(t, 4, countRows(t, env, "applied_strict"))
		cursor, err = p.Cursor(ctx)
		require.NoError(t, err)
		require.Equal(t, src.Cursor(4), cursor)

		// PullOnce drains and returns.
		createApplied(t, env, "applied_cron")
		p, err = feed.NewPuller(env.DB, src, pullerConfig(env, "cron"), func(ctx context.Context, tx *sql.Tx, ev feed.Event) error {
			return insertApplied(ctx, env, "applied_cron", tx, ev)
		})
		require.NoError(t, err)
		n, err := p.PullOnce(ctx)
		require.NoError(t, err)
		require.Equal(t, 350, n)
		n, err = p.PullOnce(ctx)
		require.NoError(t, err)
		require.Equal(t, 0, n)
		requireAppliedInOrder(t, env, "applied_cron", all)

		// Two pullers of one consumer share its cursor and never apply a page
		// twice (a second insert of an id would stop Run with an error).
		createApplied(t, env, "applied_shared")
		var pullers []*feed.Puller
		var dones []chan error
		for range 2 {
			p, err := feed.NewPuller(env.DB, src, pullerConfig(env, "shared"), func(ctx context.Context, tx *sql.Tx, ev feed.Event) error {
				if err := insertApplied(ctx, env, "applied_shared", tx, ev); err != nil {
					return feed.Permanent(err)
				}
				return nil
			})
			require.NoError(t, err)
			pullers = append(pullers, p)
			dones = append(dones, startPuller(t, p))
		}
		waitFor(t, 15*time.Second, "350 events applied", func() bool { return countRows(t, env, "applied_shared") == 350 })
		for i, p := range pullers {
			require.NoError(t, p.Close())
			require.NoError(t, <-dones[i])
		}
		requireAppliedInOrder(t, env, "applied_shared", all)

		// A cursor from another feed stops Run: the consumer must resync.
		otherSrc := newSource(t, env, &feed.SourceConfig{Name: "payments"})
		p, err = feed.NewPuller(env.DB, src, pullerConfig(env, "lost"), func(context.Context, *sql.Tx, feed.Event) error { return nil })
		require.NoError(t, err)
		tx, err := env.DB.BeginTx(ctx, nil)
		require.NoError(t, err)
		require.NoError(t, p.SetCursorTx(ctx, tx, otherSrc.Cursor(3)))
		require.NoError(t, tx.Commit())
		err = p.Run(ctx)
		require.ErrorIs(t, err, feed.ErrCursorFromFuture)
		_, err = p.PullOnce(ctx)
		require.ErrorIs(t, err, feed.ErrCursorFromFuture)

		// Resync: the empty cursor starts again from the beginning.
		tx, err = env.DB.BeginTx(ctx, nil)
		require.NoError(t, err)
		require.NoError(t, p.SetCursorTx(ctx, tx, ""))
		require.NoError(t, tx.Commit())
		n, err = p.PullOnce(ctx)
		require.NoError(t, err)
		require.Equal(t, 350, n)
	})
}

// An answer that is not the feed's JSON (a proxy's error page) is a
// ServerError that is not a cursor error: a Puller retries it.
func TestClientNonJSONError(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "<html>502 Bad Gateway</html>", http.StatusBadGateway)
	}))
	t.Cleanup(srv.Close)
	client, err := feed.NewHTTPFetcher(srv.URL+"/feed?token=x", nil)
	require.NoError(t, err)
	_, err = client.Read(context.Background(), "v1.abc.1", 10, 0)
	var se *feed.ServerError
	require.ErrorAs(t, err, &se)
	require.Equal(t, http.StatusBadGateway, se.StatusCode)
	require.Empty(t, se.Code)
	require.Contains(t, se.Message, "502 Bad Gateway")
	require.False(t, feed.IsCursorError(err))
}

// The producer goes down (its HTTP server closes); the puller backs off,
// then catches up once the server is back on the same address.
func TestPullerProducerDown(t *testing.T) {
	t.Parallel()
	prod, cons := dbtest.SQLite(t), dbtest.SQLite(t)
	src := newSource(t, prod, nil)
	appendEvents(t, src, makeEvents(100, "t", "k", 1))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	srv := &http.Server{Handler: src.Handler()}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	client, err := feed.NewHTTPFetcher("http://"+addr+"/", nil)
	require.NoError(t, err)
	createApplied(t, cons, "applied")
	obs := &recObserver{}
	cfg := pullerConfig(cons, "billing")
	cfg.RetryBackoffMin, cfg.RetryBackoffMax, cfg.Observer = 20*time.Millisecond, 160*time.Millisecond, obs
	p, err := feed.NewPuller(cons.DB, client, cfg, func(ctx context.Context, tx *sql.Tx, ev feed.Event) error {
		return insertApplied(ctx, cons, "applied", tx, ev)
	})
	require.NoError(t, err)
	done := startPuller(t, p)
	waitFor(t, 10*time.Second, "100 events applied", func() bool { return countRows(t, cons, "applied") == 100 })

	require.NoError(t, srv.Close()) // the producer is down
	downAt := time.Now()
	waitFor(t, 10*time.Second, "6 failed fetches", func() bool { return len(obs.failures()) >= 6 })
	appendEvents(t, src, makeEvents(100, "t", "k", 101))

	var ln2 net.Listener
	waitFor(t, 10*time.Second, "the address to be free again", func() bool {
		ln2, err = net.Listen("tcp", addr)
		return err == nil
	})
	srv2 := &http.Server{Handler: src.Handler()}
	go func() { _ = srv2.Serve(ln2) }()
	t.Cleanup(func() { _ = srv2.Close() })
	downFor := time.Since(downAt)

	waitFor(t, 10*time.Second, "200 events applied", func() bool { return countRows(t, cons, "applied") == 200 })
	require.NoError(t, p.Close())
	require.NoError(t, <-done)
	all, _ := readAll(t, src, "", 1000)
	requireAppliedInOrder(t, cons, "applied", all)

	// Backoff: the gaps between failed fetches grow from 20 ms to the cap of
	// 160 ms (±10 % jitter), so there were few attempts.
	fails := obs.failures()
	require.GreaterOrEqual(t, len(fails), 6)
	var gaps []time.Duration
	for i := 1; i < len(fails); i++ {
		gaps = append(gaps, fails[i].Sub(fails[i-1]))
	}
	t.Logf("down for %s: %d failed fetches, gaps %v", downFor, len(fails), gaps)
	require.GreaterOrEqual(t, gaps[len(gaps)-1], 140*time.Millisecond, "the backoff grew to its cap")
	require.Less(t, gaps[0], 100*time.Millisecond, "the first retry is quick")
	require.LessOrEqual(t, len(fails), int(downFor/(20*time.Millisecond))+2, "no tight retry loop")
}

// ---------------------------------------------------------------------------
// crash: kill -9 of a pull consumer process

type pullChildSpec struct {
	FeedURL     string
	DBURL       string
	Schema      string
	Consumer    string
	HandlerWait time.Duration
}

// runPullChild is the consumer process: it pulls the feed over HTTP and
// applies each event into its own database, one row per event in a table
// with a UNIQUE event id, until it is killed or gets SIGTERM. A second
// apply of an event fails the insert; the handler makes that permanent and
// the process exits with status 3.
func runPullChild(raw string) int {
	var spec pullChildSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "bad child spec:", err)
		return 2
	}
	db, dialect, err := accord.OpenDB(spec.DBURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer db.Close()
	client, err := feed.NewHTTPFetcher(spec.FeedURL, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	env := dbtest.Env{DB: db, Dialect: dialect, Schema: spec.Schema}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := feed.NewPuller(db, client, &feed.PullerConfig{Dialect: dialect, Schema: spec.Schema, Consumer: spec.Consumer, Feed: "orders",
		BatchSize: 25, Wait: 2 * time.Second, RetryBackoffMin: 10 * time.Millisecond, RetryBackoffMax: 200 * time.Millisecond, Logger: logger},
		func(ctx context.Context, tx *sql.Tx, ev feed.Event) error {
			time.Sleep(spec.HandlerWait) // keep the process busy mid-page when it is killed
			if err := insertApplied(ctx, env, "applied", tx, ev); err != nil {
				var coded interface{ SQLState() string }
				if errors.As(err, &coded) && coded.SQLState() == "23505" {
					return feed.Permanent(fmt.Errorf("event %s applied twice: %w", ev.ID, err))
				}
				return err
			}
			return nil
		})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := p.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "puller stopped:", err)
		return 3
	}
	return 0
}

type pullChild struct {
	cmd    *exec.Cmd
	out    *bytes.Buffer
	exited chan struct{}
	err    error
}

func startPullChild(t *testing.T, spec pullChildSpec) *pullChild {
	t.Helper()
	raw, err := json.Marshal(spec)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), pullChildEnv+"="+string(raw))
	c := &pullChild{cmd: cmd, out: &bytes.Buffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.out, c.out
	require.NoError(t, cmd.Start())
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.exited
	})
	return c
}

// waitApplied waits until the consumer applied at least n events, failing
// if the child exits first.
func (c *pullChild) waitApplied(t *testing.T, env dbtest.Env, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for countRows(t, env, "applied") < n {
		select {
		case <-c.exited:
			t.Fatalf("consumer process exited (%v) before applying %d events:\n%s", c.err, n, c.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer applied %d of %d events in 20 s:\n%s", countRows(t, env, "applied"), n, c.out)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A consumer process pulling over HTTP is killed with SIGKILL twice while it
// applies pages; each restart resumes from the stored cursor. Right after
// each kill the stored cursor matches the rows applied exactly (the page and
// the cursor commit together), and in the end every event was applied once,
// in feed order, with no gap.
func TestPullerKillDashNine(t *testing.T) {
	t.Parallel()
	prod, cons := dbtest.PostgresSchema(t), dbtest.PostgresSchema(t)
	ctx := context.Background()
	src := newSource(t, prod, nil)
	srv := httptest.NewServer(src.Handler())
	t.Cleanup(srv.Close)
	for range 3 {
		appendEvents(t, src, makeEvents(500, "orders.changed", "k", 1))
	}
	createApplied(t, cons, "applied")
	spec := pullChildSpec{FeedURL: srv.URL, DBURL: cons.URL, Schema: cons.Schema, Consumer: "billing", HandlerWait: 300 * time.Microsecond}

	storedPosition := func() int64 {
		var c string
		err := cons.DB.QueryRow(`SELECT cursor_value FROM `+table(cons, "accord_feed_cursor")+` WHERE consumer = $1 AND feed = $2`, "billing", "orders").Scan(&c)
		if errors.Is(err, sql.ErrNoRows) {
			return 0
		}
		require.NoError(t, err)
		pos, err := src.ParseCursor(ctx, c)
		require.NoError(t, err)
		return pos
	}

	for _, killAt := range []int{300, 900} {
		child := startPullChild(t, spec)
		child.waitApplied(t, cons, killAt)
		require.NoError(t, child.cmd.Process.Signal(syscall.SIGKILL))
		<-child.exited
		applied := countRows(t, cons, "applied")
		require.Equal(t, int64(applied), storedPosition(), "cursor and applied rows commit together")
		t.Logf("killed at %d applied events", applied)
	}

	child := startPullChild(t, spec)
	appendEvents(t, src, makeEvents(300, "orders.changed", "k", 501)) // live tail
	child.waitApplied(t, cons, 1800)
	require.NoError(t, child.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-child.exited:
		require.NoError(t, child.err, "consumer output:\n%s", child.out)
	case <-time.After(10 * time.Second):
		t.Fatal("consumer did not stop on SIGTERM")
	}
	all, _ := readAll(t, src, "", 1000)
	require.Len(t, all, 1800)
	requireAppliedInOrder(t, cons, "applied", all)
	require.Equal(t, int64(1800), storedPosition())
}

// A position that is committed but not yet visible to a read (InnoDB can
// show a later writer's rows first) is a hole in the dense positions: Read
// stops before it instead of skipping it, and does not mistake it for an
// expired cursor.
func TestReadStopsAtHole(t *testing.T) {
	t.Parallel()
	env := dbtest.SQLite(t)
	ctx := context.Background()
	src := newSource(t, env, nil)
	insert := func(pos int64) {
		_, err := env.DB.ExecContext(ctx, "INSERT INTO accord_feed (position, id, topic, payload, created_at) VALUES (?, ?, 't', x'00', 0)",
			pos, outbox.NewID())
		require.NoError(t, err)
	}
	positions := func(p feed.Page) []int64 {
		var out []int64
		for _, ev := range p.Events {
			out = append(out, ev.Position)
		}
		return out
	}
	insert(1)
	insert(2)
	insert(4) // 3 is "not visible yet"

	page, err := src.Read(ctx, "", 10, 0)
	require.NoError(t, err)
	require.Equal(t, []int64{1, 2}, positions(page))

	page, err = src.Read(ctx, page.Next, 10, 0)
	require.NoError(t, err, "a hole right after the cursor is not an expired cursor")
	require.Empty(t, page.Events)
	require.Equal(t, src.Cursor(2), page.Next)

	insert(3)
	page, err = src.Read(ctx, page.Next, 10, 0)
	require.NoError(t, err)
	require.Equal(t, []int64{3, 4}, positions(page))
}
