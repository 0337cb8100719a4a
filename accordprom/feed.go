package accordprom

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/accordgo/accord/feed"
)

// FeedMetrics is a [feed.Observer] that records what feed pullers do as
// Prometheus metrics. Create it with [NewFeedMetrics] and set it as
// feed.PullerConfig.Observer; one FeedMetrics serves any number of pullers
// (the consumer and feed labels tell them apart).
type FeedMetrics struct {
	feed.ObserverDefaults

	fetches       *prometheus.CounterVec   // {consumer, feed, outcome}
	fetchedEvents *prometheus.CounterVec   // {consumer, feed}
	fetchDuration *prometheus.HistogramVec // {consumer, feed}
	fetchFailures *prometheus.GaugeVec     // {consumer, feed}
	appliedEvents *prometheus.CounterVec   // {consumer, feed}
	applyErrors   *prometheus.CounterVec   // {consumer, feed}
	applyDuration *prometheus.HistogramVec // {consumer, feed}
	lag           *prometheus.GaugeVec     // {consumer, feed}
	lastApplied   *prometheus.GaugeVec     // {consumer, feed}
}

// NewFeedMetrics creates the feed puller metrics and registers them with
// reg (prometheus.DefaultRegisterer when nil). Every metric has the labels
// consumer and feed (feed.PullerConfig.Consumer and Feed):
//
//   - accord_feed_fetches_total{outcome}: fetches, by outcome (ok or
//     error);
//   - accord_feed_fetched_events_total: events fetched;
//   - accord_feed_fetch_duration_seconds: duration of fetches, long polling
//     included;
//   - accord_feed_fetch_consecutive_failures: failed fetches in a row (0
//     after a success): the producer is down or unreachable while it grows;
//   - accord_feed_applied_events_total: events applied (in committed pages);
//   - accord_feed_apply_errors_total: attempts to apply a page that failed
//     (the page is retried, unless the handler's error is permanent);
//   - accord_feed_apply_duration_seconds: duration of each attempt to apply
//     a page;
//   - accord_feed_lag_seconds: at the last committed page, the time from
//     its last event's creation at the producer to its commit at the
//     consumer;
//   - accord_feed_last_applied_event_timestamp_seconds: creation time (Unix
//     seconds) of the last event applied, so that time() minus it is how
//     far behind the producer's clock the consumer is, idle time included.
//
// It fails when opts are invalid (the error wraps ErrInvalidOpts) or the
// metrics are registered already.
func NewFeedMetrics(reg prometheus.Registerer, opts *Opts) (*FeedMetrics, error) {
	opts = opts.WithDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	labels := []string{"consumer", "feed"}
	counter := func(name, help string, extra ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: "feed", Name: name, Help: help},
			append(labels[:len(labels):len(labels)], extra...))
	}
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Subsystem: "feed", Name: name, Help: help}, labels)
	}
	histogram := func(name, help string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Subsystem: "feed", Name: name, Help: help,
			Buckets: opts.DurationBuckets}, labels)
	}
	m := &FeedMetrics{
		fetches:       counter("fetches_total", "Fetches of feed pages, by outcome (ok or error).", "outcome"),
		fetchedEvents: counter("fetched_events_total", "Events fetched from the feed."),
		fetchDuration: histogram("fetch_duration_seconds", "Duration of fetches, long polling included."),
		fetchFailures: gauge("fetch_consecutive_failures", "Failed fetches in a row (0 after a successful one)."),
		appliedEvents: counter("applied_events_total", "Events applied in committed pages."),
		applyErrors:   counter("apply_errors_total", "Failed attempts to apply a page (retried unless the error is permanent)."),
		applyDuration: histogram("apply_duration_seconds", "Duration of each attempt to apply a page."),
		lag:           gauge("lag_seconds", "At the last committed page: time from its last event's creation to the commit."),
		lastApplied:   gauge("last_applied_event_timestamp_seconds", "Creation time (Unix seconds) of the last event applied."),
	}
	if err := register(reg, m.fetches, m.fetchedEvents, m.fetchDuration, m.fetchFailures,
		m.appliedEvents, m.applyErrors, m.applyDuration, m.lag, m.lastApplied); err != nil {
		return nil, err
	}
	return m, nil
}

// Fetched records a fetch.
func (m *FeedMetrics) Fetched(_ context.Context, info feed.FetchInfo) {
	outcome := "ok"
	if info.Err != nil {
		outcome = "error"
	}
	m.fetches.WithLabelValues(info.Consumer, info.Feed, outcome).Inc()
	// Error counters exist from the first fetch on, at 0, so that rate()
	// and increase() see their first error.
	m.fetches.WithLabelValues(info.Consumer, info.Feed, "error")
	m.applyErrors.WithLabelValues(info.Consumer, info.Feed)
	m.fetchDuration.WithLabelValues(info.Consumer, info.Feed).Observe(info.Duration.Seconds())
	m.fetchFailures.WithLabelValues(info.Consumer, info.Feed).Set(float64(info.Failures))
	if info.Err == nil {
		m.fetchedEvents.WithLabelValues(info.Consumer, info.Feed).Add(float64(info.Events))
	}
}

// Applied records an attempt to apply a page.
func (m *FeedMetrics) Applied(_ context.Context, info feed.ApplyInfo) {
	m.applyDuration.WithLabelValues(info.Consumer, info.Feed).Observe(info.Duration.Seconds())
	if info.Err != nil {
		m.applyErrors.WithLabelValues(info.Consumer, info.Feed).Inc()
		return
	}
	m.appliedEvents.WithLabelValues(info.Consumer, info.Feed).Add(float64(info.Events))
	if info.Events > 0 && !info.LastCreatedAt.IsZero() {
		m.lag.WithLabelValues(info.Consumer, info.Feed).Set(max(time.Since(info.LastCreatedAt), 0).Seconds())
		m.lastApplied.WithLabelValues(info.Consumer, info.Feed).Set(float64(info.LastCreatedAt.UnixNano()) / 1e9)
	}
}
