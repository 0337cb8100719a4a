package accordprom_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/accordprom"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// writeEvents commits n events of topic in one transaction, each with its
// own partition key.
func writeEvents(t *testing.T, env dbtest.Env, topic string, n int) {
	t.Helper()
	ctx := context.Background()
	ob, err := outbox.New(&outbox.Config{Dialect: env.Dialect, Schema: env.Schema})
	require.NoError(t, err)
	tx, err := env.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	for i := range n {
		require.NoError(t, ob.WriteTx(ctx, tx, outbox.Event{Topic: topic, Key: topic + "-" + string(rune('a'+i)), Message: outbox.NewMessage([]byte("{}"))}))
	}
	require.NoError(t, tx.Commit())
}

// runRelay runs r until the test ends.
func runRelay(t *testing.T, r *relay.Relay) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- r.Run(context.Background()) }()
	t.Cleanup(func() {
		require.NoError(t, r.Close())
		require.NoError(t, <-errc)
	})
	select {
	case <-r.Running():
	case err := <-errc:
		require.FailNow(t, "relay stopped at start", "%v", err)
	case <-time.After(testTimeout):
		require.FailNow(t, "relay did not start")
	}
}

// A relay on PostgreSQL with RelayMetrics as its observer: the backlog
// gauges show the rows before Run, the counters and histograms move while
// it publishes (one topic fails once), and the backlog is 0 once drained.
func TestRelayMetrics(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	writeEvents(t, env, "orders.placed", 3)
	writeEvents(t, env, "orders.paid", 2)

	reg := prometheus.NewRegistry()
	m, err := accordprom.NewRelayMetrics(reg, nil)
	require.NoError(t, err)
	sink := newMemSink(map[string]int{"orders.paid": 1})
	r, err := relay.New(env.DB, sink, &relay.Config{
		Dialect: env.Dialect, Schema: env.Schema, Observer: m,
		RetryBackoffMin: 5 * time.Millisecond, RetryBackoffMax: 20 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	require.NoError(t, m.Track(r))
	require.ErrorContains(t, m.Track(r), "more than once")

	// Before Run: the table's five rows, nothing in flight, nothing counted.
	require.Equal(t, 5.0, value(t, reg, "accord_relay_backlog_rows"))
	require.Positive(t, value(t, reg, "accord_relay_oldest_pending_age_seconds"))
	require.Zero(t, value(t, reg, "accord_relay_in_flight_rows"))
	require.Zero(t, value(t, reg, "accord_relay_deleted_rows_total"))
	require.Zero(t, value(t, reg, "accord_relay_publish_retries_total"))
	_, ok := series(t, reg, "accord_relay_published_messages_total", "topic", "orders.placed")
	require.False(t, ok)

	runRelay(t, r)
	eventually(t, "five rows deleted", func() bool {
		return value(t, reg, "accord_relay_deleted_rows_total") == 5 && value(t, reg, "accord_relay_in_flight_rows") == 0
	})
	require.Equal(t, 5, sink.distinct())

	require.Equal(t, 3.0, value(t, reg, "accord_relay_published_messages_total", "topic", "orders.placed"))
	require.Equal(t, 2.0, value(t, reg, "accord_relay_published_messages_total", "topic", "orders.paid"))
	require.Equal(t, 1.0, value(t, reg, "accord_relay_publish_errors_total", "topic", "orders.paid"))
	require.Zero(t, value(t, reg, "accord_relay_publish_errors_total", "topic", "orders.placed"))
	require.Equal(t, 1.0, value(t, reg, "accord_relay_publish_retries_total"))
	require.Equal(t, 1.0, value(t, reg, "accord_relay_publish_duration_seconds", "outcome", "error"))
	require.GreaterOrEqual(t, value(t, reg, "accord_relay_publish_duration_seconds", "outcome", "ok"), 2.0) // two topics at least
	require.Equal(t, 5.0, value(t, reg, "accord_relay_write_to_publish_seconds"))
	require.Positive(t, sum(t, reg, "accord_relay_write_to_publish_seconds"))
	reads := value(t, reg, "accord_relay_read_rows", "kind", "sweep") + value(t, reg, "accord_relay_read_rows", "kind", "forward")
	require.GreaterOrEqual(t, reads, 1.0)
	readRows := sum(t, reg, "accord_relay_read_rows", "kind", "sweep") + sum(t, reg, "accord_relay_read_rows", "kind", "forward")
	require.GreaterOrEqual(t, readRows, 5.0)
	require.GreaterOrEqual(t, value(t, reg, "accord_relay_read_duration_seconds", "kind", "sweep")+
		value(t, reg, "accord_relay_read_duration_seconds", "kind", "forward"), 1.0)
	require.GreaterOrEqual(t, value(t, reg, "accord_relay_delete_duration_seconds"), 1.0)

	// Drained: the backlog is 0 and so is its age.
	require.Zero(t, value(t, reg, "accord_relay_backlog_rows"))
	require.Zero(t, value(t, reg, "accord_relay_oldest_pending_age_seconds"))
	require.Zero(t, value(t, reg, "accord_relay_backlog_errors_total"))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP accord_relay_backlog_rows Rows in the outbox table not yet published and deleted, counted at scrape time.
# TYPE accord_relay_backlog_rows gauge
accord_relay_backlog_rows 0
# HELP accord_relay_deleted_rows_total Published rows deleted from the outbox table.
# TYPE accord_relay_deleted_rows_total counter
accord_relay_deleted_rows_total 5
# HELP accord_relay_published_messages_total Messages the broker accepted.
# TYPE accord_relay_published_messages_total counter
accord_relay_published_messages_total{topic="orders.paid"} 2
accord_relay_published_messages_total{topic="orders.placed"} 3
`), "accord_relay_backlog_rows", "accord_relay_deleted_rows_total", "accord_relay_published_messages_total"))

	// The metrics pass the Prometheus linter.
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}

// Without the topic label, the counters have one series each, present
// (at 0) from the start.
func TestRelayMetrics_DisableTopicLabel(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m, err := accordprom.NewRelayMetrics(reg, &accordprom.RelayMetricsOpts{DisableTopicLabel: true})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP accord_relay_publish_errors_total Publish calls the broker failed (each is retried with backoff).
# TYPE accord_relay_publish_errors_total counter
accord_relay_publish_errors_total 0
# HELP accord_relay_published_messages_total Messages the broker accepted.
# TYPE accord_relay_published_messages_total counter
accord_relay_published_messages_total 0
`), "accord_relay_published_messages_total", "accord_relay_publish_errors_total"))

	created := time.Now().Add(-time.Second)
	m.PublishFailed(ctx, relay.Publication{Topic: "tenant-1.orders", Messages: 2, Attempt: 1, Duration: time.Millisecond})
	m.Published(ctx, relay.Publication{Topic: "tenant-1.orders", Messages: 2, Attempt: 2, Duration: time.Millisecond,
		CreatedAt: []time.Time{created, created}})
	m.Published(ctx, relay.Publication{Topic: "tenant-2.orders", Messages: 1, Attempt: 1, Duration: time.Millisecond,
		CreatedAt: []time.Time{time.Now().Add(time.Hour)}}) // a clock ahead of ours counts as 0
	m.Read(ctx, 3, true, time.Millisecond)
	m.Deleted(ctx, 3, time.Millisecond)

	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP accord_relay_deleted_rows_total Published rows deleted from the outbox table.
# TYPE accord_relay_deleted_rows_total counter
accord_relay_deleted_rows_total 3
# HELP accord_relay_publish_errors_total Publish calls the broker failed (each is retried with backoff).
# TYPE accord_relay_publish_errors_total counter
accord_relay_publish_errors_total 1
# HELP accord_relay_publish_retries_total Publish calls that retried a failed one, successful or not.
# TYPE accord_relay_publish_retries_total counter
accord_relay_publish_retries_total 1
# HELP accord_relay_published_messages_total Messages the broker accepted.
# TYPE accord_relay_published_messages_total counter
accord_relay_published_messages_total 3
`), "accord_relay_published_messages_total", "accord_relay_publish_errors_total", "accord_relay_publish_retries_total",
		"accord_relay_deleted_rows_total"))
	require.Equal(t, 3.0, value(t, reg, "accord_relay_write_to_publish_seconds"))
	s := sum(t, reg, "accord_relay_write_to_publish_seconds")
	require.GreaterOrEqual(t, s, 2.0)
	require.Less(t, s, 2.0+testTimeout.Seconds())
	require.Equal(t, 1.0, value(t, reg, "accord_relay_read_rows", "kind", "sweep"))
	require.Zero(t, value(t, reg, "accord_relay_read_rows", "kind", "forward"))
}

// A backlog query that fails leaves the gauges out of the scrape, counts
// the failure and does not fail the scrape.
func TestRelayMetrics_BacklogError(t *testing.T) {
	t.Parallel()
	db, dialect, err := accord.OpenDB("sqlite://" + filepath.Join(t.TempDir(), "empty.db")) // not migrated
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	reg := prometheus.NewRegistry()
	m, err := accordprom.NewRelayMetrics(reg, &accordprom.RelayMetricsOpts{BacklogTimeout: time.Second})
	require.NoError(t, err)
	r, err := relay.New(db, newMemSink(nil), &relay.Config{Dialect: dialect, Observer: m})
	require.NoError(t, err)
	require.NoError(t, m.Track(r))

	for scrape := 1; scrape <= 2; scrape++ {
		snap := gatherOnce(t, reg)
		require.Equal(t, float64(scrape), value(t, snap, "accord_relay_backlog_errors_total"))
		_, ok := series(t, snap, "accord_relay_backlog_rows")
		require.False(t, ok)
		_, ok = series(t, snap, "accord_relay_oldest_pending_age_seconds")
		require.False(t, ok)
		require.Zero(t, value(t, snap, "accord_relay_in_flight_rows"))
	}
}

func TestNewRelayMetrics_Errors(t *testing.T) {
	t.Parallel()

	t.Run("InvalidOpts", func(t *testing.T) {
		t.Parallel()
		_, err := accordprom.NewRelayMetrics(prometheus.NewRegistry(), &accordprom.RelayMetricsOpts{
			DurationBuckets: []float64{1, 0.5}, LatencyBuckets: []float64{1, 1}, BacklogTimeout: -time.Second,
		})
		require.ErrorIs(t, err, accordprom.ErrInvalidOpts)
		require.ErrorContains(t, err, "DurationBuckets [1 0.5]: must be strictly increasing")
		require.ErrorContains(t, err, "LatencyBuckets [1 1]: must be strictly increasing")
		require.ErrorContains(t, err, "BacklogTimeout -1s: must not be negative")
	})

	t.Run("RegisteredTwice", func(t *testing.T) {
		t.Parallel()
		reg := prometheus.NewRegistry()
		_, err := accordprom.NewRelayMetrics(reg, nil)
		require.NoError(t, err)
		_, err = accordprom.NewRelayMetrics(reg, nil)
		var are prometheus.AlreadyRegisteredError
		require.ErrorAs(t, err, &are)

		// With a label that tells them apart, two sets fit in one registry.
		reg = prometheus.NewRegistry()
		for _, name := range []string{"billing", "shipping"} {
			_, err = accordprom.NewRelayMetrics(prometheus.WrapRegistererWith(prometheus.Labels{"outbox": name}, reg), nil)
			require.NoError(t, err)
		}
		require.Equal(t, 0.0, value(t, reg, "accord_relay_deleted_rows_total", "outbox", "shipping"))
	})

	t.Run("TrackNil", func(t *testing.T) {
		t.Parallel()
		m, err := accordprom.NewRelayMetrics(prometheus.NewRegistry(), nil)
		require.NoError(t, err)
		require.ErrorContains(t, m.Track(nil), "relay is nil")
	})
}
