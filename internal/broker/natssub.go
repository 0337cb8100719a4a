package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	wnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
)

// natsAckWait is how long a subscription waits for the consumer to ack or
// nack a message before it gives up on it; JetStream redelivers it after
// the same time.
const natsAckWait = 30 * time.Second

// ErrSubscriberClosed is returned by Subscribe after the subscriber was
// closed.
var ErrSubscriberClosed = errors.New("accord broker: subscriber closed")

// natsSubscriber subscribes to each topic's subject with an ephemeral
// JetStream push consumer that starts at the beginning of the stream, acks
// explicitly and hands the messages over one at a time: the next message
// comes once the previous one was acked or nacked (or natsAckWait passed).
// Messages are decoded as watermill-nats' NATSMarshaler encodes them.
//
// It replaces watermill-nats' subscriber, which closes a subscription's
// channel while its message handler may still be sending on it (a data
// race, and a "send on closed channel" panic when the handler's select
// picks the send): here a subscription's channel is closed only after its
// handler returned, and acks are sent before the consumer is removed.
type natsSubscriber struct {
	js      nats.JetStreamContext
	streams *natsStreams
	log     *slog.Logger
	ackWait time.Duration

	mu     sync.Mutex
	closed bool
	subs   map[*natsSubscription]struct{}
}

func newNATSSubscriber(js nats.JetStreamContext, streams *natsStreams, log *slog.Logger) *natsSubscriber {
	return &natsSubscriber{js: js, streams: streams, log: log, ackWait: natsAckWait,
		subs: map[*natsSubscription]struct{}{}}
}

// Subscribe returns the messages of topic's stream from its beginning,
// until ctx ends or the subscriber is closed; the channel is then closed.
func (s *natsSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	subject, err := s.streams.ensure(ctx, topic)
	if err != nil {
		return nil, err
	}
	sub := &natsSubscription{
		ctx:     ctx,
		subject: subject,
		ackWait: s.ackWait,
		log:     s.log,
		out:     make(chan *message.Message),
		done:    make(chan struct{}),
		ended:   make(chan struct{}),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrSubscriberClosed
	}
	sub.ns, err = s.js.Subscribe(subject, sub.handle,
		nats.DeliverAll(),
		nats.AckExplicit(),
		nats.AckWait(s.ackWait),
		// The handler acks, naks or lets the ack wait expire itself.
		nats.ManualAck(),
	)
	if err != nil {
		return nil, fmt.Errorf("accord broker: subscribe to NATS subject %q: %w", subject, err)
	}
	s.subs[sub] = struct{}{}
	go func() {
		select {
		case <-ctx.Done():
		case <-sub.done:
		}
		sub.stop()
		s.mu.Lock()
		delete(s.subs, sub)
		s.mu.Unlock()
	}()
	return sub.out, nil
}

// SubscribeInitialize provisions the topic's stream (message.SubscribeInitializer).
func (s *natsSubscriber) SubscribeInitialize(topic string) error {
	_, err := s.streams.ensure(context.Background(), topic)
	return err
}

// Close ends every subscription and waits until their channels are closed.
// It is idempotent; it does not close the connection.
func (s *natsSubscriber) Close() error {
	s.mu.Lock()
	s.closed = true
	subs := make([]*natsSubscription, 0, len(s.subs))
	for sub := range s.subs {
		subs = append(subs, sub)
	}
	s.mu.Unlock()
	for _, sub := range subs {
		sub.stop()
	}
	return nil
}

// natsSubscription is one Subscribe call.
type natsSubscription struct {
	ctx     context.Context
	subject string
	ackWait time.Duration
	log     *slog.Logger
	ns      *nats.Subscription
	out     chan *message.Message

	mu       sync.Mutex
	stopping bool
	handlers sync.WaitGroup // running handle calls
	done     chan struct{}  // closed when stopping starts
	stopOnce sync.Once
	ended    chan struct{} // closed once out is closed
}

// handle passes one JetStream message to the consumer and acks or naks it
// as the consumer says. nats.go calls it for one message at a time.
func (s *natsSubscription) handle(m *nats.Msg) {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return // not acked: JetStream delivers it again to another consumer
	}
	s.handlers.Add(1)
	s.mu.Unlock()
	defer s.handlers.Done()

	msg, err := (&wnats.NATSMarshaler{}).Unmarshal(m)
	if err != nil {
		// It cannot be decoded now or ever: take it out of this consumer.
		s.log.Error("cannot decode NATS message; terminating it", "subject", s.subject, "error", err)
		if err := m.Term(); err != nil {
			s.log.Error("cannot terminate NATS message", "subject", s.subject, "error", err)
		}
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	msg.SetContext(ctx)

	select {
	case s.out <- msg:
	case <-s.done:
		return
	}
	timeout := time.NewTimer(s.ackWait)
	defer timeout.Stop()
	select {
	case <-msg.Acked():
		s.ack(m, msg.UUID)
	case <-msg.Nacked():
		if err := m.Nak(); err != nil {
			s.log.Error("cannot nak NATS message", "subject", s.subject, "message_uuid", msg.UUID, "error", err)
		}
	case <-timeout.C:
		// JetStream delivers it again after its ack wait.
	case <-s.done:
		// An ack that came with the stop still goes out.
		select {
		case <-msg.Acked():
			s.ack(m, msg.UUID)
		default:
		}
	}
}

// ack acks m without waiting for JetStream to confirm, as watermill-nats
// does with AckAsync: a lost ack means one more delivery (at least once),
// and waiting would cost a round trip per message.
func (s *natsSubscription) ack(m *nats.Msg, uuid string) {
	if err := m.Ack(); err != nil {
		s.log.Error("cannot ack NATS message", "subject", s.subject, "message_uuid", uuid, "error", err)
	}
}

// stop ends the subscription: no new message is handed over, the running
// handler returns, the consumer is removed and the channel closed. It
// returns once the channel is closed; concurrent calls all wait.
func (s *natsSubscription) stop() {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		s.stopping = true
		s.mu.Unlock()
		close(s.done)
		s.handlers.Wait()
		if err := s.ns.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrConnectionDraining) {
			s.log.Warn("cannot remove NATS consumer", "subject", s.subject, "error", err)
		}
		close(s.out)
		close(s.ended)
	})
	<-s.ended
}
