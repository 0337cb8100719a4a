package bench

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/broker"
	"github.com/accordgo/accord/internal/dbtest"
)

// With an injected publish latency every publish call of the destination
// sleeps, and delivery still verifies.
func TestRunRelayPublishLatency(t *testing.T) {
	res := runLocal(t, Options{
		Events:          1000,
		LatencyDuration: -1,
		IdleDuration:    -1,
		NoForwarder:     true,
		PublishLatency:  time.Millisecond,
	})
	require.EqualValues(t, 1000, res.Backlog)
	require.Equal(t, 1.0, res.PublishLatencyMS)
	requireDelivered(t, res)
}

// With OpenTransaction the latency phase runs while a transaction in
// another database holds the xmin horizon back, and every event still
// arrives (a relay that waited for xmin would stall until the phase's
// stall timeout).
func TestRunRelayOpenTransaction(t *testing.T) {
	res := runLocal(t, Options{
		Events:          100,
		Rate:            200,
		LatencyDuration: time.Second,
		IdleDuration:    -1,
		NoForwarder:     true,
		OpenTransaction: true,
	})
	require.NotEmpty(t, res.OpenTransactionXID)
	require.True(t, res.OpenTransactionHeldXmin, "the open transaction did not hold back xmin")
	require.Equal(t, 200, res.LatencyEvents)
	requireDelivered(t, res)
}

// TestRunRelaySmall runs the whole benchmark on a small backlog and checks
// that neither relay lost, duplicated or reordered anything. It asserts
// nothing about timings.
func TestRunRelaySmall(t *testing.T) {
	res := runLocal(t, Options{
		Events:          2000,
		Rate:            200,
		LatencyDuration: 2 * time.Second,
		IdleDuration:    500 * time.Millisecond,
	})

	require.EqualValues(t, 2000, res.Backlog)
	require.Equal(t, 400, res.LatencyEvents)
	requireDelivered(t, res)
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
	require.Equal(t, 1, res.Relays)
	require.Positive(t, res.IdleSeconds)
	require.GreaterOrEqual(t, res.RelayCPUIdlePercent, 0.0)

	// The table and the JSON carry the figures.
	var table strings.Builder
	require.NoError(t, res.WriteTable(&table))
	require.Contains(t, table.String(), "Accord drain")
	require.Contains(t, table.String(), "watermill forwarder drain")
	require.Contains(t, table.String(), "idle relay CPU")
	m := requireResultFields(t, res)
	for _, k := range []string{"rate", "forwarder_lost", "forwarder_duplicates", "forwarder_order_violations", "go_version", "cpus", "postgres_version"} {
		require.Contains(t, m, k)
	}
}

// requiredJSONFields are the fields every --json result carries.
var requiredJSONFields = []string{"events", "backlog", "destination", "relays", "drain_events_per_sec",
	"forwarder_events_per_sec", "ratio", "latency_p50_ms", "latency_p99_ms", "publish_latency_ms",
	"relay_cpu_idle_percent", "max_rss_mib", "lost", "duplicates", "order_violations"}

// requireResultFields checks that the JSON form of res has every required
// field as a number (destination as a string).
func requireResultFields(t *testing.T, res *Result) map[string]any {
	t.Helper()
	js, err := json.Marshal(res)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(js, &m))
	for _, k := range requiredJSONFields {
		require.Contains(t, m, k)
		if k == "destination" {
			require.IsType(t, "", m[k], k)
		} else {
			require.IsType(t, float64(0), m[k], k)
		}
	}
	return m
}

// A run against each broker destination: the relays (and, for NATS, the
// forwarder) publish to the broker, the benchmark subscribes to the run's
// topics there, and nothing is lost, duplicated or reordered.
func TestRunRelayDestinations(t *testing.T) {
	dbtest.Postgres(t)
	for _, tc := range []struct {
		name, url string
		forwarder bool // also run the forwarder phase
		idle      bool // also run the idle phase
	}{
		{"nats", dbtest.NATSURL(), true, true},
		{"amqp", dbtest.RabbitMQURL(), false, false},
		{"redis", dbtest.RedisURL(), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			idle := -time.Duration(1)
			if tc.idle {
				idle = 300 * time.Millisecond
			}
			res, err := RunRelay(ctx, Options{
				DatabaseURL:     dbtest.PostgresURL(),
				Destination:     tc.url,
				Events:          1000,
				Rate:            200,
				LatencyDuration: time.Second,
				IdleDuration:    idle,
				NoForwarder:     !tc.forwarder,
				Progress:        t.Output(),
			})
			require.NoError(t, err)
			require.Equal(t, broker.RedactURL(tc.url), res.Destination)
			require.Equal(t, 1, res.Relays)
			require.EqualValues(t, 1000, res.Backlog)
			require.Equal(t, 200, res.LatencyEvents)
			requireDelivered(t, res)
			require.Positive(t, res.DrainEventsPerSec)
			require.Positive(t, res.LatencyP99Ms)
			require.Positive(t, res.DrainRelaySeconds)
			require.Equal(t, tc.idle, res.IdleSeconds > 0)
			if tc.forwarder {
				require.NotNil(t, res.ForwarderLost)
				require.Zero(t, *res.ForwarderLost+*res.ForwarderDuplicates+*res.ForwarderOrderViolations+res.ForwarderUnexpected)
				require.Positive(t, res.ForwarderEventsPerSec)
				require.Positive(t, res.Ratio)
			}
			m := requireResultFields(t, res)
			require.NotContains(t, m["destination"], "guest:guest", "credentials are redacted")
		})
	}
}

// A phase's topic is removed from the broker when the phase ends.
func TestDestinationRemovesTopic(t *testing.T) {
	dbtest.Postgres(t)
	for name, url := range map[string]string{"nats": dbtest.NATSURL(), "amqp": dbtest.RabbitMQURL(), "redis": dbtest.RedisURL()} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			opts := Options{DatabaseURL: dbtest.PostgresURL(), Destination: url, Progress: t.Output()}.withDefaults()
			r, cleanup, err := newRunner(ctx, opts)
			require.NoError(t, err)
			defer cleanup()
			d, err := r.newDestination(ctx, "rm", 1, true)
			require.NoError(t, err)
			pub, err := d.publisher(ctx)
			require.NoError(t, err)
			_, msg := newEvent(0)
			require.NoError(t, pub.Publish(d.topic, msg))
			select {
			case <-d.sink.done:
			case <-ctx.Done():
				t.Fatal("the message did not arrive")
			}
			require.NoError(t, d.close(ctx))
			require.False(t, topicExists(ctx, t, url, d.topic), "topic %s left on %s", d.topic, name)
		})
	}
}

// topicExists reports whether the broker still has what it created for
// topic.
func topicExists(ctx context.Context, t *testing.T, rawURL, topic string) bool {
	t.Helper()
	switch destinationScheme(rawURL) {
	case "nats":
		nc, err := nats.Connect(rawURL)
		require.NoError(t, err)
		defer nc.Close()
		js, err := nc.JetStream()
		require.NoError(t, err)
		_, err = js.StreamNameBySubject(topic, nats.Context(ctx))
		if errors.Is(err, nats.ErrNoMatchingStream) {
			return false
		}
		require.NoError(t, err)
		return true
	case "amqp":
		conn, err := amqp091.Dial(rawURL)
		require.NoError(t, err)
		defer conn.Close()
		ch, err := conn.Channel()
		require.NoError(t, err)
		_, err = ch.QueueDeclarePassive(topic+"_"+broker.ConsumerGroupDefault, true, false, false, false, nil)
		return err == nil // a missing queue closes the channel with 404
	case "redis":
		o, err := redis.ParseURL(rawURL)
		require.NoError(t, err)
		c := redis.NewClient(o)
		defer c.Close()
		n, err := c.Exists(ctx, topic).Result()
		require.NoError(t, err)
		return n > 0
	}
	t.Fatalf("no check for %s", rawURL)
	return false
}

// TestRunRelayTwoRelays runs the drain, latency and idle phases with two
// relay instances on one outbox. It needs the relay to share an outbox
// between instances (leases); until then the two relays publish rows twice
// and the duplicates check fails.
func TestRunRelayTwoRelays(t *testing.T) {
	dbtest.Postgres(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := RunRelay(ctx, Options{
		DatabaseURL:     dbtest.PostgresURL(),
		Events:          2000,
		Relays:          2,
		Rate:            200,
		LatencyDuration: time.Second,
		IdleDuration:    300 * time.Millisecond,
		NoForwarder:     true,
		Progress:        t.Output(),
	})
	require.NoError(t, err)
	require.Equal(t, 2, res.Relays)
	require.EqualValues(t, 2000, res.Backlog)
	requireDelivered(t, res)
	require.Positive(t, res.IdleSeconds)
	requireResultFields(t, res)
}

func TestRunRelayNoForwarderDropsSchema(t *testing.T) {
	db := dbtest.Postgres(t)
	t.Parallel()
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

	res, err := RunRelay(ctx, Options{DatabaseURL: dbtest.PostgresURL(), Events: 100, LatencyDuration: -1, IdleDuration: -1, NoForwarder: true, Progress: t.Output()})
	require.NoError(t, err)
	require.Nil(t, res.ForwarderLost)
	require.Zero(t, res.ForwarderEventsPerSec)
	require.Zero(t, res.LatencyEvents)
	require.Zero(t, res.IdleSeconds)
	require.Zero(t, res.Lost)
	m := requireResultFields(t, res) // skipped phases still give their figures, as 0
	require.EqualValues(t, 0, m["forwarder_events_per_sec"])
	require.EqualValues(t, 0, m["ratio"])
	require.EqualValues(t, 0, m["relay_cpu_idle_percent"])
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
		{Relays: -1},
		{Relays: RelaysMax + 1},
		{PublishLatency: -time.Millisecond},
		{Destination: "log"},
		{Destination: "gochannel"},
		{Destination: "nats://127.0.0.1:4222", PublishLatency: time.Millisecond},
		{Destination: "bogus://127.0.0.1:1"},
		{Destination: "nats://127.0.0.1:4222?bogus=1"},
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
	require.NoError(t, s.Publish("bench.orders", msgs[0], msgs[1]))
	select {
	case <-s.done:
		t.Fatal("done before the target")
	default:
	}
	require.NoError(t, s.Publish("bench.orders", msgs[2]))
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

// Duplicates do not count towards the sink's target: a phase ends only
// once every distinct event arrived.
func TestSinkCountsDistinct(t *testing.T) {
	s := newSink(time.Now(), 2)
	_, a := newEvent(0)
	_, b := newEvent(1)
	require.NoError(t, s.Publish("t", a, a))
	s.record(1, a)
	require.EqualValues(t, 1, s.Received())
	select {
	case <-s.done:
		t.Fatal("done on duplicates")
	default:
	}
	s.record(2, b)
	<-s.done
	require.EqualValues(t, 2, s.doneAt.Load())
	require.Len(t, s.receipts(), 4)
}

func TestMuteHandler(t *testing.T) {
	var buf strings.Builder
	var muted atomic.Bool
	log := slog.New(muteHandler{inner: slog.NewTextHandler(&buf, nil), muted: &muted}).With("a", 1)
	log.Info("before")
	muted.Store(true)
	log.Error("after")
	require.Contains(t, buf.String(), "before")
	require.NotContains(t, buf.String(), "after")
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

// requireDelivered checks that the Accord relay lost, duplicated and
// reordered nothing, and that nothing unexpected arrived.
// runLocal runs the benchmark with opts against the local test PostgreSQL
// (in parallel with other tests), progress to the test's output, and
// requires it to succeed within 3 minutes.
func runLocal(t *testing.T, opts Options) *Result {
	t.Helper()
	dbtest.Postgres(t) // fails with instructions when PostgreSQL is not reachable
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	opts.DatabaseURL, opts.Progress = dbtest.PostgresURL(), t.Output()
	res, err := RunRelay(ctx, opts)
	require.NoError(t, err)
	return res
}

func requireDelivered(t *testing.T, res *Result) {
	t.Helper()
	require.Zero(t, res.Lost, "Accord lost events")
	require.Zero(t, res.Duplicates, "Accord duplicates")
	require.Zero(t, res.OrderViolations, "Accord order violations")
	require.Zero(t, res.Unexpected, "Accord unexpected messages")
}
