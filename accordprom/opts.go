package accordprom

import (
	"errors"
	"fmt"
	"math"

	"github.com/prometheus/client_golang/prometheus"
)

// namespace is the first part of every metric name.
const namespace = "accord"

// Default buckets of the histograms. Do not modify them: copy them instead
// (slices.Clone) and set the copy in the options.
var (
	// DurationBucketsDefault are the buckets, in seconds, of the duration
	// histograms (publish calls, reads, deletes, handler runs, fetches):
	// 1 ms to 60 s.
	DurationBucketsDefault = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

	// LatencyBucketsDefault are the buckets, in seconds, of
	// accord_relay_write_to_publish_seconds: 5 ms to 1 hour, since a
	// backlog after a broker outage is drained with latencies of minutes.
	LatencyBucketsDefault = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}
)

// ErrInvalidOpts wraps every problem with the options of a constructor of
// this package.
var ErrInvalidOpts = errors.New("accordprom: invalid options")

// Opts are the options of [NewInboxMetrics], [NewFeedMetrics] and
// [NewReplicaMetrics]. A nil *Opts means all defaults.
type Opts struct {
	// DurationBuckets are the upper bounds, in seconds and strictly
	// increasing, of the buckets of the duration histograms. Defaults to
	// DurationBucketsDefault.
	DurationBuckets []float64
}

// WithDefaults returns a copy of o with defaults filled in.
func (o *Opts) WithDefaults() *Opts {
	out := Opts{}
	if o != nil {
		out = *o
	}
	if len(out.DurationBuckets) == 0 {
		out.DurationBuckets = DurationBucketsDefault
	}
	return &out
}

func (o *Opts) validate() error {
	if err := checkBuckets("DurationBuckets", o.DurationBuckets); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidOpts, err)
	}
	return nil
}

// checkBuckets returns an error naming field unless b is strictly
// increasing and free of NaN (prometheus.NewHistogram panics otherwise).
func checkBuckets(field string, b []float64) error {
	for i, v := range b {
		if math.IsNaN(v) {
			return fmt.Errorf("%s[%d] is NaN", field, i)
		}
		if i > 0 && v <= b[i-1] {
			return fmt.Errorf("%s %v: must be strictly increasing", field, b)
		}
	}
	return nil
}

// register registers cs with reg (prometheus.DefaultRegisterer when nil),
// all or none: after a failure it unregisters those it registered.
func register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return fmt.Errorf("accordprom: register metrics: %w", err)
		}
	}
	return nil
}
