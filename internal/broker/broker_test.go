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
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
)

// testTimeout bounds every wait on a broker.
const testTimeout = 30 * time.Second

func testLogger(t *testing.T) *slog.Logger {
	t.Helper()
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// tWriter sends log output to t.Log, so that it shows only for failing tests.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func openBroker(t *testing.T, url string, opts *OpenOpts) *Broker {
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
		_, err := Open(context.Background(), "amqp://guest:hunter2@rabbit:5672/", nil)
		require.ErrorIs(t, err, ErrUnknownScheme)
		for _, s := range []string{`"amqp"`, "gochannel", "log", "nats://", "postgres://"} {
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
func natsAdmin(t *testing.T) nats.JetStreamContext {
	t.Helper()
	nc, err := nats.Connect(dbtest.NATSURL(), nats.Timeout(5*time.Second))
	require.NoError(t, err, "NATS with JetStream must run at %s (start nats-server -js, or set ACCORD_TEST_NATS_URL)", dbtest.NATSURL())
	t.Cleanup(nc.Close)
	js, err := nc.JetStream()
	require.NoError(t, err)
	return js
}

// deleteStreamOf removes the stream that stores subject when the test ends.
func deleteStreamOf(t *testing.T, js nats.JetStreamContext, subject string) {
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
