package broker

import (
	"context"
	"testing"

	wnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
)

// receive returns the next message of ch, failing t when ch is closed or
// nothing comes before ctx ends.
func receive(t *testing.T, ctx context.Context, ch <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		require.True(t, ok, "subscription closed")
		return m
	case <-ctx.Done():
		t.Fatal("no message before the deadline")
		return nil
	}
}

// requireClosed drains ch until it is closed, failing t when that does not
// happen before ctx ends.
func requireClosed(t *testing.T, ctx context.Context, ch <-chan *message.Message) {
	t.Helper()
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-ctx.Done():
			t.Fatal("subscription not closed before the deadline")
		}
	}
}

func TestNATSSubscriber(t *testing.T) {
	t.Parallel()

	// A nacked message comes again; the others still come.
	t.Run("NackRedelivers", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		b := openBroker(t, dbtest.NATSURL(), nil)
		subject := dbtest.RandomName("accordtest.nack.")
		deleteStreamOf(t, js, subject)
		sent := newMessages(3)
		require.NoError(t, b.Publisher.Publish(subject, sent...))

		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		ch, err := b.Subscriber.Subscribe(ctx, subject)
		require.NoError(t, err)
		first := receive(t, ctx, ch)
		require.Equal(t, sent[0].UUID, first.UUID)
		first.Nack()
		seen := map[string]int{}
		for seen[sent[0].UUID] < 1 || len(seen) < len(sent) {
			m := receive(t, ctx, ch)
			seen[m.UUID]++
			m.Ack()
		}
		require.Equal(t, 1, seen[sent[0].UUID], "the nacked message once more")
	})

	// Cancelling the context of a subscription that holds an unacked
	// message, with more waiting, closes its channel; a new subscription
	// starts again at the beginning of the stream.
	t.Run("ContextEndsSubscription", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		b := openBroker(t, dbtest.NATSURL(), nil)
		subject := dbtest.RandomName("accordtest.cancel.")
		deleteStreamOf(t, js, subject)
		sent := newMessages(50)
		require.NoError(t, b.Publisher.Publish(subject, sent...))

		deadline, cancelDeadline := context.WithTimeout(context.Background(), testTimeout)
		defer cancelDeadline()
		subCtx, cancel := context.WithCancel(deadline)
		ch, err := b.Subscriber.Subscribe(subCtx, subject)
		require.NoError(t, err)
		m := receive(t, deadline, ch)
		require.Equal(t, sent[0].UUID, m.UUID)
		cancel()
		requireClosed(t, deadline, ch)
		select {
		case <-m.Context().Done():
		default:
			t.Fatal("the message's context must end with the subscription")
		}

		again, err := b.Subscriber.Subscribe(deadline, subject)
		require.NoError(t, err)
		for i, want := range sent {
			got := receive(t, deadline, again)
			require.Equal(t, want.UUID, got.UUID, "message %d", i)
			got.Ack()
		}
	})

	// Close ends every subscription; Subscribe fails afterwards.
	t.Run("Close", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		b := openBroker(t, dbtest.NATSURL(), nil)
		subject := dbtest.RandomName("accordtest.close.")
		deleteStreamOf(t, js, subject)
		require.NoError(t, b.Publisher.Publish(subject, newMessages(5)...))

		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		a, err := b.Subscriber.Subscribe(ctx, subject)
		require.NoError(t, err)
		c, err := b.Subscriber.Subscribe(ctx, subject)
		require.NoError(t, err)
		receive(t, ctx, a) // held, not acked
		require.NoError(t, b.Subscriber.Close())
		requireClosed(t, ctx, a)
		requireClosed(t, ctx, c)
		_, err = b.Subscriber.Subscribe(ctx, subject)
		require.ErrorIs(t, err, ErrSubscriberClosed)
		require.NoError(t, b.Subscriber.Close(), "idempotent")
	})

	// A message that cannot be decoded (a header with two values) is
	// terminated, and the next one comes.
	t.Run("UndecodableMessageTerminated", func(t *testing.T) {
		t.Parallel()
		js := natsAdmin(t)
		b := openBroker(t, dbtest.NATSURL(), nil)
		subject := dbtest.RandomName("accordtest.bad.")
		deleteStreamOf(t, js, subject)
		require.NoError(t, b.Subscriber.(message.SubscribeInitializer).SubscribeInitialize(subject))
		bad := nats.NewMsg(subject)
		bad.Header[wnats.WatermillUUIDHdr] = []string{"bad"}
		bad.Header["accord_key"] = []string{"a", "b"}
		_, err := js.PublishMsg(bad)
		require.NoError(t, err)
		good := newMessage("good")
		require.NoError(t, b.Publisher.Publish(subject, good))

		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		ch, err := b.Subscriber.Subscribe(ctx, subject)
		require.NoError(t, err)
		got := receive(t, ctx, ch)
		require.Equal(t, good.UUID, got.UUID)
		got.Ack()
	})
}
