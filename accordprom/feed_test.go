package accordprom_test

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/accordprom"
	"github.com/accordgo/accord/feed"
	"github.com/accordgo/accord/internal/dbtest"
)

// failingFetcher is a feed whose producer cannot be reached.
type failingFetcher struct{}

func (failingFetcher) Read(context.Context, string, int, time.Duration) (feed.Page, error) {
	return feed.Page{}, errors.New("connection refused")
}

// Pullers on SQLite: fetched and applied events, a failing feed and a
// failing handler, and the consumer's lag.
func TestFeedMetrics(t *testing.T) {
	t.Parallel()
	producer, consumer := dbtest.SQLite(t), dbtest.SQLite(t)
	ctx := context.Background()
	src, err := feed.NewSource(producer.DB, &feed.SourceConfig{Dialect: accord.SQLite, Name: "orders"})
	require.NoError(t, err)
	before := time.Now()
	for _, key := range []string{"order-1", "order-2", "order-3"} {
		_, err := src.Append(ctx, feed.Event{Topic: "orders.placed", Key: key, Payload: []byte("{}")})
		require.NoError(t, err)
	}

	reg := prometheus.NewRegistry()
	m, err := accordprom.NewFeedMetrics(reg, nil)
	require.NoError(t, err)
	newPuller := func(name string, f feed.Fetcher, h feed.HandlerFunc) *feed.Puller {
		p, err := feed.NewPuller(consumer.DB, f, &feed.PullerConfig{Dialect: accord.SQLite, Consumer: name, Feed: "orders",
			Observer: m, Logger: slog.New(slog.DiscardHandler)}, h)
		require.NoError(t, err)
		return p
	}
	ok := func(context.Context, *sql.Tx, feed.Event) error { return nil }

	n, err := newPuller("shipping", src, ok).PullOnce(ctx)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	_, err = newPuller("billing", src, func(context.Context, *sql.Tx, feed.Event) error {
		return feed.Permanent(errors.New("cannot bill"))
	}).PullOnce(ctx)
	require.Error(t, err)
	_, err = newPuller("audit", failingFetcher{}, ok).PullOnce(ctx)
	require.ErrorContains(t, err, "connection refused")

	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP accord_feed_applied_events_total Events applied in committed pages.
# TYPE accord_feed_applied_events_total counter
accord_feed_applied_events_total{consumer="shipping",feed="orders"} 3
# HELP accord_feed_apply_errors_total Failed attempts to apply a page (retried unless the error is permanent).
# TYPE accord_feed_apply_errors_total counter
accord_feed_apply_errors_total{consumer="audit",feed="orders"} 0
accord_feed_apply_errors_total{consumer="billing",feed="orders"} 1
accord_feed_apply_errors_total{consumer="shipping",feed="orders"} 0
# HELP accord_feed_fetch_consecutive_failures Failed fetches in a row (0 after a successful one).
# TYPE accord_feed_fetch_consecutive_failures gauge
accord_feed_fetch_consecutive_failures{consumer="audit",feed="orders"} 1
accord_feed_fetch_consecutive_failures{consumer="billing",feed="orders"} 0
accord_feed_fetch_consecutive_failures{consumer="shipping",feed="orders"} 0
# HELP accord_feed_fetched_events_total Events fetched from the feed.
# TYPE accord_feed_fetched_events_total counter
accord_feed_fetched_events_total{consumer="billing",feed="orders"} 3
accord_feed_fetched_events_total{consumer="shipping",feed="orders"} 3
# HELP accord_feed_fetches_total Fetches of feed pages, by outcome (ok or error).
# TYPE accord_feed_fetches_total counter
accord_feed_fetches_total{consumer="audit",feed="orders",outcome="error"} 1
accord_feed_fetches_total{consumer="billing",feed="orders",outcome="error"} 0
accord_feed_fetches_total{consumer="billing",feed="orders",outcome="ok"} 1
accord_feed_fetches_total{consumer="shipping",feed="orders",outcome="error"} 0
accord_feed_fetches_total{consumer="shipping",feed="orders",outcome="ok"} 1
`), "accord_feed_applied_events_total", "accord_feed_apply_errors_total", "accord_feed_fetch_consecutive_failures",
		"accord_feed_fetched_events_total", "accord_feed_fetches_total"))

	require.Equal(t, 1.0, value(t, reg, "accord_feed_fetch_duration_seconds", "consumer", "shipping", "feed", "orders"))
	require.Equal(t, 1.0, value(t, reg, "accord_feed_apply_duration_seconds", "consumer", "shipping", "feed", "orders"))
	require.Equal(t, 1.0, value(t, reg, "accord_feed_apply_duration_seconds", "consumer", "billing", "feed", "orders"))
	lag := value(t, reg, "accord_feed_lag_seconds", "consumer", "shipping", "feed", "orders")
	require.GreaterOrEqual(t, lag, 0.0)
	require.Less(t, lag, time.Since(before).Seconds()+1)
	last := value(t, reg, "accord_feed_last_applied_event_timestamp_seconds", "consumer", "shipping", "feed", "orders")
	require.InDelta(t, float64(before.UnixNano())/1e9, last, time.Since(before).Seconds()+1)
	_, found := series(t, reg, "accord_feed_lag_seconds", "consumer", "billing", "feed", "orders")
	require.False(t, found, "no lag before a page is committed")

	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}
