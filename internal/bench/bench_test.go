package bench

import (
	"context"
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
)

// TestRunRelaySmall runs the whole benchmark on a small backlog and checks
// that neither relay lost, duplicated or reordered anything. It asserts
// nothing about timings.
// With an injected publish latency every publish call of the destination
// sleeps, and delivery still verifies.
func TestRunRelayPublishLatency(t *testing.T) {
	dbtest.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := RunRelay(ctx, Options{
		DatabaseURL:     dbtest.PostgresURL(),
		Events:          1000,
		LatencyDuration: -1,
		NoForwarder:     true,
		PublishLatency:  time.Millisecond,
		Progress:        t.Output(),
	})
	require.NoError(t, err)
	require.EqualValues(t, 1000, res.Backlog)
	require.Equal(t, 1.0, res.PublishLatencyMS)
	require.Zero(t, res.Lost)
	require.Zero(t, res.Duplicates)
	require.Zero(t, res.OrderViolations)
}

func TestRunRelaySmall(t *testing.T) {
	dbtest.Postgres(t) // fails with instructions when PostgreSQL is not reachable
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := RunRelay(ctx, Options{
		DatabaseURL:     dbtest.PostgresURL(),
		Events:          2000,
		Rate:            200,
		LatencyDuration: 2 * time.Second,
		Progress:        t.Output(),
	})
	require.NoError(t, err)

	require.EqualValues(t, 2000, res.Backlog)
	require.Equal(t, 400, res.LatencyEvents)
	require.Zero(t, res.Lost, "Accord lost events")
	require.Zero(t, res.Duplicates, "Accord duplicates")
	require.Zero(t, res.OrderViolations, "Accord order violations")
	require.Zero(t, res.Unexpected, "Accord unexpected messages")
	require.NotNil(t, res.ForwarderLost, "forwarder phase did not run")
	require.Zero(t, *res.ForwarderLost, "forwarder lost events")
	require.Zero(t, *res.ForwarderDuplicates, "forwarder duplicates")
	require.Zero(t, *res.ForwarderOrderViolations, "forwarder order violations")
	require.Zero(t, res.ForwarderUnexpected, "forwarder unexpected messages")
	require.Positive(t, res.DrainEventsPerSec)
	require.Positive(t, res.ForwarderEventsPerSec)
	require.Positive(t, res.LatencyP99Ms)
	require.Positive(t, res.MaxRSSMiB)
	require.Equal(t, "inprocess", res.Destination)

	// The table and the JSON carry the figures.
	var table strings.Builder
	require.NoError(t, res.WriteTable(&table))
	require.Contains(t, table.String(), "Accord drain")
	require.Contains(t, table.String(), "watermill forwarder drain")
	js, err := json.Marshal(res)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(js, &m))
	for _, k := range []string{"events", "backlog", "destination", "relays", "drain_events_per_sec", "forwarder_events_per_sec",
		"ratio", "latency_p50_ms", "latency_p99_ms", "rate", "max_rss_mib", "lost", "duplicates", "order_violations",
		"forwarder_lost", "forwarder_duplicates", "forwarder_order_violations", "go_version", "cpus", "postgres_version"} {
		require.Contains(t, m, k)
	}

}

func TestRunRelayNoForwarderDropsSchema(t *testing.T) {
	db := dbtest.Postgres(t)
	ctx := context.Background()
	opts := Options{DatabaseURL: dbtest.PostgresURL(), Events: 100, LatencyDuration: -1, NoForwarder: true, Progress: t.Output()}.withDefaults()
	r, cleanup, err := newRunner(ctx, opts)
	require.NoError(t, err)
	out, err := r.accordDrain(ctx, "drain_", 100)
	require.NoError(t, err)
	require.EqualValues(t, 100, out.backlog)
	require.Zero(t, out.check.Lost+out.check.Duplicates+out.check.OrderViolations+out.check.Unexpected)
	cleanup()
	var n int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname = $1`, r.schema).Scan(&n))
	require.Zero(t, n, "schema %s left behind", r.schema)

	res, err := RunRelay(ctx, Options{DatabaseURL: dbtest.PostgresURL(), Events: 100, LatencyDuration: -1, NoForwarder: true, Progress: t.Output()})
	require.NoError(t, err)
	require.Nil(t, res.ForwarderLost)
	require.Zero(t, res.ForwarderEventsPerSec)
	require.Zero(t, res.LatencyEvents)
	require.Zero(t, res.Lost)
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Options{
		{DatabaseURL: "sqlite:///tmp/x.db"},
		{DatabaseURL: "mysql://x"},
		{Events: -1},
		{Rate: -5},
		{Lanes: -1},
		{Lanes: 5000},
		{BatchSize: 100000},
	} {
		_, err := RunRelay(context.Background(), o)
		require.Error(t, err, "%+v", o)
		require.Contains(t, err.Error(), "invalid options")
	}
}

func TestVerify(t *testing.T) {
	ids := []string{"a", "b", "c", "d", "e"}
	rec := func(id string, idx int64, key string, seq, at int64) receipt {
		return receipt{id: id, idx: idx, key: key, seq: seq, at: at}
	}
	recs := []receipt{
		rec("a", 0, "k1", 0, 10),
		rec("c", 2, "k1", 2, 20),
		rec("b", 1, "k1", 1, 30), // k1 went back from 2 to 1
		rec("a", 0, "k1", 0, 40), // duplicate
		rec("x", 3, "k2", 0, 50), // wrong UUID for index 3
		rec("z", 9, "k2", 0, 60), // unknown index
		rec("e", 4, "k2", 0, 70),
	}
	c := verify(recs, ids, []int64{5, 15, 0, 0, 60})
	require.EqualValues(t, 7, c.Received)
	require.EqualValues(t, 1, c.Lost) // d
	require.EqualValues(t, 1, c.Duplicates)
	require.EqualValues(t, 1, c.OrderViolations)
	require.EqualValues(t, 2, c.Unexpected)
	require.Equal(t, []int64{5, 15, 10}, c.Latencies) // a, b, e; c has no commit time
}

func TestPercentile(t *testing.T) {
	v := make([]int64, 100)
	for i := range v {
		v[i] = int64(i + 1)
	}
	require.EqualValues(t, 50, percentile(v, 50))
	require.EqualValues(t, 99, percentile(v, 99))
	require.EqualValues(t, 100, percentile(v, 100))
	require.EqualValues(t, 1, percentile(v, 0.1))
	require.EqualValues(t, 0, percentile(nil, 50))
	require.EqualValues(t, 7, percentile([]int64{7}, 99))
}

func TestSinkRecordsMetadata(t *testing.T) {
	s := newSink(time.Now(), 3)
	msgs := make([]*message.Message, 3)
	for i := range msgs {
		_, msgs[i] = newEvent(i * Keys) // same key, sequence 0, 1, 2
	}
	require.NoError(t, s.Publish(Topic, msgs[0], msgs[1]))
	select {
	case <-s.done:
		t.Fatal("done before the target")
	default:
	}
	require.NoError(t, s.Publish(Topic, msgs[2]))
	<-s.done
	recs := s.receipts()
	require.Len(t, recs, 3)
	for i, r := range recs {
		require.Equal(t, msgs[i].UUID, r.id)
		require.Equal(t, "order-0", r.key)
		require.EqualValues(t, i*Keys, r.idx)
		require.EqualValues(t, i, r.seq)
	}
	c := verify(recs, []string{msgs[0].UUID}, nil)
	require.EqualValues(t, 2, c.Unexpected) // indexes 1000 and 2000 are outside ids
}

func TestThousands(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 113282.26: "113,282", 1234567: "1,234,567", -4200: "-4,200"} {
		require.Equal(t, want, thousands(in), strconv.FormatFloat(in, 'f', -1, 64))
	}
}

// BenchmarkRelayDrain drains b.N events, written beforehand (not timed),
// from a fresh outbox into the in-process sink with one relay in its
// default configuration, and reports events/s.
func BenchmarkRelayDrain(b *testing.B) {
	dbtest.Postgres(b)
	ctx := context.Background()
	opts := Options{DatabaseURL: dbtest.PostgresURL(), Progress: io.Discard}.withDefaults()
	r, cleanup, err := newRunner(ctx, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer cleanup()
	b.StopTimer()
	r.timerStart, r.timerStop = b.StartTimer, b.StopTimer
	out, err := r.accordDrain(ctx, "drain_", b.N)
	if err != nil {
		b.Fatal(err)
	}
	if c := out.check; c.Lost+c.Duplicates+c.OrderViolations+c.Unexpected != 0 {
		b.Fatalf("lost %d, duplicates %d, order violations %d, unexpected %d", c.Lost, c.Duplicates, c.OrderViolations, c.Unexpected)
	}
	b.ReportMetric(float64(out.backlog)/out.elapsed.Seconds(), "events/s")
}
