package accordprom

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/accordgo/accord/inbox"
)

// InboxMetrics is an [inbox.Observer] that records the outcome and the
// duration of every message an inbox handles as Prometheus metrics. Create
// it with [NewInboxMetrics] and set it as inbox.Config.Observer; one
// InboxMetrics serves any number of inboxes (the consumer label tells them
// apart).
type InboxMetrics struct {
	inbox.ObserverDefaults

	messages *prometheus.CounterVec   // {consumer, outcome}
	duration *prometheus.HistogramVec // {consumer}
}

// NewInboxMetrics creates the inbox metrics and registers them with reg
// (prometheus.DefaultRegisterer when nil):
//
//   - accord_inbox_messages_total{consumer, outcome}: handled messages by
//     outcome: applied, duplicate (applied or parked before; acknowledged
//     without effect), failed (an attempt failed and the message will be
//     redelivered) or dead_lettered (parked);
//   - accord_inbox_handle_duration_seconds{consumer}: duration of Handle,
//     whatever the outcome.
//
// It fails when opts are invalid (the error wraps ErrInvalidOpts) or the
// metrics are registered already.
func NewInboxMetrics(reg prometheus.Registerer, opts *Opts) (*InboxMetrics, error) {
	opts = opts.WithDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	m := &InboxMetrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "inbox", Name: "messages_total",
			Help: "Messages handled by the inbox, by consumer and outcome (applied, duplicate, failed, dead_lettered).",
		}, []string{"consumer", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "inbox", Name: "handle_duration_seconds",
			Help:    "Duration of handling one message (inbox bookkeeping, handler and commit), by consumer.",
			Buckets: opts.DurationBuckets,
		}, []string{"consumer"}),
	}
	if err := register(reg, m.messages, m.duration); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *InboxMetrics) observe(o inbox.Observation, outcome string) {
	m.messages.WithLabelValues(o.Consumer, outcome).Inc()
	m.duration.WithLabelValues(o.Consumer).Observe(o.Duration.Seconds())
}

// Applied counts an applied message.
func (m *InboxMetrics) Applied(_ context.Context, o inbox.Observation) { m.observe(o, "applied") }

// Duplicate counts a duplicate message.
func (m *InboxMetrics) Duplicate(_ context.Context, o inbox.Observation) { m.observe(o, "duplicate") }

// Failed counts a failed attempt.
func (m *InboxMetrics) Failed(_ context.Context, o inbox.Observation) { m.observe(o, "failed") }

// DeadLettered counts a message parked as a dead letter.
func (m *InboxMetrics) DeadLettered(_ context.Context, o inbox.Observation) {
	m.observe(o, "dead_lettered")
}
