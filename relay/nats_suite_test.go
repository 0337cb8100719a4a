package relay_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/broker"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// watermill's universal suite with the relay in the loop for the two
// brokers of internal/broker not covered by brokers_test.go: the suite's
// publisher is the outbox (each Publish call its own transaction), one relay
// publishes the rows through the broker, and the suite subscribes with the
// same broker's subscriber.

// TestUniversalPubSubNATS: outbox → relay → Accord's pipelined JetStream
// publisher (the default of nats://) → the broker's JetStream subscriber.
//
//   - No consumer groups: every subscription of the broker is an ephemeral
//     JetStream consumer of its own that starts at the beginning of the
//     stream, so a new subscriber gets every message ever published
//     (NewSubscriberReceivesOldMessages) and several subscribers each get
//     all of them.
//   - At least once: the relay may publish a row again after a crash (and
//     JetStream drops it when it comes within the duplicate window); an
//     unacked message is redelivered.
//   - Order: the suite's messages carry no partition key, so they share the
//     key "" and one relay lane, which publishes them one call at a time in
//     commit order; the publisher sends a call's messages in order on one
//     connection, the stream stores them in that order and one consumer
//     delivers them in it, the next only after the previous was acked.
//   - Persistent: rows stay in the outbox until published, the stream keeps
//     what was published.
func TestUniversalPubSubNATS(t *testing.T) {
	t.Parallel()
	js := natsAdminJS(t)
	// Every subject, and so every stream, of this test starts with prefix.
	prefix := dbtest.RandomName("accordsuite")
	t.Cleanup(func() { deleteStreamsOf(t, js, prefix) })
	url := withQuery(dbtest.NATSURL(), "subject_prefix="+prefix)
	runUniversalSuite(t, func(string) string { return url }, tests.Features{
		ConsumerGroups:                      false,
		ExactlyOnceDelivery:                 false,
		GuaranteedOrder:                     true,
		GuaranteedOrderWithSingleSubscriber: true,
		Persistent:                          true,
		RequireSingleInstance:               false,
		NewSubscriberReceivesOldMessages:    true,
		// Short volume, as the RabbitMQ and Redis suites: the full volume
		// (10,000 messages in TestPublisherClose, 50 subscribers that each
		// get all 5,000 messages in TestConcurrentSubscribe) passes on its
		// own in about 110 s under -race on 2 cores, but leaves the suites
		// that run next to it in the package short of CPU and PostgreSQL
		// connections for their fixed read timeouts.
		ForceShort: true,
	}, &usedNames{})
}

// TestUniversalPubSubWatermillSQL: outbox → relay → watermill-sql topic
// tables (the postgres:// broker, broker-less) → the broker's watermill-sql
// subscriber. The topic tables are created in the test's schema (the
// broker's connections have it as their search_path) and dropped with it.
//
//   - No consumer groups: the broker's subscribers all share watermill-sql's
//     default group, so a new subscriber continues where the group stopped
//     and does not get what the group already consumed.
//   - At least once: the relay may publish a row again after a crash; a
//     nacked message is delivered again.
//   - Order: one relay lane publishes the suite's messages in commit order
//     (see TestUniversalPubSubNATS), each call in one transaction, and
//     watermill-sql delivers a topic's rows in that order to the group, one
//     at a time, whichever of its subscribers takes them.
//   - Persistent: rows stay in the outbox until published, the topic table
//     keeps them.
func TestUniversalPubSubWatermillSQL(t *testing.T) {
	t.Parallel()
	// The outbox's schema: its cleanup, which drops the schema and the
	// topic tables in it, runs after the brokers are closed.
	env := dbtest.PostgresSchema(t)
	url := withQuery(dbtest.PostgresURL(), "search_path="+env.Schema)
	runUniversalSuiteIn(t, env, func(string) string { return url }, tests.Features{
		ConsumerGroups:                      false,
		ExactlyOnceDelivery:                 false,
		GuaranteedOrder:                     true,
		GuaranteedOrderWithSingleSubscriber: false,
		Persistent:                          true,
		RequireSingleInstance:               false,
		NewSubscriberReceivesOldMessages:    false,
		// Short volume: watermill-sql delivers a nacked message again after
		// its ResendInterval (1 s, the broker's default), and at full volume
		// TestContinueAfterErrors nacks 300 times: 305 s of its 330 s suite
		// run under -race. Short, it nacks 5 times.
		ForceShort: true,
	}, &usedNames{})
}

// Outbox on PostgreSQL → relay (16 lanes) → Accord's JetStream publisher →
// the broker's subscriber, as TestRelayToRabbitMQ: every event arrives,
// each key's events in order.
func TestRelayToNATSBroker(t *testing.T) {
	t.Parallel()
	js := natsAdminJS(t)
	prefix := dbtest.RandomName("accordrelay")
	t.Cleanup(func() { deleteStreamsOf(t, js, prefix) })
	url := withQuery(dbtest.NATSURL(), "subject_prefix="+prefix)
	relayToBroker(t, url, url, "orders.created")
}

// Outbox on PostgreSQL → relay → watermill-sql tables through the
// postgres:// broker → its subscriber, as TestRelayToRabbitMQ. The tables
// are created in a schema of their own, dropped when the test ends.
func TestRelayToWatermillSQLBroker(t *testing.T) {
	t.Parallel()
	dest := dbtest.PostgresSchema(t)
	url := withQuery(dbtest.PostgresURL(), "search_path="+dest.Schema)
	relayToBroker(t, url, url, "orders_created")
}

// natsAdminJS is a connection to inspect and clean up streams.
func natsAdminJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(dbtest.NATSURL(), nats.Timeout(5*time.Second))
	require.NoError(t, err, "NATS (JetStream enabled) is not reachable at %s; set ACCORD_TEST_NATS_URL", dbtest.NATSURL())
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return js
}

// deleteStreamsOf deletes every stream that stores a subject under
// "<subjectPrefix>.".
func deleteStreamsOf(t *testing.T, js jetstream.JetStream, subjectPrefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	streams := js.StreamNames(ctx, jetstream.WithStreamListSubject(subjectPrefix+".>"))
	var names []string
	for name := range streams.Name() {
		names = append(names, name)
	}
	errs := []error{streams.Err()}
	for _, name := range names {
		if err := js.DeleteStream(ctx, name); err != nil {
			errs = append(errs, fmt.Errorf("delete stream %s: %w", name, err))
		}
	}
	require.NoError(t, errors.Join(errs...))
	t.Logf("deleted %d streams of %s.>", len(names), subjectPrefix)
}

// BenchmarkRelayToNATS drains a backlog of b.N events on 1,000 keys with one
// relay (default configuration: 16 lanes, batches of 1,000) through each
// NATS publisher of the nats:// broker, and reports events per second from
// the relay's start until the stream holds them all.
//
//	go test -run x -bench RelayToNATS -benchtime 100000x ./relay
func BenchmarkRelayToNATS(b *testing.B) {
	for _, publisher := range []string{"async", "watermill"} {
		b.Run(publisher, func(b *testing.B) {
			ctx := context.Background()
			env := dbtest.PostgresSchema(b)
			ob, err := outbox.New(&outbox.Config{Dialect: env.Dialect, Schema: env.Schema})
			require.NoError(b, err)
			nc, err := nats.Connect(dbtest.NATSURL())
			require.NoError(b, err)
			b.Cleanup(nc.Close)
			js, err := jetstream.New(nc)
			require.NoError(b, err)
			prefix := dbtest.RandomName("accordbench")
			b.Cleanup(func() {
				if err := js.DeleteStream(ctx, prefix+"_orders"); err != nil {
					b.Logf("delete stream: %v", err)
				}
			})
			br, err := broker.Open(ctx, dbtest.NATSURL()+"?publisher="+publisher+"&subject_prefix="+prefix, nil)
			require.NoError(b, err)
			b.Cleanup(func() { require.NoError(b, br.Close()) })
			// Create the stream before the clock starts.
			require.NoError(b, br.Publisher.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("{}"))))

			for start := 0; start < b.N; start += 1000 {
				tx, err := env.DB.BeginTx(ctx, nil)
				require.NoError(b, err)
				evs := make([]outbox.Event, 0, 1000)
				for i := start; i < min(start+1000, b.N); i++ {
					m := outbox.NewMessage([]byte(`{"order_id":` + strconv.Itoa(i) + `,"amount":4200,"currency":"EUR"}`))
					evs = append(evs, outbox.Event{Topic: "orders", Key: "key-" + strconv.Itoa(i%1000), Message: m})
				}
				require.NoError(b, ob.WriteTx(ctx, tx, evs...))
				require.NoError(b, tx.Commit())
			}
			stream, err := js.Stream(ctx, prefix+"_orders")
			require.NoError(b, err)

			b.ResetTimer()
			r, err := relay.New(env.DB, br.Publisher, &relay.Config{Dialect: env.Dialect, Schema: env.Schema,
				Logger: slog.New(slog.DiscardHandler)})
			require.NoError(b, err)
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			deadline := time.After(5 * time.Minute)
			for {
				info, err := stream.Info(ctx)
				require.NoError(b, err)
				if info.State.Msgs >= uint64(b.N)+1 {
					break
				}
				select {
				case <-tick.C:
				case <-deadline:
					b.Fatalf("%d of %d events in the stream after 5 minutes", info.State.Msgs-1, b.N)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			require.NoError(b, r.Close())
			require.NoError(b, <-done)
		})
	}
}
