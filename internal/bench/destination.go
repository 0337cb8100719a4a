package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"github.com/accordgo/accord/internal/broker"
)

// DestinationInProcess is the Destination (and Result.Destination) of the
// in-process sink, the default.
const DestinationInProcess = "inprocess"

// isInProcess reports whether dest names the in-process sink rather than a
// broker.
func isInProcess(dest string) bool {
	return dest == "" || strings.EqualFold(dest, DestinationInProcess)
}

// destinationScheme returns the lower-case scheme of a destination URL.
func destinationScheme(dest string) string {
	s, _, _ := strings.Cut(strings.ToLower(dest), ":")
	return s
}

// checkDestination rejects destinations the benchmark cannot read back.
func checkDestination(dest string) error {
	if isInProcess(dest) {
		return nil
	}
	switch destinationScheme(dest) {
	case "gochannel":
		return fmt.Errorf("Destination %q: a GoChannel lives in one broker.Open and every relay opens its own; use %q for the in-process destination", dest, DestinationInProcess)
	case "log", "stdout":
		return fmt.Errorf("Destination %q: a write-only broker; the benchmark must subscribe to what arrives", dest)
	}
	return nil
}

// subscriptionEndTimeout bounds the wait for a subscription's channel to
// close once the phase cancelled it.
const subscriptionEndTimeout = 30 * time.Second

// destination is where the relays (or the forwarder) of one phase publish
// and where the benchmark sees what arrived.
//
// In process, the phase's sink is the publisher. With a broker, every
// publisher() call opens the broker anew (each relay gets its own
// connection, as separate relay processes would); the benchmark opens the
// broker once more for itself, subscribes to the phase's topic before
// anything is published, and records every message it receives in the
// sink, then acks it. The topic is unique to the run and the phase
// (<schema>.<phase>), so nothing left on the broker by an earlier run can
// count; close removes what the broker created for it.
type destination struct {
	r     *runner
	topic string
	sink  *sink

	pubs      []*broker.Broker
	subBroker *broker.Broker // the benchmark's own connection; nil when not subscribed
	sub       *background    // reads the subscription; nil when not subscribed
	cancelSub context.CancelFunc
	// muted silences subBroker's logs once the phase ends: a subscriber
	// being torn down (or reading a topic just removed) logs errors that
	// mean nothing here.
	muted atomic.Bool

	closeOnce sync.Once
	closeErr  error
}

// newDestination returns the destination of phase, expecting target
// events. With a broker and subscribe, it subscribes to the phase's topic
// before it returns.
func (r *runner) newDestination(ctx context.Context, phase string, target int, subscribe bool) (*destination, error) {
	d := &destination{r: r, topic: r.schema + "." + phase, sink: newSink(r.base, target)}
	if isInProcess(r.opts.Destination) {
		d.sink.delay = r.opts.PublishLatency
		return d, nil
	}
	if !subscribe {
		return d, nil
	}
	logger := slog.New(muteHandler{inner: r.logger.Handler(), muted: &d.muted})
	b, err := broker.Open(ctx, r.opts.Destination, logger)
	if err != nil {
		return nil, fmt.Errorf("accord bench: %s: open destination: %w", phase, err)
	}
	d.subBroker = b
	if init, ok := b.Subscriber.(message.SubscribeInitializer); ok {
		// Create the stream / queue / consumer group at its start now, so
		// that nothing published from here on can be missed.
		if err := init.SubscribeInitialize(d.topic); err != nil {
			_ = d.close(ctx)
			return nil, fmt.Errorf("accord bench: %s: %w", phase, err)
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	ch, err := b.Subscriber.Subscribe(sctx, d.topic)
	if err != nil {
		cancel()
		_ = d.close(ctx)
		return nil, fmt.Errorf("accord bench: %s: subscribe to %s: %w", phase, d.topic, err)
	}
	d.cancelSub = cancel
	d.sub = goBackground(func() error {
		for m := range ch {
			d.sink.record(r.since(), m)
			m.Ack()
		}
		if sctx.Err() == nil {
			return fmt.Errorf("the subscription to %s on %s ended", d.topic, b.Name)
		}
		return nil
	})
	return d, nil
}

// publisher returns a publisher into the destination: the sink in process,
// a newly opened broker otherwise (closed by close).
func (d *destination) publisher(ctx context.Context) (message.Publisher, error) {
	if isInProcess(d.r.opts.Destination) {
		return d.sink, nil
	}
	b, err := broker.Open(ctx, d.r.opts.Destination, d.r.logger)
	if err != nil {
		return nil, fmt.Errorf("accord bench: open destination: %w", err)
	}
	d.pubs = append(d.pubs, b)
	return b.Publisher, nil
}

// stops returns what ends a phase early when it returns: the subscription
// reader, if any.
func (d *destination) stops() []*background {
	if d.sub == nil {
		return nil
	}
	return []*background{d.sub}
}

// close closes the publishers, ends the subscription and removes the topic
// from the broker. A topic that cannot be removed is reported on the
// progress writer, not as an error. Call it after the relays stopped.
func (d *destination) close(ctx context.Context) error {
	d.closeOnce.Do(func() {
		var errs []error
		for _, b := range d.pubs {
			if err := b.Close(); err != nil {
				errs = append(errs, fmt.Errorf("accord bench: close destination publisher: %w", err))
			}
		}
		if d.subBroker != nil {
			d.muted.Store(true)
			if d.cancelSub != nil {
				d.cancelSub()
				select {
				case <-d.sub.done:
				case <-time.After(subscriptionEndTimeout):
					d.r.logf("the subscription to %s did not end within %s", d.topic, subscriptionEndTimeout)
				}
			}
			_ = d.subBroker.Close()
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if err := removeTopic(rctx, d.r.opts.Destination, d.topic); err != nil {
				d.r.logf("could not remove topic %s from %s: %v (remove it by hand)", d.topic, broker.RedactURL(d.r.opts.Destination), err)
			}
		}
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

// errRemoveUnsupported is returned by removeTopic for brokers whose topics
// it does not know how to remove.
var errRemoveUnsupported = errors.New("the benchmark does not remove topics from this kind of broker")

// removeTopic deletes what internal/broker created for topic on the broker
// at rawURL. internal/broker has no call for this, so it repeats the
// broker's topic mapping (see nats.go, amqp.go and redis.go there):
//
//   - NATS JetStream: the stream that stores "<subject_prefix>.<topic>" is
//     deleted when it stores that subject only (the stream the broker
//     created); a stream that stores other subjects too is only purged of
//     the topic's messages.
//   - RabbitMQ: the queue "<topic>_<consumer_group>" and the exchange
//     "<topic>".
//   - Redis: the stream (key) "<topic>" with its consumer groups.
func removeTopic(ctx context.Context, rawURL, topic string) error {
	switch destinationScheme(rawURL) {
	case "nats":
		return removeNATSTopic(ctx, rawURL, topic)
	case "amqp", "amqps":
		return removeAMQPTopic(rawURL, topic)
	case "redis", "rediss":
		return removeRedisTopic(ctx, rawURL, topic)
	}
	return errRemoveUnsupported
}

func removeNATSTopic(ctx context.Context, rawURL, topic string) error {
	servers, rawQuery, _ := strings.Cut(rawURL, "?")
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return err
	}
	subject := topic
	if p := strings.TrimSuffix(q.Get("subject_prefix"), "."); p != "" {
		subject = p + "." + topic
	}
	nc, err := nats.Connect(servers, nats.Name("accord-bench"), nats.Timeout(5*time.Second), nats.MaxReconnects(0))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		return err
	}
	name, err := js.StreamNameBySubject(subject, nats.Context(ctx))
	if errors.Is(err, nats.ErrNoMatchingStream) {
		return nil
	}
	if err != nil {
		return err
	}
	info, err := js.StreamInfo(name, nats.Context(ctx))
	if err != nil {
		return err
	}
	if slices.Equal(info.Config.Subjects, []string{subject}) {
		return js.DeleteStream(name, nats.Context(ctx))
	}
	if err := js.PurgeStream(name, &nats.StreamPurgeRequest{Subject: subject}, nats.Context(ctx)); err != nil {
		return err
	}
	// The broker adds the subject to a stream whose name it needed; take it
	// out again.
	if i := slices.Index(info.Config.Subjects, subject); i >= 0 {
		cfg := info.Config
		cfg.Subjects = slices.Delete(slices.Clone(cfg.Subjects), i, i+1)
		_, err = js.UpdateStream(&cfg, nats.Context(ctx))
	}
	return err
}

func removeAMQPTopic(rawURL, topic string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	q := u.Query()
	group := q.Get("consumer_group")
	if group == "" {
		group = broker.ConsumerGroupDefault
	}
	q.Del("consumer_group")
	q.Del("declare_queue")
	u.RawQuery = q.Encode()
	conn, err := amqp091.DialConfig(u.String(), amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if _, err := ch.QueueDelete(topic+"_"+group, false, false, false); err != nil {
		return err
	}
	return ch.ExchangeDelete(topic, false, false)
}

func removeRedisTopic(ctx context.Context, rawURL, topic string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	q := u.Query()
	for _, k := range []string{"consumer_group", "maxlen", "max_idle_time", "claim_interval"} {
		q.Del(k)
	}
	u.RawQuery = q.Encode()
	opts, err := redis.ParseURL(u.String())
	if err != nil {
		return err
	}
	c := redis.NewClient(opts)
	defer c.Close()
	return c.Del(ctx, topic).Err()
}

// muteHandler passes log records to inner until muted is set.
type muteHandler struct {
	inner slog.Handler
	muted *atomic.Bool
}

func (h muteHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return !h.muted.Load() && h.inner.Enabled(ctx, l)
}

func (h muteHandler) Handle(ctx context.Context, rec slog.Record) error {
	if h.muted.Load() {
		return nil
	}
	return h.inner.Handle(ctx, rec)
}

func (h muteHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return muteHandler{inner: h.inner.WithAttrs(attrs), muted: h.muted}
}

func (h muteHandler) WithGroup(name string) slog.Handler {
	return muteHandler{inner: h.inner.WithGroup(name), muted: h.muted}
}
