package relay_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
)

// watermill's universal pub/sub suite with the relay in the loop: the
// suite's publisher is the outbox (each Publish call its own transaction),
// one relay moves the rows into a persistent GoChannel, and the suite
// subscribes to that GoChannel. See STYLE.md section 8.
func TestUniversalPubSub(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	ob := newOutbox(t, env)
	// Persistent: messages the relay publishes before the suite subscribes
	// are kept and replayed to every new subscription.
	dest := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, nil)
	t.Cleanup(func() { require.NoError(t, dest.Close()) })
	startRelay(t, env, dest, nil) // stopped in t.Cleanup before dest is closed

	tests.TestPubSub(t, tests.Features{
		ConsumerGroups:      false,
		ExactlyOnceDelivery: false, // at least once: consumers deduplicate
		// The relay keeps order per key, and the suite's messages, which have
		// no partition key, all share key "" and so one lane. But the
		// destination does not: a persistent GoChannel hands every message
		// to its subscriber on a goroutine of its own (on Publish and on the
		// replay at Subscribe), so the subscriber sees them in any order and
		// gets the next one before it acks the previous. GoChannel's doc says
		// as much ("When GoChannel is persistent, messages order is not
		// guaranteed"). The relay's order is checked by the crash,
		// NATS JetStream and watermill-sql tests, whose destinations keep it.
		GuaranteedOrder: false,
		Persistent:      true, // rows stay in the outbox until published; GoChannel keeps them
		// The destination is one in-process GoChannel.
		RequireSingleInstance: true,
	}, func(t *testing.T) (message.Publisher, message.Subscriber) {
		// A new Publisher per pair: its Close is idempotent and leaves the
		// pool open.
		return ob.DBPublisher(env.DB), &scopedSubscriber{dest: dest}
	}, nil)
}

// scopedSubscriber subscribes to a shared GoChannel and closes only its own
// subscriptions: the suite closes every pair it creates, and closing the
// GoChannel itself would end all the others. Close is idempotent and returns
// once the subscriptions' channels are closed.
type scopedSubscriber struct {
	dest *gochannel.GoChannel

	mu     sync.Mutex
	closed bool
	subs   []scopedSubscription

	closeOnce sync.Once
}

type scopedSubscription struct {
	cancel context.CancelFunc
	out    <-chan *message.Message
}

var errScopedSubscriberClosed = errors.New("subscriber closed")

func (s *scopedSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errScopedSubscriberClosed
	}
	// GoChannel ends the subscription, closing its channel, when this
	// context is cancelled.
	ctx, cancel := context.WithCancel(ctx)
	out, err := s.dest.Subscribe(ctx, topic)
	if err != nil {
		cancel()
		return nil, err
	}
	s.subs = append(s.subs, scopedSubscription{cancel: cancel, out: out})
	return out, nil
}

func (s *scopedSubscriber) Close() error {
	// Once.Do makes a concurrent second Close wait until the first is done.
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		subs := s.subs
		s.subs = nil
		s.mu.Unlock()
		for _, sub := range subs {
			sub.cancel()
			// Discard what the consumer did not take (unacked, so GoChannel
			// keeps it for other subscriptions) until GoChannel closes the
			// channel.
			for range sub.out {
			}
		}
	})
	return nil
}
