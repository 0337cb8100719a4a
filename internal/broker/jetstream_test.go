package broker

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
)

// newMessages returns n messages with the metadata the relay sets.
func newMessages(n int) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = newMessage(fmt.Sprintf(`{"n":%d}`, i))
		msgs[i].Metadata.Set("accord_version", strconv.Itoa(i+1))
	}
	return msgs
}

func copies(msgs []*message.Message) []*message.Message {
	out := make([]*message.Message, len(msgs))
	for i, m := range msgs {
		out[i] = m.Copy()
	}
	return out
}

// streamMsgs returns the number of messages in the stream that stores
// subject.
func streamMsgs(t *testing.T, js nats.JetStreamContext, subject string) uint64 {
	t.Helper()
	name, err := js.StreamNameBySubject(subject)
	require.NoError(t, err)
	info, err := js.StreamInfo(name)
	require.NoError(t, err)
	return info.State.Msgs
}

// natsTestURL is the test server's URL with query, for the async publisher
// unless query names a publisher.
func natsTestURL(query string) string {
	if !strings.Contains(query, "publisher=") {
		query = "publisher=async&" + query
	}
	return dbtest.NATSURL() + "?" + query
}

func TestJetStreamPublisher(t *testing.T) {
	t.Parallel()

	t.Run("IsOptIn", func(t *testing.T) {
		t.Parallel()
		// The default keeps per-key order on failures: one ack per message.
		b := openBroker(t, dbtest.NATSURL(), nil)
		require.IsType(t, &natsPublisher{}, b.Publisher)
		require.Equal(t, RedactURL(dbtest.NATSURL()), b.Name)
		w := openBroker(t, dbtest.NATSURL()+"?publisher=watermill", nil)
		require.IsType(t, &natsPublisher{}, w.Publisher)
		require.Equal(t, RedactURL(dbtest.NATSURL()), w.Name)
		a := openBroker(t, natsTestURL("publisher=async&ack_timeout=3s&max_pending=100"), nil)
		require.IsType(t, &jsPublisher{}, a.Publisher)
		require.Equal(t, 3*time.Second, a.Publisher.(*jsPublisher).cfg.AckTimeout)
		require.Equal(t, 100, a.Publisher.(*jsPublisher).cfg.MaxPending)
		require.Equal(t, RedactURL(dbtest.NATSURL())+"?ack_timeout=3s&max_pending=100&publisher=async", a.Name)
	})

	t.Run("InvalidURL", func(t *testing.T) {
		t.Parallel()
		for query, want := range map[string]string{
			"publisher=sync":                     `publisher "sync"`,
			"ack_timeout=10":                     `ack_timeout "10"`,
			"ack_timeout=-1s":                    `ack_timeout "-1s"`,
			"max_pending=0":                      `max_pending "0"`,
			"max_pending=many":                   `max_pending "many"`,
			"publisher=watermill&max_pending=5":  "max_pending applies to publisher=async only",
			"publisher=watermill&ack_timeout=5s": "ack_timeout applies to publisher=async only",
		} {
			_, err := Open(context.Background(), natsTestURL(query), nil)
			require.ErrorIs(t, err, ErrInvalidURL, "query %q", query)
			require.ErrorContains(t, err, want, "query %q", query)
		}
	})

	// A watermill-nats subscriber that knows nothing of Accord decodes
	// what the publisher sent: UUID, payload, metadata, in order; the
	// stored message carries the UUID in Nats-Msg-Id too.
	t.Run("RoundTripWatermillSubscriber", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		b := openBroker(t, dbtest.NATSURL(), nil)
		subject := dbtest.RandomName("accordtest.roundtrip.")
		deleteStreamOf(t, js, subject)
		sent := newMessages(50)
		require.NoError(t, b.Publisher.Publish(subject, sent...))

		sub, err := wnats.NewSubscriber(wnats.SubscriberConfig{
			URL:          dbtest.NATSURL(),
			Unmarshaler:  &wnats.NATSMarshaler{},
			CloseTimeout: 5 * time.Second,
			JetStream: wnats.JetStreamConfig{
				SubscribeOptions: []nats.SubOpt{nats.DeliverAll(), nats.AckExplicit()},
			},
		}, watermill.NopLogger{})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, sub.Close()) })
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		ch, err := sub.Subscribe(ctx, subject)
		require.NoError(t, err)
		for i, want := range sent {
			select {
			case got := <-ch:
				require.Equal(t, want.UUID, got.UUID, "message %d", i)
				require.Equal(t, string(want.Payload), string(got.Payload))
				require.Equal(t, want.Metadata, got.Metadata, "message %d: exactly the metadata sent", i)
				got.Ack()
			case <-ctx.Done():
				t.Fatalf("received %d of %d messages", i, len(sent))
			}
		}

		raw, err := js.GetMsg(streamNameOf(t, js, subject), 1)
		require.NoError(t, err)
		require.Equal(t, sent[0].UUID, raw.Header.Get(wnats.WatermillUUIDHdr))
		require.Equal(t, sent[0].UUID, raw.Header.Get(jetstream.MsgIDHeader))
	})

	// A call published again (the relay's retry), whole or in part, adds
	// only the messages not stored yet.
	t.Run("DeduplicatesRepublishedBatch", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		b := openBroker(t, dbtest.NATSURL(), nil)
		subject := dbtest.RandomName("accordtest.dedup.")
		deleteStreamOf(t, js, subject)
		batch := newMessages(200)
		require.NoError(t, b.Publisher.Publish(subject, batch...))
		require.Equal(t, uint64(200), streamMsgs(t, js, subject))
		require.NoError(t, b.Publisher.Publish(subject, copies(batch)...))
		require.Equal(t, uint64(200), streamMsgs(t, js, subject), "the republished batch must be dropped")
		mixed := append(copies(batch[100:]), newMessages(50)...)
		require.NoError(t, b.Publisher.Publish(subject, mixed...))
		require.Equal(t, uint64(250), streamMsgs(t, js, subject))
	})

	// No stream stores the subject and the publisher does not provision
	// one: every message fails, and Publish says so.
	t.Run("NoStreamFails", func(t *testing.T) {
		t.Parallel()
		subject := dbtest.RandomName("accordtest.nostream.")
		p := newTestJSPublisher(t, jsPublisherConfig{}, subject)
		err := p.Publish(subject, newMessages(3)...)
		require.ErrorIs(t, err, jetstream.ErrNoStreamResponse)
		require.ErrorContains(t, err, "3 of 3 messages not acknowledged")
		require.ErrorContains(t, err, fmt.Sprintf("%q", subject))
	})

	// The stream rejects some messages of a call (it is full and discards
	// new ones): Publish fails although the others were stored, and
	// reports how many failed.
	t.Run("RejectedMessagesFail", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		prefix := dbtest.RandomName("accordtest")
		stream := strings.ToUpper(prefix)
		_, err := js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{prefix + ".>"},
			MaxMsgs: 5, Discard: nats.DiscardNew})
		require.NoError(t, err)
		t.Cleanup(func() { _ = js.DeleteStream(stream) })

		b := openBroker(t, natsTestURL("subject_prefix="+prefix), nil)
		err = b.Publisher.Publish("orders", newMessages(10)...)
		require.ErrorContains(t, err, "5 of 10 messages not acknowledged")
		require.ErrorContains(t, err, "maximum messages exceeded")
		info, err := js.StreamInfo(stream)
		require.NoError(t, err)
		require.Equal(t, uint64(5), info.State.Msgs)

		// In a long call, sending stops soon after the first failure;
		// every message is either stored, failed or not sent.
		err = js.PurgeStream(stream)
		require.NoError(t, err)
		err = b.Publisher.Publish("orders", newMessages(5000)...)
		require.Error(t, err)
		failed, unsent := 0, 0
		if m := regexp.MustCompile(`(\d+) of 5000 messages not acknowledged`).FindStringSubmatch(err.Error()); m != nil {
			failed, _ = strconv.Atoi(m[1])
		}
		if m := regexp.MustCompile(`(\d+) of 5000 messages not sent`).FindStringSubmatch(err.Error()); m != nil {
			unsent, _ = strconv.Atoi(m[1])
		}
		t.Logf("5000 messages, 5 stored: %d failed, %d not sent", failed, unsent)
		require.Equal(t, 4995, failed+unsent, "error: %v", err)
		require.Positive(t, failed)
		require.NotContains(t, err.Error(), "\n")
	})

	// An operator deleted the stream after the publisher provisioned it:
	// the call fails, and the next one (the relay's retry) creates the
	// stream again.
	t.Run("DeletedStreamIsProvisionedAgain", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		b := openBroker(t, natsTestURL(""), nil)
		subject := dbtest.RandomName("accordtest.deleted.")
		deleteStreamOf(t, js, subject)
		require.NoError(t, b.Publisher.Publish(subject, newMessages(2)...))
		require.NoError(t, js.DeleteStream(streamNameOf(t, js, subject)))

		batch := newMessages(20)
		err := b.Publisher.Publish(subject, batch...)
		require.ErrorIs(t, err, jetstream.ErrNoStreamResponse)
		require.NoError(t, b.Publisher.Publish(subject, batch...))
		require.Equal(t, uint64(20), streamMsgs(t, js, subject))
	})

	// Something answers on the subject, but not JetStream: no ack ever
	// comes, and Publish gives up after the ack timeout.
	t.Run("AckTimeout", func(t *testing.T) {
		t.Parallel()
		subject := dbtest.RandomName("accordtest.silent.")
		nc, err := nats.Connect(dbtest.NATSURL())
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		sub, err := nc.SubscribeSync(subject) // takes the messages, never replies
		require.NoError(t, err)
		require.NoError(t, nc.Flush())
		t.Cleanup(func() { _ = sub.Unsubscribe() })

		p := newTestJSPublisher(t, jsPublisherConfig{AckTimeout: 300 * time.Millisecond}, subject)
		start := time.Now()
		err = p.Publish(subject, newMessages(4)...)
		require.ErrorIs(t, err, jetstream.ErrAsyncPublishTimeout)
		require.ErrorContains(t, err, "4 of 4 messages not acknowledged")
		require.Less(t, time.Since(start), 300*time.Millisecond+jsAckGrace)
		require.Zero(t, p.js.PublishAsyncPending(), "timed out messages must not hold in-flight slots")
	})

	// 10,000 messages in one call, 20 times the in-flight cap: all are
	// sent, acknowledged and stored, in order.
	t.Run("BigBatch", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		b := openBroker(t, natsTestURL("max_pending=500"), nil)
		subject := dbtest.RandomName("accordtest.big.")
		deleteStreamOf(t, js, subject)
		batch := newMessages(10_000)
		start := time.Now()
		require.NoError(t, b.Publisher.Publish(subject, batch...))
		t.Logf("10,000 messages in one call in %s", time.Since(start).Round(time.Millisecond))
		require.Equal(t, uint64(10_000), streamMsgs(t, js, subject))
		stream := streamNameOf(t, js, subject)
		for _, seq := range []uint64{1, 5_000, 10_000} {
			raw, err := js.GetMsg(stream, seq)
			require.NoError(t, err)
			require.Equal(t, batch[seq-1].UUID, raw.Header.Get(jetstream.MsgIDHeader), "sequence %d", seq)
		}
	})

	// Concurrent calls (the relay's lanes) share the in-flight cap.
	t.Run("ConcurrentCalls", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		prefix := dbtest.RandomName("accordtest")
		b := openBroker(t, natsTestURL("max_pending=300&subject_prefix="+prefix), nil)
		const lanes, calls, perCall = 8, 5, 200
		var wg sync.WaitGroup
		errs := make(chan error, lanes*calls)
		for lane := range lanes {
			topic := "lane" + strconv.Itoa(lane)
			deleteStreamOf(t, js, prefix+"."+topic)
			wg.Go(func() {
				for range calls {
					errs <- b.Publisher.Publish(topic, newMessages(perCall)...)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		for lane := range lanes {
			require.Equal(t, uint64(calls*perCall), streamMsgs(t, js, prefix+".lane"+strconv.Itoa(lane)))
		}
	})

	t.Run("Closed", func(t *testing.T) {
		t.Parallel()
		b := openBroker(t, natsTestURL(""), nil)
		require.NoError(t, b.Close())
		require.ErrorIs(t, b.Publisher.Publish("orders", newMessage("late")), ErrPublisherClosed)
	})

	t.Run("EmptyCall", func(t *testing.T) {
		t.Parallel()
		p := newTestJSPublisher(t, jsPublisherConfig{}, "accordtest.empty")
		require.NoError(t, p.Publish("accordtest.empty"))
		require.ErrorIs(t, p.Publish("bad topic"), ErrInvalidSubject)
	})
}

// newTestJSPublisher returns a publisher on its own connection that
// provisions no stream: the subjects listed count as provisioned, and any
// other topic fails the stream lookup.
func newTestJSPublisher(t *testing.T, cfg jsPublisherConfig, subjects ...string) *jsPublisher {
	t.Helper()
	nc, err := nats.Connect(dbtest.NATSURL())
	require.NoError(t, err, "NATS with JetStream must run at %s", dbtest.NATSURL())
	t.Cleanup(nc.Close)
	legacy, err := nc.JetStream()
	require.NoError(t, err)
	streams := &natsStreams{js: legacy, log: testLogger(t), ensured: map[string]struct{}{}}
	for _, s := range subjects {
		streams.ensured[s] = struct{}{}
	}
	p, err := newJSPublisher(nc, streams, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

func streamNameOf(t *testing.T, js nats.JetStreamContext, subject string) string {
	t.Helper()
	name, err := js.StreamNameBySubject(subject)
	require.NoError(t, err)
	return name
}

// BenchmarkJetStreamPublish publishes b.N messages in Publish calls of 500
// (the relay's calls are up to its batch size) through each NATS publisher,
// on one subject, and reports messages per second.
//
//	go test -run x -bench JetStream -benchtime 20000x ./internal/broker
func BenchmarkJetStreamPublish(b *testing.B) {
	for _, publisher := range []string{natsPublisherAsync, natsPublisherWatermill} {
		b.Run(publisher, func(b *testing.B) {
			js := natsAdmin(b)
			prefix := dbtest.RandomName("accordbench")
			br, err := Open(context.Background(), natsTestURL("publisher="+publisher+"&subject_prefix="+prefix), nil)
			require.NoError(b, err)
			b.Cleanup(func() { require.NoError(b, br.Close()) })
			deleteStreamOf(b, js, prefix+".orders")
			// A payload and metadata the size of a typical event.
			payload := `{"order_id":"` + uuid.NewString() + `","amount":4200,"currency":"EUR","lines":[{"sku":"A-1","qty":2}]}`
			msgs := make([]*message.Message, b.N)
			for i := range msgs {
				msgs[i] = newMessage(payload)
				msgs[i].Metadata.Set("accord_created_at", time.Now().UTC().Format(time.RFC3339Nano))
			}
			// Provision the stream outside the measurement.
			require.NoError(b, br.Publisher.Publish("orders", newMessage("warm-up")))
			b.ResetTimer()
			for start := 0; start < len(msgs); start += 500 {
				if err := br.Publisher.Publish("orders", msgs[start:min(start+500, len(msgs))]...); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
