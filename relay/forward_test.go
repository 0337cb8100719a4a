package relay_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// slowSink is a memSink whose Publish calls take perMessage per message: a
// broker slow enough that the relay reads ahead of what it publishes.
type slowSink struct {
	*memSink
	perMessage time.Duration
}

func (s slowSink) Publish(topic string, msgs ...*message.Message) error {
	time.Sleep(s.perMessage * time.Duration(len(msgs)))
	return s.memSink.Publish(topic, msgs...)
}

// A transaction takes its sequence number, the relay reads rows with
// larger numbers while it drains a backlog (it reads forward, not sweeping),
// then the transaction commits and the same key's next event is committed
// right after. The late row must go out before that next event: forward
// reads start at the hole the uncommitted row left, not after the largest
// number read.
func TestLateCommitKeepsOrderPerKey(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	ob := newOutbox(t, env)
	sink := slowSink{memSink: newMemSink(), perMessage: 200 * time.Microsecond}
	// No sweeps while draining: only forward reads can find the late row in
	// time.
	startRelay(t, env, sink, &relay.Config{SweepInterval: time.Hour, BatchSize: 100, Lanes: 2, MaxInFlight: 200})
	ctx := context.Background()

	first := writeEvents(t, env, ob, "t", "warm-up", 1)
	waitFor(t, 10*time.Second, "the relay to publish", func() bool { return sink.has(first[0]) })

	late, err := env.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	lateMsg := outbox.NewMessage([]byte("1"))
	require.NoError(t, ob.WriteTx(ctx, late, outbox.Event{Topic: "t", Key: "k", Version: 1, Message: lateMsg}))

	// A backlog behind the late row, over many keys: 20,000 rows take the
	// slow sink about 4 s.
	for range 4 {
		tx, err := env.DB.BeginTx(ctx, nil)
		require.NoError(t, err)
		evs := make([]outbox.Event, 5000)
		for i := range evs {
			evs[i] = outbox.Event{Topic: "t", Key: "b" + strconv.Itoa(i%500), Message: outbox.NewMessage([]byte("x"))}
		}
		require.NoError(t, ob.WriteTx(ctx, tx, evs...))
		require.NoError(t, tx.Commit())
	}
	waitFor(t, 30*time.Second, "the relay to publish rows behind the late one", func() bool { return sink.distinct() >= 1000 })
	require.False(t, sink.has(lateMsg.UUID), "an uncommitted row was published")
	require.Greater(t, pending(t, env), 5000, "the backlog drained before the late commit: the test proves nothing")

	require.NoError(t, late.Commit())
	next := outbox.NewMessage([]byte("2"))
	tx, err := env.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, ob.WriteTx(ctx, tx, outbox.Event{Topic: "t", Key: "k", Version: 2, Message: next}))
	require.NoError(t, tx.Commit())

	waitFor(t, 60*time.Second, "both events of key k", func() bool { return sink.has(lateMsg.UUID) && sink.has(next.UUID) })
	var order []string
	for _, m := range sink.snapshot() {
		if m.Metadata.Get(outbox.MetadataKey) == "k" {
			order = append(order, string(m.Payload))
		}
	}
	require.Equal(t, []string{"1", "2"}, order, "key k's events in the order their transactions committed")
}
