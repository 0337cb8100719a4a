package accordprom

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/accordgo/accord/relay"
)

// BacklogTimeoutDefault bounds the backlog query of a scrape when
// RelayMetricsOpts.BacklogTimeout is zero.
const BacklogTimeoutDefault = 2 * time.Second

// readRowsBuckets are the buckets of accord_relay_read_rows (the relay
// reads at most relay.BatchSizeMax rows at a time).
var readRowsBuckets = []float64{0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000}

// RelayMetricsOpts are the options of [NewRelayMetrics]. A nil
// *RelayMetricsOpts means all defaults.
type RelayMetricsOpts struct {
	// DurationBuckets are the upper bounds, in seconds and strictly
	// increasing, of the buckets of accord_relay_publish_duration_seconds,
	// accord_relay_read_duration_seconds and
	// accord_relay_delete_duration_seconds. Defaults to
	// DurationBucketsDefault.
	DurationBuckets []float64

	// LatencyBuckets are the upper bounds, in seconds and strictly
	// increasing, of the buckets of accord_relay_write_to_publish_seconds.
	// Defaults to LatencyBucketsDefault.
	LatencyBuckets []float64

	// DisableTopicLabel removes the topic label from
	// accord_relay_published_messages_total and
	// accord_relay_publish_errors_total, which then count all topics in one
	// series each. Every topic is a series of each counter, for as long as
	// the process runs: set it when topics are many or unbounded (a topic
	// per tenant or per entity). Defaults to false: counters are per topic.
	DisableTopicLabel bool

	// BacklogTimeout bounds the query that [RelayMetrics.Track] runs at
	// each scrape to count the outbox rows. A scrape whose query fails or
	// times out reports no backlog gauges and increments
	// accord_relay_backlog_errors_total. Keep it below the scrape timeout.
	// Defaults to BacklogTimeoutDefault (2 s).
	BacklogTimeout time.Duration
}

// WithDefaults returns a copy of o with defaults filled in.
func (o *RelayMetricsOpts) WithDefaults() *RelayMetricsOpts {
	out := RelayMetricsOpts{}
	if o != nil {
		out = *o
	}
	if len(out.DurationBuckets) == 0 {
		out.DurationBuckets = DurationBucketsDefault
	}
	if len(out.LatencyBuckets) == 0 {
		out.LatencyBuckets = LatencyBucketsDefault
	}
	if out.BacklogTimeout == 0 {
		out.BacklogTimeout = BacklogTimeoutDefault
	}
	return &out
}

func (o *RelayMetricsOpts) validate() error {
	var errs []error
	if err := checkBuckets("DurationBuckets", o.DurationBuckets); err != nil {
		errs = append(errs, err)
	}
	if err := checkBuckets("LatencyBuckets", o.LatencyBuckets); err != nil {
		errs = append(errs, err)
	}
	if o.BacklogTimeout < 0 {
		errs = append(errs, fmt.Errorf("BacklogTimeout %s: must not be negative", o.BacklogTimeout))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidOpts, errors.Join(errs...))
	}
	return nil
}

// RelayMetrics is a [relay.Observer] that records what a relay does as
// Prometheus metrics. Create it with [NewRelayMetrics], set it as
// relay.Config.Observer, and call [RelayMetrics.Track] with the relay for
// the backlog gauges. One RelayMetrics observes one relay.
type RelayMetrics struct {
	relay.ObserverDefaults

	reg  prometheus.Registerer
	opts *RelayMetricsOpts

	published       *prometheus.CounterVec   // {topic} or {}
	publishErrors   *prometheus.CounterVec   // {topic} or {}
	publishRetries  prometheus.Counter       //
	publishDuration *prometheus.HistogramVec // {outcome}
	writeToPublish  prometheus.Histogram     //
	readRows        *prometheus.HistogramVec // {kind}
	readDuration    *prometheus.HistogramVec // {kind}
	deletedRows     prometheus.Counter       //
	deleteDuration  prometheus.Histogram     //
	deadLettered    *prometheus.CounterVec   // {topic} or {}
	leasesHeld      prometheus.Gauge         //
	instances       prometheus.Gauge         //

	mu      sync.Mutex
	tracked bool
}

// NewRelayMetrics creates the relay's metrics and registers them with reg
// (prometheus.DefaultRegisterer when nil). It fails when opts are invalid
// (the error wraps ErrInvalidOpts) or when a metric of the same name is
// registered already (a second RelayMetrics on the same registry: see the
// package documentation).
func NewRelayMetrics(reg prometheus.Registerer, opts *RelayMetricsOpts) (*RelayMetrics, error) {
	opts = opts.WithDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	var topic []string
	if !opts.DisableTopicLabel {
		topic = []string{"topic"}
	}
	m := &RelayMetrics{
		reg:  reg,
		opts: opts,
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "relay", Name: "published_messages_total",
			Help: "Messages the broker accepted.",
		}, topic),
		publishErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "relay", Name: "publish_errors_total",
			Help: "Publish calls the broker failed (each is retried with backoff).",
		}, topic),
		publishRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "relay", Name: "publish_retries_total",
			Help: "Publish calls that retried a failed one, successful or not.",
		}),
		publishDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "relay", Name: "publish_duration_seconds",
			Help:    "Duration of publish calls to the broker, by outcome (ok or error).",
			Buckets: opts.DurationBuckets,
		}, []string{"outcome"}),
		writeToPublish: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "relay", Name: "write_to_publish_seconds",
			Help:    "Time from an event's creation in the outbox to the broker accepting it, per message.",
			Buckets: opts.LatencyBuckets,
		}),
		readRows: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "relay", Name: "read_rows",
			Help:    "Rows returned by each read of the outbox table, by kind (sweep: the whole table; forward: after the cursor).",
			Buckets: readRowsBuckets,
		}, []string{"kind"}),
		readDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "relay", Name: "read_duration_seconds",
			Help:    "Duration of each read of the outbox table, by kind (sweep or forward).",
			Buckets: opts.DurationBuckets,
		}, []string{"kind"}),
		deletedRows: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "relay", Name: "deleted_rows_total",
			Help: "Published rows deleted from the outbox table.",
		}),
		deleteDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "relay", Name: "delete_duration_seconds",
			Help:    "Duration of each delete of published rows.",
			Buckets: opts.DurationBuckets,
		}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "relay", Name: "dead_lettered_rows_total",
			Help: "Rows moved to the dead letters after DeadLetterAfter failed publish attempts.",
		}, topic),
		leasesHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "relay", Name: "leases_held",
			Help: "Lease slots (of 64) this relay instance holds: it publishes the rows of those slots only.",
		}),
		instances: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "relay", Name: "live_instances",
			Help: "Relay instances with a live heartbeat on this outbox, as this instance last saw them.",
		}),
	}
	for _, o := range []string{"ok", "error"} {
		m.publishDuration.WithLabelValues(o)
	}
	for _, k := range []string{"sweep", "forward"} {
		m.readRows.WithLabelValues(k)
		m.readDuration.WithLabelValues(k)
	}
	if opts.DisableTopicLabel {
		m.published.WithLabelValues()
		m.publishErrors.WithLabelValues()
		m.deadLettered.WithLabelValues()
	}
	if err := register(reg, m.published, m.publishErrors, m.publishRetries, m.publishDuration, m.writeToPublish,
		m.readRows, m.readDuration, m.deletedRows, m.deleteDuration, m.deadLettered, m.leasesHeld, m.instances); err != nil {
		return nil, err
	}
	return m, nil
}

// counter returns v's counter for topic, or its only counter when the topic
// label is disabled.
func (m *RelayMetrics) counter(v *prometheus.CounterVec, topic string) prometheus.Counter {
	if m.opts.DisableTopicLabel {
		return v.WithLabelValues()
	}
	return v.WithLabelValues(topic)
}

// Published counts the messages of a successful publish call, observes the
// call's duration and, per message, the time since the message was
// written.
func (m *RelayMetrics) Published(_ context.Context, p relay.Publication) {
	m.counter(m.published, p.Topic).Add(float64(p.Messages))
	// The topic's error counter exists from its first publish on, at 0, so
	// that rate() and increase() see its first error.
	m.counter(m.publishErrors, p.Topic)
	m.publishDuration.WithLabelValues("ok").Observe(p.Duration.Seconds())
	if p.Attempt > 1 {
		m.publishRetries.Inc()
	}
	now := time.Now()
	for _, c := range p.CreatedAt {
		if c.IsZero() {
			continue
		}
		// Clamped: the creation time may come from another clock (the
		// database's or the writer's).
		m.writeToPublish.Observe(max(now.Sub(c), 0).Seconds())
	}
}

// PublishFailed counts a failed publish call and observes its duration.
func (m *RelayMetrics) PublishFailed(_ context.Context, p relay.Publication) {
	m.counter(m.publishErrors, p.Topic).Inc()
	m.publishDuration.WithLabelValues("error").Observe(p.Duration.Seconds())
	if p.Attempt > 1 {
		m.publishRetries.Inc()
	}
}

// DeadLettered counts a row moved to the dead letters.
func (m *RelayMetrics) DeadLettered(_ context.Context, p relay.Publication) {
	m.counter(m.deadLettered, p.Topic).Inc()
}

// Deleted counts deleted rows and observes the delete's duration.
func (m *RelayMetrics) Deleted(_ context.Context, rows int, d time.Duration) {
	m.deletedRows.Add(float64(rows))
	m.deleteDuration.Observe(d.Seconds())
}

// Read observes the rows and the duration of a read of the outbox table.
func (m *RelayMetrics) Read(_ context.Context, rows int, sweep bool, d time.Duration) {
	kind := "forward"
	if sweep {
		kind = "sweep"
	}
	m.readRows.WithLabelValues(kind).Observe(float64(rows))
	m.readDuration.WithLabelValues(kind).Observe(d.Seconds())
}

// Leases sets the lease gauges.
func (m *RelayMetrics) Leases(_ context.Context, held, instances int) {
	m.leasesHeld.Set(float64(held))
	m.instances.Set(float64(instances))
}

// Track registers, with the registry given to [NewRelayMetrics], the
// gauges that only r can tell, read at each scrape:
//
//   - accord_relay_backlog_rows: rows in the outbox table, not yet
//     published and deleted (r.Backlog, one aggregate query bounded by
//     RelayMetricsOpts.BacklogTimeout);
//   - accord_relay_oldest_pending_age_seconds: age of the oldest of them
//     (0 when the table is empty);
//   - accord_relay_in_flight_rows: rows read but not yet deleted
//     (r.Stats().InFlight).
//
// A backlog query that fails is counted in
// accord_relay_backlog_errors_total, and that scrape goes without the two
// backlog gauges rather than failing. The backlog is the table's, so it is
// right before Run and after Run returned too. Track fails when called
// more than once.
func (m *RelayMetrics) Track(r *relay.Relay) error {
	if r == nil {
		return errors.New("accordprom: Track: relay is nil")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tracked {
		return errors.New("accordprom: Track: called more than once (one RelayMetrics observes one relay)")
	}
	c := &backlogCollector{
		r:       r,
		timeout: m.opts.BacklogTimeout,
		pending: prometheus.NewDesc(prometheus.BuildFQName(namespace, "relay", "backlog_rows"),
			"Rows in the outbox table not yet published and deleted, counted at scrape time.", nil, nil),
		oldest: prometheus.NewDesc(prometheus.BuildFQName(namespace, "relay", "oldest_pending_age_seconds"),
			"Age of the oldest row in the outbox table at scrape time (0 when it is empty).", nil, nil),
		inFlight: prometheus.NewDesc(prometheus.BuildFQName(namespace, "relay", "in_flight_rows"),
			"Rows the relay read and has not deleted yet.", nil, nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "relay", Name: "backlog_errors_total",
			Help: "Scrapes whose backlog query failed (they report no backlog gauges).",
		}),
	}
	if err := register(m.reg, c); err != nil {
		return err
	}
	m.tracked = true
	return nil
}

// backlogCollector reports a relay's backlog and in-flight rows at scrape
// time.
type backlogCollector struct {
	r                         *relay.Relay
	timeout                   time.Duration
	pending, oldest, inFlight *prometheus.Desc
	errors                    prometheus.Counter
}

// Describe implements prometheus.Collector.
func (c *backlogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	ch <- c.oldest
	ch <- c.inFlight
	c.errors.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(c.r.Stats().InFlight))
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if b, err := c.r.Backlog(ctx); err != nil {
		c.errors.Inc()
	} else {
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(b.Pending))
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, b.OldestAge.Seconds())
	}
	c.errors.Collect(ch)
}
