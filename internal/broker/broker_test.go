package broker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
)

// testTimeout bounds every wait on a broker.
const testTimeout = 30 * time.Second

func testLogger(t testing.TB) *slog.Logger {
	t.Helper()
	w := &tWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// tWriter sends log output to t.Log, so that it shows only for failing
// tests, until the test's cleanup: some adapters' goroutines (a Redis
// stream reader) log a little after their subscriber closed, and t.Log after
// the test is a panic and a data race.
type tWriter struct {
	t       testing.TB
	mu      sync.Mutex
	stopped bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *tWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}

func openBroker(t testing.TB, url string, opts *OpenOpts) *Broker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	b, err := OpenWith(ctx, url, testLogger(t), opts)
	require.NoError(t, err, "open broker %s", RedactURL(url))
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b
}

func newMessage(payload string) *message.Message {
	m := message.NewMessage(uuid.NewString(), []byte(payload))
	m.Metadata.Set("accord_key", "order-42")
	m.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	return m
}

// requireRoundTrip publishes two messages on topic, subscribes from the
// start and requires them back with their UUID, payload and metadata, in
// order when ordered is set. (GoChannel replays persisted messages to a new
// subscriber from one goroutine per message, so in any order.)
func requireRoundTrip(t *testing.T, b *Broker, topic string, ordered bool) {
	t.Helper()
	require.NotNil(t, b.Subscriber)
	sent := []*message.Message{newMessage(`{"id":1}`), newMessage(`{"id":2}`)}
	require.NoError(t, b.Publisher.Publish(topic, sent...))

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ch, err := b.Subscriber.Subscribe(ctx, topic)
	require.NoError(t, err)
	pending := map[string]*message.Message{}
	for _, m := range sent {
		pending[m.UUID] = m
	}
	for i := range sent {
		select {
		case got, ok := <-ch:
			require.True(t, ok, "subscription closed before %d messages arrived", len(sent))
			if ordered {
				require.Equal(t, sent[i].UUID, got.UUID, "message %d", i)
			}
			want := pending[got.UUID]
			require.NotNil(t, want, "unexpected or duplicate message %s", got.UUID)
			delete(pending, got.UUID)
			require.Equal(t, string(want.Payload), string(got.Payload))
			for k, v := range want.Metadata {
				require.Equal(t, v, got.Metadata.Get(k), "metadata %q", k)
			}
			got.Ack()
		case <-ctx.Done():
			require.FailNow(t, "timed out waiting for messages", "broker %s, topic %s, %d of %d missing", b.Name, topic, len(pending), len(sent))
		}
	}
}

func TestOpen(t *testing.T) {
	t.Parallel()

	t.Run("UnknownScheme", func(t *testing.T) {
		t.Parallel()
		_, err := Open(context.Background(), "mqtt://guest:hunter2@mosquitto:1883/", nil)
		require.ErrorIs(t, err, ErrUnknownScheme)
		for _, s := range []string{`"mqtt"`, "gochannel", "log", "nats://", "postgres://", "amqp://", "redis://", "kafka://"} {
			require.Contains(t, err.Error(), s)
		}
		require.NotContains(t, err.Error(), "hunter2")
	})

	t.Run("CloseIsIdempotent", func(t *testing.T) {
		t.Parallel()
		b, err := Open(context.Background(), "gochannel", nil)
		require.NoError(t, err)
		require.NoError(t, b.Close())
		require.NoError(t, b.Close())
	})
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://user:pass@127.0.0.1:4222", "nats://user:xxxxx@127.0.0.1:4222"},
		{"nats://s3cr3ttoken@127.0.0.1:4222", "nats://xxxxx@127.0.0.1:4222"},
		{"nats://a:p1@h1:4222,nats://b:p2@h2:4222", "nats://a:xxxxx@h1:4222,nats://b:xxxxx@h2:4222"},
		{"postgres://app:pw@db:5432/app?sslmode=disable", "postgres://app:xxxxx@db:5432/app?sslmode=disable"},
		{"postgres://db/app?password=pw&sslmode=disable", "postgres://db/app?password=xxxxx&sslmode=disable"},
		{"postgres://app@db/app", "postgres://app@db/app"},
		{"gochannel", "gochannel"},
		{"amqp://guest:guest@127.0.0.1:5672/orders?consumer_group=billing", "amqp://guest:xxxxx@127.0.0.1:5672/orders?consumer_group=billing"},
		{"redis://:s3cret@127.0.0.1:6379/0", "redis://:xxxxx@127.0.0.1:6379/0"},
		{"rediss://app:s3cret@redis:6380/2?maxlen=1000", "rediss://app:xxxxx@redis:6380/2?maxlen=1000"},
		{"kafka://k1:9092,k2:9092?consumer_group=billing", "kafka://k1:9092,k2:9092?consumer_group=billing"},
	} {
		require.Equal(t, tt.want, RedactURL(tt.in), "RedactURL(%q)", tt.in)
	}
}

func TestGoChannel(t *testing.T) {
	t.Parallel()
	for _, url := range []string{"", "gochannel", "inprocess", "GoChannel"} {
		t.Run(fmt.Sprintf("%q", url), func(t *testing.T) {
			t.Parallel()
			b := openBroker(t, url, nil)
			require.Equal(t, "gochannel", b.Name)
			requireRoundTrip(t, b, dbtest.RandomName("orders.created."), false)
		})
	}
}

func TestLog(t *testing.T) {
	t.Parallel()

	for _, url := range []string{"log", "stdout"} {
		t.Run(url, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			b := openBroker(t, url, &OpenOpts{Stdout: &buf})
			require.Nil(t, b.Subscriber)
			require.Equal(t, "log", b.Name)

			text := newMessage(`{"order":"42","note":"héllo"}`)
			binary := message.NewMessage(uuid.NewString(), []byte{0xff, 0x00, 0xfe})
			require.NoError(t, b.Publisher.Publish("orders.created", text, binary))
			require.True(t, strings.HasSuffix(buf.String(), "\n"))

			var lines []map[string]any
			sc := bufio.NewScanner(&buf)
			for sc.Scan() {
				var line map[string]any
				require.NoError(t, json.Unmarshal(sc.Bytes(), &line), "line %q", sc.Text())
				lines = append(lines, line)
			}
			require.Len(t, lines, 2)

			require.Equal(t, map[string]any{
				"uuid":  text.UUID,
				"topic": "orders.created",
				"metadata": map[string]any{
					"accord_key":  "order-42",
					"traceparent": text.Metadata.Get("traceparent"),
				},
				"payload": `{"order":"42","note":"héllo"}`,
			}, lines[0])
			require.Equal(t, map[string]any{
				"uuid":           binary.UUID,
				"topic":          "orders.created",
				"metadata":       map[string]any{},
				"payload_base64": base64.StdEncoding.EncodeToString([]byte{0xff, 0x00, 0xfe}),
			}, lines[1])

			require.NoError(t, b.Close())
			require.ErrorIs(t, b.Publisher.Publish("orders.created", newMessage("late")), ErrPublisherClosed)
		})
	}
}

// natsAdmin is a separate connection to inspect and clean up streams.
func natsAdmin(t testing.TB) nats.JetStreamContext {
	t.Helper()
	nc, err := nats.Connect(dbtest.NATSURL(), nats.Timeout(5*time.Second))
	require.NoError(t, err, "NATS with JetStream must run at %s (start nats-server -js, or set ACCORD_TEST_NATS_URL)", dbtest.NATSURL())
	t.Cleanup(nc.Close)
	js, err := nc.JetStream()
	require.NoError(t, err)
	return js
}

// deleteStreamOf removes the stream that stores subject when the test ends.
func deleteStreamOf(t testing.TB, js nats.JetStreamContext, subject string) {
	t.Helper()
	t.Cleanup(func() {
		name, err := js.StreamNameBySubject(subject)
		if err == nil {
			err = js.DeleteStream(name)
		}
		if err != nil {
			t.Logf("delete stream of %s: %v", subject, err)
		}
	})
}

func TestNATS(t *testing.T) {
	t.Parallel()

	t.Run("RoundTrip", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		prefix := dbtest.RandomName("accordtest")
		b := openBroker(t, dbtest.NATSURL()+"?subject_prefix="+prefix, nil)
		require.Contains(t, b.Name, "subject_prefix="+prefix)
		topic := "orders.created"
		deleteStreamOf(t, js, prefix+"."+topic)
		requireRoundTrip(t, b, topic, true)

		// The subject is the prefix and the topic; the stream is named after it.
		info, err := js.StreamInfo(prefix + "_orders_created")
		require.NoError(t, err)
		require.Equal(t, []string{prefix + ".orders.created"}, info.Config.Subjects)
	})

	t.Run("DeduplicatesOnUUID", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		b := openBroker(t, dbtest.NATSURL(), nil)
		topic := dbtest.RandomName("accordtest.dedup.")
		deleteStreamOf(t, js, topic)
		m := newMessage("once")
		require.NoError(t, b.Publisher.Publish(topic, m))
		require.NoError(t, b.Publisher.Publish(topic, m.Copy()))
		require.NoError(t, b.Publisher.Publish(topic, newMessage("other")))
		name, err := js.StreamNameBySubject(topic)
		require.NoError(t, err)
		info, err := js.StreamInfo(name)
		require.NoError(t, err)
		require.Equal(t, uint64(2), info.State.Msgs, "the second publish of %s must be dropped by JetStream", m.UUID)
	})

	t.Run("UsesExistingStream", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		prefix := dbtest.RandomName("accordtest")
		stream := strings.ToUpper(prefix)
		_, err := js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{prefix + ".>"}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = js.DeleteStream(stream) })

		b := openBroker(t, dbtest.NATSURL()+"?subject_prefix="+prefix, nil)
		requireRoundTrip(t, b, "payments.captured", true)
		info, err := js.StreamInfo(stream)
		require.NoError(t, err)
		require.Equal(t, uint64(2), info.State.Msgs)
	})

	t.Run("StreamNameCollision", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		base := dbtest.RandomName("accordtest")
		b := openBroker(t, dbtest.NATSURL(), nil)
		deleteStreamOf(t, js, base+".x")
		// "<base>.x" and "<base>_x" both map to stream "<base>_x".
		requireRoundTrip(t, b, base+".x", true)
		requireRoundTrip(t, b, base+"_x", true)
		info, err := js.StreamInfo(base + "_x")
		require.NoError(t, err)
		require.ElementsMatch(t, []string{base + ".x", base + "_x"}, info.Config.Subjects)
	})

	t.Run("InvalidSubject", func(t *testing.T) {
		t.Parallel()
		b := openBroker(t, dbtest.NATSURL(), nil)
		for _, topic := range []string{"", "orders created", "orders.*", "orders.>", "orders..created", ".orders", "orders.", "tab\there"} {
			err := b.Publisher.Publish(topic, newMessage("x"))
			require.ErrorIs(t, err, ErrInvalidSubject, "topic %q", topic)
			require.Contains(t, err.Error(), fmt.Sprintf("%q", topic))
			_, err = b.Subscriber.Subscribe(context.Background(), topic)
			require.ErrorIs(t, err, ErrInvalidSubject, "topic %q", topic)
		}
	})

	t.Run("InvalidURL", func(t *testing.T) {
		t.Parallel()
		for _, url := range []string{
			dbtest.NATSURL() + "?subject_prefix=bad prefix",
			dbtest.NATSURL() + "?subject_prefix=a..b",
			dbtest.NATSURL() + "?stream=x",
		} {
			_, err := Open(context.Background(), url, nil)
			require.ErrorIs(t, err, ErrInvalidURL, "url %q", url)
		}
	})

	t.Run("Unreachable", func(t *testing.T) {
		t.Parallel()
		_, err := Open(context.Background(), "nats://u:hunter2@127.0.0.1:1", nil)
		require.ErrorContains(t, err, "connect to NATS at nats://u:xxxxx@127.0.0.1:1")
		require.NotContains(t, err.Error(), "hunter2")
	})
}

func TestPostgres(t *testing.T) {
	t.Parallel()
	db := dbtest.Postgres(t)
	for _, scheme := range []string{"postgres://", "postgresql://"} {
		t.Run(scheme, func(t *testing.T) {
			t.Parallel()
			url := scheme + strings.TrimPrefix(dbtest.PostgresURL(), "postgres://")
			topic := dbtest.RandomName("accord_test_")
			t.Cleanup(func() {
				for _, table := range []string{"watermill_" + topic, "watermill_offsets_" + topic} {
					_, err := db.Exec(fmt.Sprintf(`DROP TABLE IF EXISTS %q`, table))
					require.NoError(t, err)
				}
			})
			b := openBroker(t, url, nil)
			require.Equal(t, RedactURL(url), b.Name)
			requireRoundTrip(t, b, topic, true)

			var n int
			require.NoError(t, db.QueryRow(fmt.Sprintf(`SELECT count(*) FROM %q`, "watermill_"+topic)).Scan(&n))
			require.Equal(t, 2, n)
		})
	}

	t.Run("Unreachable", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		_, err := Open(ctx, "postgres://app:hunter2@127.0.0.1:1/app?sslmode=disable&connect_timeout=5", nil)
		require.ErrorContains(t, err, "connect to PostgreSQL at postgres://app:xxxxx@127.0.0.1:1/app")
		require.NotContains(t, err.Error(), "hunter2")
	})
}

// initialize calls the subscriber's SubscribeInitialize, which RabbitMQ
// needs before publishing: it binds the consumer group's queue.
func initialize(t *testing.T, b *Broker, topic string) {
	t.Helper()
	si, ok := b.Subscriber.(message.SubscribeInitializer)
	require.True(t, ok, "%s: the subscriber is no message.SubscribeInitializer", b.Name)
	require.NoError(t, si.SubscribeInitialize(topic))
}

// amqpAdmin is a separate connection to inspect and clean up RabbitMQ.
func amqpAdmin(t *testing.T) *amqp091.Connection {
	t.Helper()
	conn, err := amqp091.Dial(dbtest.RabbitMQURL())
	require.NoError(t, err, "RabbitMQ must run at %s (or set ACCORD_TEST_AMQP_URL)", RedactURL(dbtest.RabbitMQURL()))
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func amqpChannel(t *testing.T, conn *amqp091.Connection) *amqp091.Channel {
	t.Helper()
	ch, err := conn.Channel()
	require.NoError(t, err)
	t.Cleanup(func() { _ = ch.Close() })
	return ch
}

// deleteAMQP removes topic's exchange and the queues of groups when the
// test ends.
func deleteAMQP(t *testing.T, conn *amqp091.Connection, topic string, groups ...string) {
	t.Helper()
	t.Cleanup(func() {
		// A channel of its own: a failed delete closes the channel.
		ch, err := conn.Channel()
		if err != nil {
			t.Logf("clean up RabbitMQ topic %s: %v", topic, err)
			return
		}
		defer ch.Close()
		for _, g := range groups {
			if _, err := ch.QueueDelete(amqpQueueName(topic, g), false, false, false); err != nil {
				t.Logf("delete queue %s: %v", amqpQueueName(topic, g), err)
			}
		}
		if err := ch.ExchangeDelete(topic, false, false); err != nil {
			t.Logf("delete exchange %s: %v", topic, err)
		}
	})
}

func amqpURL(query string) string {
	if query == "" {
		return dbtest.RabbitMQURL()
	}
	return dbtest.RabbitMQURL() + "?" + query
}

func TestRabbitMQ(t *testing.T) {
	t.Parallel()

	t.Run("RoundTrip", func(t *testing.T) {
		t.Parallel()
		admin := amqpAdmin(t)
		topic := dbtest.RandomName("accordtest.orders.")
		group := dbtest.RandomName("g")
		deleteAMQP(t, admin, topic, group)
		b := openBroker(t, amqpURL("consumer_group="+group), nil)
		require.NotContains(t, b.Name, "guest:guest", "the password is redacted")
		initialize(t, b, topic)
		requireRoundTrip(t, b, topic, true)
	})

	t.Run("ConsumerGroups", func(t *testing.T) {
		t.Parallel()
		admin := amqpAdmin(t)
		topic := dbtest.RandomName("accordtest.payments.")
		g1, g2 := dbtest.RandomName("g"), dbtest.RandomName("g")
		deleteAMQP(t, admin, topic, g1, g2)
		b1 := openBroker(t, amqpURL("consumer_group="+g1), nil)
		b2 := openBroker(t, amqpURL("consumer_group="+g2), nil)
		initialize(t, b1, topic)
		initialize(t, b2, topic)
		// Each group has its own queue bound to the topic's exchange: both
		// get both messages.
		requireRoundTrip(t, b1, topic, true)
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		ch, err := b2.Subscriber.Subscribe(ctx, topic)
		require.NoError(t, err)
		for i := range 2 {
			select {
			case m := <-ch:
				require.Equal(t, fmt.Sprintf(`{"id":%d}`, i+1), string(m.Payload))
				m.Ack()
			case <-ctx.Done():
				t.Fatalf("group %s got %d of 2 messages", g2, i)
			}
		}
	})

	t.Run("DeclareQueue", func(t *testing.T) {
		t.Parallel()
		admin := amqpAdmin(t)
		topic := dbtest.RandomName("accordtest.shipments.")
		group := dbtest.RandomName("g")
		deleteAMQP(t, admin, topic, group)
		b := openBroker(t, amqpURL("consumer_group="+group+"&declare_queue=true"), nil)
		// No subscriber yet: the publisher declares and binds the group's
		// queue, so the messages wait there.
		m := newMessage(`{"id":1}`)
		m.Metadata.Set("accord_version", "7")
		require.NoError(t, b.Publisher.Publish(topic, m))

		ch := amqpChannel(t, admin)
		q, err := ch.QueueDeclarePassive(amqpQueueName(topic, group), true, false, false, false, nil)
		require.NoError(t, err)
		require.Equal(t, 1, q.Messages, "publisher confirms: the message is in the queue when Publish returns")
		d, ok, err := ch.Get(q.Name, true)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, amqp091.Persistent, d.DeliveryMode)
		require.Equal(t, m.UUID, d.MessageId)
		require.Equal(t, m.UUID, d.Headers["_watermill_message_uuid"])
		require.Equal(t, "order-42", d.Headers["accord_key"])
		require.Equal(t, "7", d.Headers["accord_version"])
		require.Equal(t, `{"id":1}`, string(d.Body))

		// The exchange is a fanout: the group's queue is bound with an
		// empty routing key and gets what a subscriber of the topic gets.
		requireRoundTrip(t, b, topic, true)
	})

	t.Run("InvalidTopic", func(t *testing.T) {
		t.Parallel()
		b := openBroker(t, amqpURL(""), nil)
		for _, topic := range []string{"", "amq.orders", strings.Repeat("x", 256)} {
			err := b.Publisher.Publish(topic, newMessage("x"))
			require.ErrorIs(t, err, ErrInvalidTopic, "topic %q", topic)
			_, err = b.Subscriber.Subscribe(context.Background(), topic)
			require.ErrorIs(t, err, ErrInvalidTopic, "topic %q", topic)
		}
		// A 250-byte exchange name is fine, but not the queue "<topic>_accord".
		_, err := b.Subscriber.Subscribe(context.Background(), strings.Repeat("x", 250))
		require.ErrorIs(t, err, ErrInvalidTopic)
	})

	t.Run("InvalidURL", func(t *testing.T) {
		t.Parallel()
		for _, url := range []string{
			amqpURL("consumer_group="),
			amqpURL("consumer_group=amq.x"),
			amqpURL("declare_queue=maybe"),
			amqpURL("queue=x"),
			amqpURL("heartbeat=often"),
			"amqp://",
			"amqp://guest:guest@127.0.0.1:port/",
		} {
			_, err := Open(context.Background(), url, nil)
			require.ErrorIs(t, err, ErrInvalidURL, "url %q", url)
		}
	})

	t.Run("Unreachable", func(t *testing.T) {
		t.Parallel()
		_, err := Open(context.Background(), "amqp://u:hunter2@127.0.0.1:1/", nil)
		require.ErrorContains(t, err, "connect to RabbitMQ at amqp://u:xxxxx@127.0.0.1:1/")
		require.NotContains(t, err.Error(), "hunter2")
	})
}

// redisAdmin is a separate client to inspect and clean up Redis.
func redisAdmin(t *testing.T) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(dbtest.RedisURL())
	require.NoError(t, err)
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.Ping(context.Background()).Err(),
		"Redis must run at %s (or set ACCORD_TEST_REDIS_URL)", RedactURL(dbtest.RedisURL()))
	return c
}

// deleteStreams removes streams when the test ends.
func deleteStreams(t *testing.T, c *redis.Client, streams ...string) {
	t.Helper()
	t.Cleanup(func() {
		if err := c.Del(context.Background(), streams...).Err(); err != nil {
			t.Logf("delete streams %v: %v", streams, err)
		}
	})
}

func redisURL(query string) string {
	if query == "" {
		return dbtest.RedisURL()
	}
	return dbtest.RedisURL() + "?" + query
}

func TestRedisStream(t *testing.T) {
	t.Parallel()

	t.Run("RoundTrip", func(t *testing.T) {
		t.Parallel()
		admin := redisAdmin(t)
		topic := dbtest.RandomName("accordtest.orders.")
		deleteStreams(t, admin, topic)
		b := openBroker(t, redisURL("consumer_group="+dbtest.RandomName("g")), nil)
		// Published before the group exists: a new group starts at the
		// beginning of the stream.
		requireRoundTrip(t, b, topic, true)
		require.Equal(t, int64(2), admin.XLen(context.Background(), topic).Val())
	})

	t.Run("ConsumerGroupsAck", func(t *testing.T) {
		t.Parallel()
		admin := redisAdmin(t)
		topic := dbtest.RandomName("accordtest.payments.")
		deleteStreams(t, admin, topic)
		g1, g2 := dbtest.RandomName("g"), dbtest.RandomName("g")
		b1 := openBroker(t, redisURL("consumer_group="+g1), nil)
		b2 := openBroker(t, redisURL("consumer_group="+g2), nil)
		initialize(t, b1, topic)
		require.NoError(t, b1.Publisher.Publish(topic, newMessage(`{"id":1}`), newMessage(`{"id":2}`)))
		// Both groups get both messages. The subscriptions stay open until
		// the acks are in: watermill-redisstream acknowledges (XACK) after
		// Ack returns, with the subscription's context.
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		for _, b := range []*Broker{b1, b2} {
			ch, err := b.Subscriber.Subscribe(ctx, topic)
			require.NoError(t, err)
			for i := range 2 {
				select {
				case m := <-ch:
					require.Equal(t, fmt.Sprintf(`{"id":%d}`, i+1), string(m.Payload))
					m.Ack()
				case <-ctx.Done():
					t.Fatalf("%s got %d of 2 messages", b.Name, i)
				}
			}
		}
		for _, g := range []string{g1, g2} {
			require.Eventually(t, func() bool {
				p, err := admin.XPending(context.Background(), topic, g).Result()
				return err == nil && p.Count == 0
			}, testTimeout, 10*time.Millisecond, "group %s still has pending entries", g)
		}
	})

	t.Run("AbandonedMessageClaimed", func(t *testing.T) {
		t.Parallel()
		admin := redisAdmin(t)
		topic := dbtest.RandomName("accordtest.claims.")
		deleteStreams(t, admin, topic)
		url := redisURL("consumer_group=" + dbtest.RandomName("g") + "&max_idle_time=200ms&claim_interval=50ms")
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()

		first, err := OpenWith(ctx, url, testLogger(t), nil)
		require.NoError(t, err)
		sent := newMessage("abandoned")
		require.NoError(t, first.Publisher.Publish(topic, sent))
		ch, err := first.Subscriber.Subscribe(ctx, topic)
		require.NoError(t, err)
		select {
		case m := <-ch:
			require.Equal(t, sent.UUID, m.UUID)
		case <-ctx.Done():
			t.Fatal("first consumer got nothing")
		}
		require.NoError(t, first.Close()) // without acking

		// Another consumer of the group claims it after max_idle_time.
		second := openBroker(t, url, nil)
		ch, err = second.Subscriber.Subscribe(ctx, topic)
		require.NoError(t, err)
		select {
		case m := <-ch:
			require.Equal(t, sent.UUID, m.UUID)
			m.Ack()
		case <-ctx.Done():
			t.Fatal("the abandoned message was not claimed")
		}
	})

	t.Run("MaxLen", func(t *testing.T) {
		t.Parallel()
		admin := redisAdmin(t)
		topic := dbtest.RandomName("accordtest.trimmed.")
		deleteStreams(t, admin, topic)
		b := openBroker(t, redisURL("maxlen=10"), nil)
		for range 500 {
			require.NoError(t, b.Publisher.Publish(topic, newMessage("x")))
		}
		// MAXLEN ~: Redis trims whole nodes (100 entries by default).
		n := admin.XLen(context.Background(), topic).Val()
		require.GreaterOrEqual(t, n, int64(10))
		require.Less(t, n, int64(500))
	})

	t.Run("InvalidURL", func(t *testing.T) {
		t.Parallel()
		for _, url := range []string{
			redisURL("maxlen=-1"),
			redisURL("maxlen=many"),
			redisURL("max_idle_time=0s"),
			redisURL("claim_interval=soon"),
			redisURL("stream=x"),
			"redis://127.0.0.1:6379/notadb",
		} {
			_, err := Open(context.Background(), url, nil)
			require.ErrorIs(t, err, ErrInvalidURL, "url %q", url)
		}
	})

	t.Run("Unreachable", func(t *testing.T) {
		t.Parallel()
		_, err := Open(context.Background(), "redis://:hunter2@127.0.0.1:1/0", nil)
		require.ErrorContains(t, err, "connect to Redis at redis://:xxxxx@127.0.0.1:1/0")
		require.NotContains(t, err.Error(), "hunter2")
	})
}
