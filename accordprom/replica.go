package accordprom

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/accordgo/accord/replica"
)

// ReplicaMetrics is a [replica.Observer] that counts the decisions of
// replicas as Prometheus metrics. Create it with [NewReplicaMetrics] and
// set it as replica.Config.Observer; one ReplicaMetrics serves any number
// of replicas (the replica label, replica.Config.Name, tells them apart).
type ReplicaMetrics struct {
	replica.ObserverDefaults

	changes     *prometheus.CounterVec // {replica, outcome}
	gapTimeouts *prometheus.CounterVec // {replica}
	dropped     *prometheus.CounterVec // {replica}
}

// NewReplicaMetrics creates the replica metrics and registers them with
// reg (prometheus.DefaultRegisterer when nil):
//
//   - accord_replica_changes_total{replica, outcome}: decisions on changes,
//     by outcome: applied (a parked change applied once its gap filled
//     included), stale (skipped: the replica holds it or something newer),
//     gap (applied although versions before it are missing; also counted
//     as applied), rejected (not applied because versions before it are
//     missing, GapPolicy Reject), parked (stored until the changes before
//     it arrive) and resync (a key moved to a snapshot by Replica.Resync);
//   - accord_replica_gap_timeouts_total{replica}: reports by
//     Replica.CheckGaps of a key whose parked changes waited longer than
//     GapTimeout (a key is reported at every check until its gap closes);
//   - accord_replica_resync_dropped_total{replica}: parked changes dropped
//     by resyncs because the snapshot contains them.
//
// Replica.ApplyTx and ResyncTx report before the caller commits: with
// them, a transaction rolled back afterwards was counted, and is counted
// again when the change is redelivered.
//
// opts are accepted for symmetry with the other constructors; no replica
// metric is a histogram yet. It fails when opts are invalid (the error wraps
// ErrInvalidOpts) or the metrics are registered already.
func NewReplicaMetrics(reg prometheus.Registerer, opts *Opts) (*ReplicaMetrics, error) {
	if err := opts.WithDefaults().validate(); err != nil {
		return nil, err
	}
	m := &ReplicaMetrics{
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "replica", Name: "changes_total",
			Help: "Decisions of the replica on changes, by outcome (applied, stale, gap, rejected, parked, resync).",
		}, []string{"replica", "outcome"}),
		gapTimeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "replica", Name: "gap_timeouts_total",
			Help: "Reports of keys whose parked changes waited longer than GapTimeout.",
		}, []string{"replica"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "replica", Name: "resync_dropped_total",
			Help: "Parked changes dropped by resyncs because the snapshot contains them.",
		}, []string{"replica"}),
	}
	if err := register(reg, m.changes, m.gapTimeouts, m.dropped); err != nil {
		return nil, err
	}
	return m, nil
}

// Applied counts an applied change.
func (m *ReplicaMetrics) Applied(_ context.Context, o replica.Observation) {
	m.changes.WithLabelValues(o.Replica, "applied").Inc()
}

// Stale counts a stale change.
func (m *ReplicaMetrics) Stale(_ context.Context, o replica.Observation) {
	m.changes.WithLabelValues(o.Replica, "stale").Inc()
}

// Gap counts a change applied over a gap (outcome gap), a change rejected
// because of one (outcome rejected), or a gap that timed out (reported by
// CheckGaps).
func (m *ReplicaMetrics) Gap(_ context.Context, o replica.Observation) {
	switch o.Outcome {
	case replica.Parked:
		m.gapTimeouts.WithLabelValues(o.Replica).Inc()
	case replica.Rejected:
		m.changes.WithLabelValues(o.Replica, "rejected").Inc()
	default:
		m.changes.WithLabelValues(o.Replica, "gap").Inc()
	}
}

// Parked counts a parked change.
func (m *ReplicaMetrics) Parked(_ context.Context, o replica.Observation) {
	m.changes.WithLabelValues(o.Replica, "parked").Inc()
}

// Resync counts a resync and the parked changes it dropped.
func (m *ReplicaMetrics) Resync(_ context.Context, o replica.Observation) {
	m.changes.WithLabelValues(o.Replica, "resync").Inc()
	if o.Dropped > 0 {
		m.dropped.WithLabelValues(o.Replica).Add(float64(o.Dropped))
	}
}
