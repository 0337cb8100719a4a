package accordprom_test

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
)

// testTimeout bounds every wait in these tests.
const testTimeout = 30 * time.Second

// memSink is an in-memory message.Publisher that records what it accepts
// and fails the first calls of the topics in failures.
type memSink struct {
	mu       sync.Mutex
	ids      map[string]int
	failures map[string]int // topic → calls still to fail
}

func newMemSink(failures map[string]int) *memSink {
	if failures == nil {
		failures = map[string]int{}
	}
	return &memSink{ids: map[string]int{}, failures: failures}
}

func (s *memSink) Publish(topic string, msgs ...*message.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failures[topic] > 0 {
		s.failures[topic]--
		return errors.New("broker says no")
	}
	for _, m := range msgs {
		s.ids[m.UUID]++
	}
	return nil
}

func (s *memSink) Close() error { return nil }

// distinct returns the number of distinct messages accepted.
func (s *memSink) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// eventually checks cond every few milliseconds until it holds, failing t
// after testTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(testTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			require.FailNow(t, "timed out waiting for "+what)
		}
	}
}

// series finds the series of metric name whose labels are exactly labels
// (given as "k", "v", ...). ok is false when there is none.
func series(t *testing.T, g prometheus.Gatherer, name string, labels ...string) (m *dto.Metric, ok bool) {
	t.Helper()
	require.Zero(t, len(labels)%2, "labels come in pairs")
	want := map[string]string{}
	for i := 0; i < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	mfs, err := g.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			if fmt.Sprint(got) == fmt.Sprint(want) {
				return m, true
			}
		}
	}
	return nil, false
}

// value returns the value of a counter or gauge series, or the sample
// count of a histogram series, failing t when the series does not exist.
func value(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	m, ok := series(t, g, name, labels...)
	require.True(t, ok, "no series %s%v; have:\n%s", name, labels, dump(t, g))
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	require.FailNow(t, "unexpected metric type", name)
	return 0
}

// sum returns the sample sum of a histogram series.
func sum(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	m, ok := series(t, g, name, labels...)
	require.True(t, ok, "no series %s%v", name, labels)
	require.NotNil(t, m.Histogram, name)
	return m.Histogram.GetSampleSum()
}

// gatherOnce gathers g once and returns a Gatherer of that result, for
// checks that must see one scrape (each Gather runs the collectors).
func gatherOnce(t *testing.T, g prometheus.Gatherer) prometheus.Gatherer {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return mfs, nil })
}

// dump lists the series names of g, for failure messages.
func dump(t *testing.T, g prometheus.Gatherer) string {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	sort.Strings(names)
	return strings.Join(names, "\n")
}
