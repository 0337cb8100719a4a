package relay_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/broker"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// The relay in front of the brokers of internal/broker, on the real servers:
// watermill's universal pub/sub suite with the outbox as the publisher and
// the broker's own subscriber, and keyed events written while the relay
// runs. Both leave no exchange, queue or stream behind.

// suiteGroup is the consumer group of the suite's plain (not consumer
// group) constructor: every subscriber it makes shares it, as the replicas
// of one service would, so a new subscriber continues where a closed one
// stopped.
const suiteGroup = "accord_suite"

// universalFeatures are the features of both brokers with the relay in the
// loop.
//
//   - At least once: the relay may publish a row again after a crash, and
//     both brokers redeliver what was not acked.
//   - Order: the suite's messages carry no partition key, so they all share
//     the key "" and one relay lane, which publishes them one call at a time
//     in commit order; RabbitMQ queues and Redis streams keep that order,
//     and one consumer of a group gets them in it (prefetch 1 on RabbitMQ,
//     one entry at a time on Redis, a nacked message redelivered before the
//     next). With several consumers in a group, or on Redis after a consumer
//     died with messages pending (they are claimed after max_idle_time),
//     order is not kept, hence GuaranteedOrderWithSingleSubscriber.
//   - Persistent: rows stay in the outbox until published, the queue or
//     stream keeps them until acked, and a new subscriber of the group gets
//     what the group has not acked; not what the group already consumed
//     (NewSubscriberReceivesOldMessages false).
var universalFeatures = tests.Features{
	ConsumerGroups:                      true,
	ExactlyOnceDelivery:                 false,
	GuaranteedOrder:                     true,
	GuaranteedOrderWithSingleSubscriber: true,
	Persistent:                          true,
	RequireSingleInstance:               false,
	NewSubscriberReceivesOldMessages:    false,
	// Short volume: every test runs, with fewer messages (100 instead of
	// 10,000 in TestPublisherClose). The suite's messages all share the key
	// "" and so one relay lane, which publishes them one after the other.
	// At full volume, on a 2-core machine under -race, the RabbitMQ suite
	// takes about 80 s (watermill-amqp waits for the publisher confirm of
	// each message before it sends the next) and the Redis one 31 s alone,
	// but its TestPublisherClose took 44.7 s of its fixed 45 s read timeout
	// next to the RabbitMQ suite.
	ForceShort: true,
}

func TestUniversalPubSubRabbitMQ(t *testing.T) {
	t.Parallel()
	admin := rabbitAdmin(t)
	used := &usedNames{}
	t.Cleanup(func() { deleteRabbitObjects(t, admin, used) })
	runUniversalSuite(t, func(group string) string {
		return withQuery(dbtest.RabbitMQURL(), "consumer_group="+group)
	}, universalFeatures, used)
}

func TestUniversalPubSubRedisStream(t *testing.T) {
	t.Parallel()
	admin := redisAdmin(t)
	used := &usedNames{}
	t.Cleanup(func() { deleteStreams(t, admin, used.topicList()...) })
	runUniversalSuite(t, func(group string) string {
		// Entries a closed subscriber left pending are claimed by the next
		// one after a second, not the default minute: the suite closes
		// subscribers that hold messages and expects the rest to arrive
		// within its 15 s reads.
		return withQuery(dbtest.RedisURL(), "consumer_group="+group+"&max_idle_time=1s&claim_interval=250ms")
	}, universalFeatures, used)
}

// runUniversalSuite runs watermill's universal suite with one relay: the
// suite's publisher is the outbox (each Publish call its own transaction),
// the relay publishes the rows through the broker at brokerURL(group), and
// the suite subscribes with that broker's subscriber of the group.
func runUniversalSuite(t *testing.T, brokerURL func(group string) string, features tests.Features, used *usedNames) {
	runUniversalSuiteIn(t, dbtest.PostgresSchema(t), brokerURL, features, used)
}

// runUniversalSuiteIn is runUniversalSuite with the outbox in env.
func runUniversalSuiteIn(t *testing.T, env dbtest.Env, brokerURL func(group string) string, features tests.Features, used *usedNames) {
	start := time.Now()
	ob := newOutbox(t, env)
	dest := openTestBroker(t, brokerURL(suiteGroup))
	startRelay(t, env, &recordingPublisher{Publisher: dest.Publisher, used: used}, nil)
	t.Cleanup(func() {
		t.Logf("%s: universal suite with the relay in %s", dest.Name, time.Since(start).Round(time.Millisecond))
	})

	newPair := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
		b := openTestBroker(t, brokerURL(group))
		// A new outbox Publisher per pair: its Close is idempotent and
		// leaves the pool open.
		return ob.DBPublisher(env.DB), &pairSubscriber{b: b, group: group, used: used}
	}
	tests.TestPubSub(t, features,
		func(t *testing.T) (message.Publisher, message.Subscriber) { return newPair(t, suiteGroup) },
		newPair)
}

// pairSubscriber is the broker's subscriber for one pair of the suite. Its
// Close closes the pair's broker (connection included); the broker is also
// closed when the subtest ends, since the suite does not close every
// subscriber it makes. It records the topics and groups it used.
type pairSubscriber struct {
	b     *broker.Broker
	group string
	used  *usedNames

	mu      sync.Mutex
	cancels []context.CancelFunc
	ended   []chan struct{}
}

// pairCloseTimeout bounds how long Close waits for the subscriptions'
// channels to close.
const pairCloseTimeout = 30 * time.Second

func (s *pairSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.used.add(topic, s.group)
	// Close cancels the subscriptions first: watermill-sql's Subscriber.Close
	// waits for its consumers, and a consumer whose query waits for the
	// offsets row another subscriber of the group holds (while that one waits
	// for a reader that is gone) only returns once its context ends.
	ctx, cancel := context.WithCancel(ctx)
	inner, err := s.b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		cancel()
		return nil, err
	}
	// The messages go through a channel of our own, closed once the
	// adapter's is: Close waits for that, since watermill-sql's
	// Subscriber.Close returns before it closes its channels (its
	// consumers signal the wait group first), and the suite checks that
	// the channel is closed as soon as Close returns.
	out, ended := make(chan *message.Message), make(chan struct{})
	go func() {
		defer close(ended)
		defer close(out)
		for m := range inner {
			select {
			case out <- m:
			case <-ctx.Done():
				m.Nack()
			}
		}
	}()
	s.mu.Lock()
	s.cancels = append(s.cancels, cancel)
	s.ended = append(s.ended, ended)
	s.mu.Unlock()
	return out, nil
}

func (s *pairSubscriber) SubscribeInitialize(topic string) error {
	s.used.add(topic, s.group)
	if si, ok := s.b.Subscriber.(message.SubscribeInitializer); ok {
		return si.SubscribeInitialize(topic)
	}
	return nil
}

func (s *pairSubscriber) Close() error {
	s.mu.Lock()
	for _, cancel := range s.cancels {
		cancel()
	}
	ended := s.ended
	s.mu.Unlock()
	err := s.b.Close()
	deadline := time.After(pairCloseTimeout)
	for _, e := range ended {
		select {
		case <-e:
		case <-deadline:
			return errors.Join(err, fmt.Errorf("a subscription's channel was not closed %s after Close", pairCloseTimeout))
		}
	}
	return err
}

// recordingPublisher records the topics the relay publishes to.
type recordingPublisher struct {
	message.Publisher
	used *usedNames
}

func (p *recordingPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.used.add(topic, "")
	return p.Publisher.Publish(topic, msgs...)
}

// usedNames are the topics and consumer groups a test used, to clean up.
type usedNames struct {
	mu     sync.Mutex
	topics map[string]map[string]bool // topic → groups ("" for none)
}

func (u *usedNames) add(topic, group string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.topics == nil {
		u.topics = map[string]map[string]bool{}
	}
	if u.topics[topic] == nil {
		u.topics[topic] = map[string]bool{}
	}
	if group != "" {
		u.topics[topic][group] = true
	}
}

func (u *usedNames) topicList() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	list := make([]string, 0, len(u.topics))
	for topic := range u.topics {
		list = append(list, topic)
	}
	sort.Strings(list)
	return list
}

func (u *usedNames) groups(topic string) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var list []string
	for g := range u.topics[topic] {
		list = append(list, g)
	}
	return list
}

// Outbox on PostgreSQL → relay → RabbitMQ, with writers committing while
// the relay runs: the broker's subscriber (one consumer of a group) gets
// every event, each key's events in order, with the accord_key,
// accord_version and accord_created_at metadata.
func TestRelayToRabbitMQ(t *testing.T) {
	t.Parallel()
	admin := rabbitAdmin(t)
	topic := dbtest.RandomName("accord_relay.")
	used := &usedNames{}
	used.add(topic, "billing")
	t.Cleanup(func() { deleteRabbitObjects(t, admin, used) })
	// declare_queue: the relay's publisher declares the billing queue, so
	// the backlog it publishes before the consumer starts waits there.
	url := withQuery(dbtest.RabbitMQURL(), "consumer_group=billing")
	relayToBroker(t, withQuery(url, "declare_queue=true"), url, topic)
}

// Outbox on PostgreSQL → relay → Redis Streams, as TestRelayToRabbitMQ.
func TestRelayToRedisStream(t *testing.T) {
	t.Parallel()
	admin := redisAdmin(t)
	topic := dbtest.RandomName("accord_relay.")
	t.Cleanup(func() { deleteStreams(t, admin, topic) })
	// The consumer group is created at the start of the stream when the
	// consumer first subscribes, after the relay published the backlog.
	url := withQuery(dbtest.RedisURL(), "consumer_group=billing")
	relayToBroker(t, url, url, topic)
}

func relayToBroker(t *testing.T, relayURL, consumerURL, topic string) {
	start := time.Now()
	env := dbtest.PostgresSchema(t)
	ob := newOutbox(t, env)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dest := openTestBroker(t, relayURL)

	keys := crashKeys(20)
	sent := map[string]keyedEvent{}
	next := map[string]int64{}
	for range 5 { // a backlog of 5 × 20 keys × 25 = 2,500 events
		require.NoError(t, writeKeyed(ctx, env.DB, ob, topic, keys, 25, next, sent))
	}
	startRelay(t, env, dest.Publisher, &relay.Config{BatchSize: 200})

	consumer := openTestBroker(t, consumerURL)
	msgs, err := consumer.Subscriber.Subscribe(ctx, topic)
	require.NoError(t, err)
	// 2,000 more while the relay runs, one transaction at a time, so each
	// key's writes are serialized.
	for range 10 {
		require.NoError(t, writeKeyed(ctx, env.DB, ob, topic, keys, 10, next, sent))
	}

	receipts := receiveAll(t, msgs, sent, 60*time.Second, func(m *message.Message) {
		require.NotEmpty(t, m.Metadata.Get(outbox.MetadataKey), "message %s: %s", m.UUID, outbox.MetadataKey)
		created, err := time.Parse(time.RFC3339Nano, m.Metadata.Get(outbox.MetadataCreatedAt))
		require.NoError(t, err, "message %s: %s", m.UUID, outbox.MetadataCreatedAt)
		require.WithinDuration(t, time.Now(), created, 5*time.Minute)
	})
	dups := checkKeyedReceipts(t, sent, receipts)
	t.Logf("%d events on %d keys through %s in %s, %d redelivered", len(sent), len(keys), dest.Name,
		time.Since(start).Round(time.Millisecond), dups)
	waitFor(t, 10*time.Second, "an empty outbox", func() bool { return pending(t, env) == 0 })
}

// openTestBroker opens the broker at url until the test ends.
func openTestBroker(t *testing.T, url string) *broker.Broker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := broker.Open(ctx, url, brokerLogger(t))
	require.NoError(t, err, "open broker %s", broker.RedactURL(url))
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b
}

// brokerLogger logs warnings and errors of the transport to t.Log until the
// test's cleanup (adapters' goroutines may log a little after Close, and
// t.Log after the test is a panic and a data race).
func brokerLogger(t *testing.T) *slog.Logger {
	w := &guardedWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type guardedWriter struct {
	t       *testing.T
	mu      sync.Mutex
	stopped bool
}

func (w *guardedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *guardedWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}

func withQuery(u, query string) string {
	if strings.Contains(u, "?") {
		return u + "&" + query
	}
	return u + "?" + query
}

func rabbitAdmin(t *testing.T) *amqp091.Connection {
	t.Helper()
	conn, err := amqp091.Dial(dbtest.RabbitMQURL())
	require.NoError(t, err, "RabbitMQ is not reachable at %s; set ACCORD_TEST_AMQP_URL", broker.RedactURL(dbtest.RabbitMQURL()))
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// deleteRabbitObjects deletes the exchange of each used topic and the queue
// of each of its groups ("<topic>_<group>").
func deleteRabbitObjects(t *testing.T, conn *amqp091.Connection, used *usedNames) {
	ch, err := conn.Channel()
	if err != nil {
		t.Errorf("clean up RabbitMQ: %v", err)
		return
	}
	defer ch.Close()
	var errs []error
	for _, topic := range used.topicList() {
		for _, g := range used.groups(topic) {
			if _, err := ch.QueueDelete(topic+"_"+g, false, false, false); err != nil {
				errs = append(errs, fmt.Errorf("delete queue %s_%s: %w", topic, g, err))
			}
		}
		if err := ch.ExchangeDelete(topic, false, false); err != nil {
			errs = append(errs, fmt.Errorf("delete exchange %s: %w", topic, err))
		}
	}
	require.NoError(t, errors.Join(errs...))
}

func redisAdmin(t *testing.T) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(dbtest.RedisURL())
	require.NoError(t, err)
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.Ping(context.Background()).Err(),
		"Redis is not reachable at %s; set ACCORD_TEST_REDIS_URL", broker.RedactURL(dbtest.RedisURL()))
	return c
}

func deleteStreams(t *testing.T, c *redis.Client, streams ...string) {
	if len(streams) == 0 {
		return
	}
	require.NoError(t, c.Del(context.Background(), streams...).Err(), "delete streams")
}
