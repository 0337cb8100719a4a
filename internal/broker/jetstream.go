package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	wnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults of the JetStream publisher (query parameters ack_timeout and
// max_pending of a nats:// URL).
const (
	// JetStreamAckTimeoutDefault bounds the wait for the acknowledgement of
	// each message, and the wait for room among the in-flight messages.
	JetStreamAckTimeoutDefault = 10 * time.Second
	// JetStreamMaxPendingDefault is the most messages the publisher has
	// sent and not yet seen acknowledged, over all concurrent Publish calls.
	JetStreamMaxPendingDefault = 4096
)

// jsAckGrace is added to the ack timeout before a Publish call stops
// waiting for acknowledgements on its own: nats.go fails every future
// itself after the ack timeout, so this is only a safety net.
const jsAckGrace = time.Second

// jsPollEvery is how many messages a Publish call sends between two looks
// at the acknowledgements already received, to stop sending once one
// message failed.
const jsPollEvery = 64

// jsPublisherConfig configures a jsPublisher.
type jsPublisherConfig struct {
	// AckTimeout bounds the wait for each message's acknowledgement and for
	// room among the in-flight messages. Defaults to
	// JetStreamAckTimeoutDefault.
	AckTimeout time.Duration
	// MaxPending caps the messages in flight (sent, not yet acknowledged)
	// over all Publish calls. Defaults to JetStreamMaxPendingDefault.
	MaxPending int
}

// jsPublisher publishes to NATS JetStream with pipelined asynchronous
// publishes: one Publish call sends all its messages without waiting, then
// waits for every acknowledgement. A call of n messages takes about one
// round trip instead of n (watermill-nats' JetStream publisher waits for
// each message's ack before it sends the next).
//
// Messages are encoded as watermill-nats' NATSMarshaler does (payload as the
// body, the UUID in the _watermill_message_uuid header, each metadata entry
// as a header), so watermill-nats subscribers decode them, and carry their
// UUID in Nats-Msg-Id, so JetStream drops a message published again within
// the stream's duplicate window.
//
// Publish returns nil only when JetStream acknowledged every message of the
// call. Otherwise it returns an error (which says how many were not
// acknowledged) and the caller publishes the whole call again: the
// messages that were stored are dropped as duplicates.
//
// Order: the messages of a call reach the server, and are stored, in order.
// When one message fails while later ones of the same call are stored (a
// message the stream rejects on its own, a lost ack for one message only),
// publishing the call again stores the failed message after them. A call
// stops sending once it sees a failure, which keeps that window small, but
// it is not zero; watermill-nats' publisher (publisher=watermill), which
// sends the next message only after the previous one was acknowledged, has
// none.
type jsPublisher struct {
	js      jetstream.JetStream
	streams *natsStreams
	cfg     jsPublisherConfig
	closed  atomic.Bool
}

// newJSPublisher returns a jsPublisher on nc that maps topics to subjects
// (and provisions streams) with streams.
func newJSPublisher(nc *nats.Conn, streams *natsStreams, cfg jsPublisherConfig) (*jsPublisher, error) {
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = JetStreamAckTimeoutDefault
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = JetStreamMaxPendingDefault
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxPending),
		// nats.go fails (and forgets) a future whose ack did not come
		// within this time, so that a lost ack neither blocks a Publish
		// call nor holds a slot among the in-flight messages forever.
		jetstream.WithPublishAsyncTimeout(cfg.AckTimeout),
	)
	if err != nil {
		return nil, err
	}
	return &jsPublisher{js: js, streams: streams, cfg: cfg}, nil
}

// Publish sends msgs to the subject of topic and returns once JetStream
// acknowledged all of them, or with an error when it did not.
func (p *jsPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.closed.Load() {
		return ErrPublisherClosed
	}
	subject, err := p.streams.ensure(context.Background(), topic)
	if err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	c := jsCall{subject: subject, futures: make([]jetstream.PubAckFuture, 0, len(msgs))}
	// Sending stops when no room among the in-flight messages was found
	// within the ack timeout of the call's start.
	sendDeadline := time.Now().Add(p.cfg.AckTimeout)
	for i, m := range msgs {
		if i > 0 && i%jsPollEvery == 0 && !c.poll() {
			break // a message failed: the call fails anyway
		}
		stall := time.Until(sendDeadline)
		if stall <= 0 {
			c.sendErr = fmt.Errorf("no room among %d in-flight messages within %s", p.cfg.MaxPending, p.cfg.AckTimeout)
			break
		}
		f, err := p.js.PublishMsgAsync(natsMessage(subject, m), jetstream.WithStallWait(stall))
		if err != nil {
			c.sendErr = fmt.Errorf("send message %s: %w", m.UUID, err)
			break
		}
		c.futures = append(c.futures, f)
	}
	c.wait(p.cfg.AckTimeout + jsAckGrace)
	if c.failed == 0 && c.sendErr == nil {
		return nil
	}
	if errors.Is(c.firstErr, jetstream.ErrNoStreamResponse) || errors.Is(c.sendErr, jetstream.ErrNoStreamResponse) {
		// No stream stores the subject (any more): look it up, and create
		// it if needed, on the next call.
		p.streams.forget(subject)
	}
	return c.err(len(msgs))
}

// Close makes later Publish calls fail with ErrPublisherClosed. The
// connection is closed by the Broker. It is idempotent.
func (p *jsPublisher) Close() error {
	p.closed.Store(true)
	return nil
}

// natsMessage encodes m as watermill-nats' NATSMarshaler does and sets
// Nats-Msg-Id to its UUID.
func natsMessage(subject string, m *message.Message) *nats.Msg {
	// NATSMarshaler.Marshal never fails.
	nm, _ := (&wnats.NATSMarshaler{}).Marshal(subject, m)
	nm.Header.Set(jetstream.MsgIDHeader, m.UUID)
	return nm
}

// jsCall is the state of one Publish call.
type jsCall struct {
	subject string
	futures []jetstream.PubAckFuture
	next    int   // futures[:next] are resolved
	sendErr error // why sending stopped early, if it did

	failed   int
	firstErr error
	firstID  string
}

// resolve records the outcome of futures[next]. With block it waits for it
// until timeout fires, otherwise it takes it only if already known. It
// reports whether it recorded an outcome.
func (c *jsCall) resolve(timeout <-chan time.Time, block bool) bool {
	f := c.futures[c.next]
	var err error
	if block {
		select {
		case <-f.Ok():
		case err = <-f.Err():
		case <-timeout:
			return false
		}
	} else {
		select {
		case <-f.Ok():
		case err = <-f.Err():
		default:
			return false
		}
	}
	if err != nil {
		c.failed++
		if c.firstErr == nil {
			c.firstErr = err
			c.firstID = f.Msg().Header.Get(jetstream.MsgIDHeader)
		}
	}
	c.next++
	return true
}

// poll records the outcomes already known, in order, and reports whether
// all of them were successes.
func (c *jsCall) poll() bool {
	for c.next < len(c.futures) && c.resolve(nil, false) {
	}
	return c.failed == 0
}

// wait records the outcome of every future, for at most timeout; futures
// still unresolved then count as failed.
func (c *jsCall) wait(timeout time.Duration) {
	if c.next == len(c.futures) {
		return
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	for c.next < len(c.futures) {
		if !c.resolve(t.C, true) {
			n := len(c.futures) - c.next
			c.failed += n
			if c.firstErr == nil {
				c.firstErr = fmt.Errorf("no acknowledgement within %s", timeout)
				c.firstID = c.futures[c.next].Msg().Header.Get(jetstream.MsgIDHeader)
			}
			c.next = len(c.futures)
		}
	}
}

// err describes the failure of a call of total messages, on one line. It
// wraps the first acknowledgement error and the error that stopped sending.
func (c *jsCall) err(total int) error {
	var parts []string
	var causes []any
	if c.failed > 0 {
		parts = append(parts, "%d of %d messages not acknowledged, first %s: %w")
		causes = append(causes, c.failed, total, c.firstID, c.firstErr)
	}
	if unsent := total - len(c.futures); unsent > 0 {
		cause := c.sendErr
		if cause == nil {
			cause = errors.New("sending stopped at the first failure")
		}
		parts = append(parts, "%d of %d messages not sent: %w")
		causes = append(causes, unsent, total, cause)
	}
	return fmt.Errorf("accord broker: publish to NATS subject %q: "+strings.Join(parts, "; "), append([]any{c.subject}, causes...)...)
}
