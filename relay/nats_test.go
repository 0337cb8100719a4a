package relay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// Outbox on PostgreSQL → relay → NATS JetStream (the shared test server),
// with writers committing while the relay runs: a watermill-nats JetStream
// subscriber gets every event, each key's events in order, with the
// accord_key, accord_version and accord_created_at metadata.
func TestRelayToNATSJetStream(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	ob := newOutbox(t, env)
	topic := dbtest.RandomName("accord_relay_") // also the stream name
	jsCfg := wmnats.JetStreamConfig{
		AutoProvision:    true,
		AckAsync:         true,
		SubscribeOptions: []nats.SubOpt{nats.DeliverAll(), nats.AckExplicit()},
	}

	nc, err := nats.Connect(dbtest.NATSURL())
	require.NoError(t, err, "NATS (JetStream enabled) is not reachable at %s; set ACCORD_TEST_NATS_URL", dbtest.NATSURL())
	t.Cleanup(nc.Close)
	js, err := nc.JetStream()
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := js.DeleteStream(topic); err != nil {
			t.Logf("delete stream %s: %v", topic, err)
		}
	})

	sub, err := wmnats.NewSubscriber(wmnats.SubscriberConfig{
		URL: dbtest.NATSURL(), CloseTimeout: 5 * time.Second, AckWaitTimeout: 30 * time.Second, JetStream: jsCfg,
	}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, sub.Close()) })
	require.NoError(t, sub.SubscribeInitialize(topic))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	msgs, err := sub.Subscribe(ctx, topic)
	require.NoError(t, err)

	pub, err := wmnats.NewPublisher(wmnats.PublisherConfig{URL: dbtest.NATSURL(), JetStream: jsCfg}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, pub.Close()) })

	keys := crashKeys(20)
	sent := map[string]keyedEvent{}
	next := map[string]int64{}
	for range 5 { // a backlog of 5 × 20 keys × 25 = 2,500 events
		require.NoError(t, writeKeyed(ctx, env.DB, ob, topic, keys, 25, next, sent))
	}
	startRelay(t, env, pub, &relay.Config{BatchSize: 200})
	// 2,000 more while the relay runs, one transaction at a time, so each
	// key's writes are serialized.
	for range 10 {
		require.NoError(t, writeKeyed(ctx, env.DB, ob, topic, keys, 10, next, sent))
	}

	receipts := receiveAll(t, msgs, sent, 60*time.Second, func(m *message.Message) {
		created, err := time.Parse(time.RFC3339Nano, m.Metadata.Get(outbox.MetadataCreatedAt))
		require.NoError(t, err, "message %s: %s", m.UUID, outbox.MetadataCreatedAt)
		require.WithinDuration(t, time.Now(), created, 5*time.Minute)
	})
	dups := checkKeyedReceipts(t, sent, receipts)
	t.Logf("%d events through NATS JetStream, %d redelivered", len(sent), dups)
	waitFor(t, 10*time.Second, "an empty outbox", func() bool { return pending(t, env) == 0 })
}

// Outbox on PostgreSQL → relay → watermill-sql (broker-less, one table per
// topic in the test's schema). A watermill-sql subscriber with a consumer
// group reads everything back, each key's events in order.
func TestRelayToWatermillSQL(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	ob := newOutbox(t, env)
	ctx := context.Background()
	db := wmsql.BeginnerFromStdSQL(env.DB)
	schema := wmsql.DefaultPostgreSQLSchema{
		GenerateMessagesTableName: func(topic string) string { return fmt.Sprintf(`"%s"."wm_%s"`, env.Schema, topic) },
		GeneratePayloadType:       func(string) string { return "BYTEA" },
	}
	offsets := wmsql.DefaultPostgreSQLOffsetsAdapter{
		GenerateMessagesOffsetsTableName: func(topic string) string { return fmt.Sprintf(`"%s"."wm_offsets_%s"`, env.Schema, topic) },
	}

	pub, err := wmsql.NewPublisher(db, wmsql.PublisherConfig{SchemaAdapter: schema, AutoInitializeSchema: true}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, pub.Close()) })

	// Two topics, each key always on the same one.
	topics := []string{"orders", "payments"}
	keys := crashKeys(20)
	sent := map[string]keyedEvent{}
	next := map[string]int64{}
	for i, topic := range topics {
		var own []string
		for j := i; j < len(keys); j += len(topics) {
			own = append(own, keys[j])
		}
		for range 5 { // 5 × 10 keys × 30 = 1,500 events per topic
			require.NoError(t, writeKeyed(ctx, env.DB, ob, topic, own, 30, next, sent))
		}
	}
	startRelay(t, env, pub, &relay.Config{BatchSize: 200})

	sub, err := wmsql.NewSubscriber(db, wmsql.SubscriberConfig{
		ConsumerGroup:    "accord_test",
		PollInterval:     50 * time.Millisecond,
		SchemaAdapter:    schema,
		OffsetsAdapter:   offsets,
		InitializeSchema: true,
	}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, sub.Close()) })

	var receipts []keyedReceipt
	for _, topic := range topics {
		topicSent := map[string]keyedEvent{}
		for id, ev := range sent {
			if topicOfKey(keys, topics, ev.Key) == topic {
				topicSent[id] = ev
			}
		}
		msgs, err := sub.Subscribe(ctx, topic)
		require.NoError(t, err)
		got := receiveAll(t, msgs, topicSent, 60*time.Second, nil)
		dups := checkKeyedReceipts(t, topicSent, got)
		require.Zero(t, dups, "topic %s: duplicates in steady state", topic)
		receipts = append(receipts, got...)
	}
	require.Zero(t, checkKeyedReceipts(t, sent, receipts))
	waitFor(t, 10*time.Second, "an empty outbox", func() bool { return pending(t, env) == 0 })
}

func topicOfKey(keys, topics []string, key string) string {
	for i, k := range keys {
		if k == key {
			return topics[i%len(topics)]
		}
	}
	return ""
}

// receiveAll acks messages from msgs until every event of want has arrived
// at least once, and returns the receipts in arrival order. check, if set,
// is called on each message.
func receiveAll(t *testing.T, msgs <-chan *message.Message, want map[string]keyedEvent, timeout time.Duration,
	check func(*message.Message)) []keyedReceipt {
	t.Helper()
	var receipts []keyedReceipt
	seen := map[string]bool{}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for len(seen) < len(want) {
		select {
		case m, ok := <-msgs:
			require.True(t, ok, "subscription closed after %d of %d events", len(seen), len(want))
			r := receiptOf(t, m)
			if check != nil {
				check(m)
			}
			receipts = append(receipts, r)
			seen[r.ID] = true
			m.Ack()
		case <-deadline.C:
			t.Fatalf("received %d of %d events in %s", len(seen), len(want), timeout)
		}
	}
	return receipts
}
