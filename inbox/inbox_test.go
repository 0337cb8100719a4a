package inbox_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/inbox"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
)

func TestConfig(t *testing.T) {
	t.Parallel()

	t.Run("Defaults", func(t *testing.T) {
		t.Parallel()
		cfg := (&inbox.Config{Dialect: accord.SQLite, Consumer: "c"}).WithDefaults()
		require.Equal(t, inbox.TablePrefixDefault, cfg.TablePrefix)
		require.Equal(t, inbox.MaxAttemptsDefault, cfg.MaxAttempts)
		require.Equal(t, inbox.RetentionDefault, cfg.Retention)
		require.NotNil(t, cfg.Logger)
		require.NotNil(t, cfg.Now)
		require.Nil(t, cfg.Observer)
		require.Equal(t, 7*24*time.Hour, inbox.RetentionDefault)
	})

	t.Run("NilConfigNamesRequiredFields", func(t *testing.T) {
		t.Parallel()
		_, err := inbox.New(nil, nil)
		require.ErrorIs(t, err, inbox.ErrInvalidConfig)
		require.ErrorIs(t, err, accord.ErrUnknownDialect)
		require.ErrorContains(t, err, "Consumer is empty")
	})

	t.Run("EveryProblemReported", func(t *testing.T) {
		t.Parallel()
		_, err := inbox.New(nil, &inbox.Config{
			Dialect: accord.SQLite, Schema: "s", TablePrefix: "Bad-", Consumer: strings.Repeat("x", 256),
			MaxAttempts: -2, Retention: -time.Hour,
		})
		require.ErrorIs(t, err, inbox.ErrInvalidConfig)
		for _, field := range []string{"Schema", "TablePrefix", "Consumer", "MaxAttempts", "Retention"} {
			require.ErrorContains(t, err, field)
		}
	})

	t.Run("ConsumerMustBeStorable", func(t *testing.T) {
		t.Parallel()
		for _, c := range []string{"a\x00b", "\xff", "billing "} {
			_, err := inbox.New(nil, &inbox.Config{Dialect: accord.Postgres, Consumer: c})
			require.ErrorIs(t, err, inbox.ErrInvalidConfig)
			require.ErrorContains(t, err, "Consumer")
		}
	})

	t.Run("Valid", func(t *testing.T) {
		t.Parallel()
		for _, cfg := range []inbox.Config{
			{Dialect: accord.MySQL, Consumer: strings.Repeat("é", 127), MaxAttempts: -1},
			{Dialect: accord.Postgres, Schema: "app", Consumer: "c", MaxAttempts: 1, Retention: time.Minute},
		} {
			_, err := inbox.New(nil, &cfg)
			require.NoError(t, err)
		}
	})
}

func TestResultString(t *testing.T) {
	t.Parallel()
	require.Equal(t, "failed", inbox.ResultFailed.String())
	require.Equal(t, "applied", inbox.ResultApplied.String())
	require.Equal(t, "duplicate", inbox.ResultDuplicate.String())
	require.Equal(t, "dead_lettered", inbox.ResultDeadLettered.String())
}

func TestPermanent(t *testing.T) {
	t.Parallel()
	base := errors.New("bad order")
	require.Nil(t, inbox.Permanent(nil))
	require.True(t, inbox.IsPermanent(inbox.Permanent(base)))
	require.True(t, inbox.IsPermanent(fmt.Errorf("wrapped: %w", inbox.Permanent(base))))
	require.ErrorIs(t, inbox.Permanent(base), base)
	require.True(t, inbox.IsPermanent(fmt.Errorf("payload: %w", inbox.ErrDecode)))
	require.True(t, inbox.IsPermanent(fmt.Errorf("type x: %w", inbox.ErrUnknownEventType)))
	require.True(t, inbox.IsPermanent(inbox.ErrNoMessageID))
	require.False(t, inbox.IsPermanent(base))
	require.False(t, inbox.IsPermanent(nil))
}

// The same message delivered five times in a row, then another one
// delivered by eight goroutines at once: each changes the state once. The
// concurrent deliveries wait on the first one's inbox row (checked on the
// server's lock view) and become duplicates when it commits.
func TestDuplicatesAppliedOnce(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		f := setup(t, env, nil)
		f.seed(t, "k")
		ctx := context.Background()

		msg := newMsg("x")
		var results []inbox.Result
		for range 5 {
			res, err := f.ib.Handle(ctx, msg.Copy(), f.incr("k"))
			require.NoError(t, err)
			results = append(results, res)
		}
		require.Equal(t, []inbox.Result{inbox.ResultApplied, inbox.ResultDuplicate, inbox.ResultDuplicate,
			inbox.ResultDuplicate, inbox.ResultDuplicate}, results)
		require.EqualValues(t, 1, f.counter(t, "k"))

		const workers = 8
		msg = newMsg("y")
		var calls atomic.Int32
		entered := make(chan struct{}, workers)
		release := make(chan struct{})
		releaseOnce := sync.OnceFunc(func() { close(release) })
		t.Cleanup(releaseOnce)
		h := func(ctx context.Context, tx *sql.Tx, m *message.Message) error {
			calls.Add(1)
			entered <- struct{}{}
			<-release
			return f.incrTx(ctx, tx, "k")
		}
		var wg sync.WaitGroup
		res := make([]inbox.Result, workers)
		errs := make([]error, workers)
		for w := range workers {
			wg.Go(func() { res[w], errs[w] = f.ib.Handle(ctx, msg.Copy(), h) })
		}
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatal("no delivery reached the handler")
		}
		if env.Dialect != accord.SQLite { // SQLite's one connection serializes them before the database
			waitFor(t, 10*time.Second, "7 deliveries waiting on the inbox row", func() bool {
				return lockWaiters(t, env) >= workers-1
			})
		}
		releaseOnce()
		wg.Wait()

		count := map[inbox.Result]int{}
		for w := range workers {
			require.NoError(t, errs[w])
			count[res[w]]++
		}
		require.Equal(t, map[inbox.Result]int{inbox.ResultApplied: 1, inbox.ResultDuplicate: workers - 1}, count)
		require.EqualValues(t, 1, calls.Load(), "handler calls")
		require.EqualValues(t, 2, f.counter(t, "k"))
		require.EqualValues(t, 2, f.obs.applied.Load())
		require.EqualValues(t, 4+workers-1, f.obs.duplicate.Load())
		require.Equal(t, 2, f.rows(t, "inbox", "billing"))
	})
}

// Consume, change state, emit: the state change, the outbox event and the
// inbox row commit together, or none of them exists.
func TestStateAndOutboxEventCommitTogether(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		f := setup(t, env, nil)
		f.seed(t, "order-1")
		ob, err := outbox.New(&outbox.Config{Dialect: env.Dialect, Schema: env.Schema})
		require.NoError(t, err)
		ctx := context.Background()
		failAfterWrite := errors.New("failure after writing")

		handler := func(fail bool) inbox.HandlerFunc {
			return func(ctx context.Context, tx *sql.Tx, msg *message.Message) error {
				if err := f.incrTx(ctx, tx, "order-1"); err != nil {
					return err
				}
				err := ob.WriteTx(ctx, tx, outbox.Event{Topic: "invoices.created", Key: "order-1",
					Message: outbox.NewMessage([]byte("invoice for " + string(msg.Payload)))})
				if err != nil {
					return err
				}
				if fail {
					return failAfterWrite
				}
				return nil
			}
		}
		outboxRows := func() int {
			var n int
			require.NoError(t, env.DB.QueryRow("SELECT count(*) FROM "+qualified(env, "accord_outbox")).Scan(&n))
			return n
		}

		msg := newMsg("order-1")
		res, err := f.ib.Handle(ctx, msg, handler(true))
		require.ErrorIs(t, err, failAfterWrite)
		require.Equal(t, inbox.ResultFailed, res)
		require.EqualValues(t, 0, f.counter(t, "order-1"), "state of a rolled back message")
		require.Zero(t, outboxRows(), "event of a rolled back message")
		require.Zero(t, f.rows(t, "inbox", "billing"), "inbox row of a rolled back message")

		res, err = f.ib.Handle(ctx, msg, handler(false))
		require.NoError(t, err)
		require.Equal(t, inbox.ResultApplied, res)
		require.EqualValues(t, 1, f.counter(t, "order-1"))
		require.Equal(t, 1, outboxRows())

		res, err = f.ib.Handle(ctx, msg, handler(false))
		require.NoError(t, err)
		require.Equal(t, inbox.ResultDuplicate, res)
		require.EqualValues(t, 1, f.counter(t, "order-1"))
		require.Equal(t, 1, outboxRows(), "a duplicate emitted an event")
	})
}

// A transient failure is rolled back, counted and returned (so the broker
// redelivers); the next delivery applies the message. A panic counts as a
// failure. Cleanup removes the attempts of applied messages.
func TestTransientFailureRetried(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		f := setup(t, env, nil)
		f.seed(t, "k")
		ctx := context.Background()
		transient := errors.New("downstream timeout")

		var calls int
		h := func(ctx context.Context, tx *sql.Tx, msg *message.Message) error {
			calls++
			if err := f.incrTx(ctx, tx, "k"); err != nil {
				return err
			}
			switch calls {
			case 1:
				return transient
			case 2:
				panic("nil map")
			}
			return nil
		}
		msg := newMsg("p", inbox.MetadataTopic, "orders")
		res, err := f.ib.Handle(ctx, msg, h)
		require.ErrorIs(t, err, transient)
		require.Equal(t, inbox.ResultFailed, res)
		n, last := f.attempts(t, msg.UUID)
		require.Equal(t, 1, n)
		require.Equal(t, "downstream timeout", last)

		res, err = f.ib.Handle(ctx, msg, h)
		require.ErrorContains(t, err, "handler panicked: nil map")
		require.Equal(t, inbox.ResultFailed, res)
		n, last = f.attempts(t, msg.UUID)
		require.Equal(t, 2, n)
		require.Contains(t, last, "panicked")
		require.EqualValues(t, 0, f.counter(t, "k"), "a failed attempt changed the state")

		res, err = f.ib.Handle(ctx, msg, h)
		require.NoError(t, err)
		require.Equal(t, inbox.ResultApplied, res)
		require.EqualValues(t, 1, f.counter(t, "k"))
		require.EqualValues(t, 2, f.obs.failed.Load())
		obs := f.obs.observations()
		require.Equal(t, 2, obs[1].Attempts)
		require.Equal(t, "orders", obs[1].Topic)
		require.Equal(t, msg.UUID, obs[1].MessageID)
		require.ErrorContains(t, obs[1].Err, "panicked")
		require.Zero(t, f.rows(t, "dead_letter", "billing"))

		_, err = f.ib.Cleanup(ctx)
		require.NoError(t, err)
		n, _ = f.attempts(t, msg.UUID)
		require.Zero(t, n, "attempts of an applied message after Cleanup")
	})
}

// After MaxAttempts failed runs the message is parked with its reason and
// acknowledged; redeliveries are duplicates and never reach the handler.
func TestMaxAttemptsParksDeadLetter(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		f := setup(t, env, &inbox.Config{MaxAttempts: 3})
		f.seed(t, "k")
		ctx := context.Background()
		var calls int
		h := func(ctx context.Context, tx *sql.Tx, msg *message.Message) error {
			calls++
			if err := f.incrTx(ctx, tx, "k"); err != nil {
				return err
			}
			return fmt.Errorf("boom %d", calls)
		}
		msg := newMsg("\x00binary\xff", inbox.MetadataTopic, "orders.placed", "tenant", "acme")
		for attempt := 1; attempt <= 2; attempt++ {
			res, err := f.ib.Handle(ctx, msg, h)
			require.ErrorContains(t, err, fmt.Sprintf("boom %d", attempt))
			require.Equal(t, inbox.ResultFailed, res)
		}
		res, err := f.ib.Handle(ctx, msg, h)
		require.NoError(t, err, "a parked message must be acknowledged")
		require.Equal(t, inbox.ResultDeadLettered, res)

		dls, err := f.ib.DeadLetters(ctx, nil)
		require.NoError(t, err)
		require.Len(t, dls, 1)
		dl := dls[0]
		require.Equal(t, "billing", dl.Consumer)
		require.Equal(t, msg.UUID, dl.MessageID)
		require.Equal(t, "orders.placed", dl.Topic)
		require.Equal(t, []byte("\x00binary\xff"), dl.Payload)
		require.Equal(t, "acme", dl.Metadata.Get("tenant"))
		require.Equal(t, "boom 3", dl.Reason)
		require.Equal(t, 3, dl.Attempts)
		require.WithinDuration(t, time.Now(), dl.CreatedAt, time.Minute)
		require.Positive(t, dl.Seq)

		n, _ := f.attempts(t, msg.UUID)
		require.Zero(t, n, "attempt row of a parked message")
		for range 3 {
			res, err = f.ib.Handle(ctx, msg, h)
			require.NoError(t, err)
			require.Equal(t, inbox.ResultDuplicate, res)
		}
		require.Equal(t, 3, calls)
		require.EqualValues(t, 0, f.counter(t, "k"))
		require.EqualValues(t, 1, f.obs.deadLettered.Load())
		obs := f.obs.observations()
		require.Equal(t, dl.Seq, obs[2].DeadLetterSeq)
		require.Equal(t, 3, obs[2].Attempts)
	})
}

// Through a watermill router: permanent errors, decode errors, unknown
// event types and messages without an id are parked at once and acked; a
// transient failure is nacked and redelivered; the good messages around
// them are applied.
func TestBadMessagesParkedOthersFlow(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		f := setup(t, env, nil)
		f.seed(t, "good")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()

		var mu sync.Mutex
		calls := map[string]int{}
		h := func(ctx context.Context, tx *sql.Tx, msg *message.Message) error {
			p := string(msg.Payload)
			mu.Lock()
			calls[p]++
			n := calls[p]
			mu.Unlock()
			switch {
			case p == "permanent":
				return inbox.Permanent(errors.New("order references unknown customer"))
			case p == "{not json":
				return fmt.Errorf("%w: unexpected end of JSON input", inbox.ErrDecode)
			case msg.Metadata.Get("type") == "refund":
				return fmt.Errorf("%w %q", inbox.ErrUnknownEventType, "refund")
			case p == "flaky" && n == 1:
				return errors.New("connection reset")
			}
			return f.incrTx(ctx, tx, "good")
		}

		pubsub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
		router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
		require.NoError(t, err)
		router.AddConsumerHandler("billing", "orders", pubsub, f.ib.HandlerFunc(h))
		runDone := make(chan error, 1)
		go func() { runDone <- router.Run(ctx) }()
		t.Cleanup(func() {
			require.NoError(t, router.Close())
			require.NoError(t, <-runDone)
		})
		<-router.Running()

		noID := message.NewMessage("", []byte("no id"))
		msgs := []*message.Message{
			newMsg("ok-1"), newMsg("permanent"), newMsg("{not json"), newMsg("ok-2", "type", "refund"),
			noID, newMsg("flaky"), newMsg("ok-3"),
		}
		for _, m := range msgs {
			require.NoError(t, pubsub.Publish("orders", m))
		}
		waitFor(t, 20*time.Second, "3 good messages applied and 4 parked", func() bool {
			return f.counter(t, "good") >= 3 && f.obs.deadLettered.Load() >= 4
		})

		dls, err := f.ib.DeadLetters(ctx, &inbox.ListParams{Limit: 10})
		require.NoError(t, err)
		require.Len(t, dls, 4)
		reasons := map[string]string{}
		for _, dl := range dls {
			require.Equal(t, "orders", dl.Topic, "the router's topic")
			require.Equal(t, 1, dl.Attempts)
			reasons[string(dl.Payload)] = dl.Reason
			if string(dl.Payload) == "no id" {
				require.Empty(t, dl.MessageID)
			} else {
				require.NotEmpty(t, dl.MessageID)
			}
		}
		require.Contains(t, reasons["permanent"], "unknown customer")
		require.Contains(t, reasons["{not json"], inbox.ErrDecode.Error())
		require.Contains(t, reasons["ok-2"], inbox.ErrUnknownEventType.Error())
		require.Equal(t, inbox.ErrNoMessageID.Error(), reasons["no id"])

		mu.Lock()
		defer mu.Unlock()
		require.Equal(t, map[string]int{"ok-1": 1, "permanent": 1, "{not json": 1, "ok-2": 1, "flaky": 2, "ok-3": 1}, calls)
		require.EqualValues(t, 3, f.counter(t, "good"))
		require.EqualValues(t, 1, f.obs.failed.Load())
		require.Equal(t, 6, f.rows(t, "inbox", "billing"), "inbox rows: 3 applied, 3 parked, none for the message without an id")
	})
}

// Requeue publishes the dead letter again, with its id, payload and
// metadata, and the consumer applies it; Drop deletes it and keeps its
// redeliveries duplicates.
func TestRequeueAndDrop(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		f := setup(t, env, nil)
		f.seed(t, "k")
		ctx := context.Background()
		var broken atomic.Bool
		broken.Store(true)
		h := func(ctx context.Context, tx *sql.Tx, msg *message.Message) error {
			if broken.Load() {
				return inbox.Permanent(errors.New("bug in the handler"))
			}
			return f.incrTx(ctx, tx, "k")
		}
		park := func(m *message.Message) int64 {
			t.Helper()
			res, err := f.ib.Handle(ctx, m, h)
			require.NoError(t, err)
			require.Equal(t, inbox.ResultDeadLettered, res)
			dls, err := f.ib.DeadLetters(ctx, nil)
			require.NoError(t, err)
			return dls[len(dls)-1].Seq
		}
		msg := newMsg("order", inbox.MetadataTopic, "orders", "tenant", "acme")
		seq := park(msg)

		// A failed publish changes nothing.
		failing := &recordingPublisher{err: errors.New("broker down")}
		require.ErrorContains(t, f.ib.Requeue(ctx, seq, failing, ""), "broker down")
		require.Equal(t, []string{"orders"}, failing.topics, "the stored topic is the default")
		dls, err := f.ib.DeadLetters(ctx, nil)
		require.NoError(t, err)
		require.Len(t, dls, 1)
		res, err := f.ib.Handle(ctx, msg, h)
		require.NoError(t, err)
		require.Equal(t, inbox.ResultDuplicate, res, "redelivery after a failed requeue")

		broken.Store(false) // the handler is fixed
		pubsub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
		t.Cleanup(func() { _ = pubsub.Close() })
		out, err := pubsub.Subscribe(ctx, "orders.retry")
		require.NoError(t, err)
		require.NoError(t, f.ib.Requeue(ctx, seq, pubsub, "orders.retry"))
		var got *message.Message
		select {
		case got = <-out:
		case <-time.After(10 * time.Second):
			t.Fatal("requeued message not received")
		}
		require.Equal(t, msg.UUID, got.UUID)
		require.Equal(t, "order", string(got.Payload))
		require.Equal(t, "acme", got.Metadata.Get("tenant"))
		res, err = f.ib.Handle(ctx, got, h)
		require.NoError(t, err)
		require.Equal(t, inbox.ResultApplied, res)
		got.Ack()
		require.EqualValues(t, 1, f.counter(t, "k"))
		dls, err = f.ib.DeadLetters(ctx, nil)
		require.NoError(t, err)
		require.Empty(t, dls)
		require.ErrorIs(t, f.ib.Requeue(ctx, seq, pubsub, "orders.retry"), inbox.ErrDeadLetterNotFound)

		// Drop.
		broken.Store(true)
		other := newMsg("other")
		seq = park(other)
		require.ErrorContains(t, f.ib.Requeue(ctx, seq, pubsub, ""), "topic is unknown")
		require.NoError(t, f.ib.Drop(ctx, seq))
		require.ErrorIs(t, f.ib.Drop(ctx, seq), inbox.ErrDeadLetterNotFound)
		dls, err = f.ib.DeadLetters(ctx, nil)
		require.NoError(t, err)
		require.Empty(t, dls)
		broken.Store(false)
		res, err = f.ib.Handle(ctx, other, h)
		require.NoError(t, err)
		require.Equal(t, inbox.ResultDuplicate, res, "redelivery of a dropped message")
		require.EqualValues(t, 1, f.counter(t, "k"))

		// Another consumer's dead letters are out of reach.
		ib2, err := inbox.New(env.DB, &inbox.Config{Dialect: env.Dialect, Schema: env.Schema, Consumer: "shipping"})
		require.NoError(t, err)
		broken.Store(true)
		seq = park(newMsg("third"))
		require.ErrorIs(t, ib2.Drop(ctx, seq), inbox.ErrDeadLetterNotFound)
		dls, err = ib2.DeadLetters(ctx, nil)
		require.NoError(t, err)
		require.Empty(t, dls)
	})
}

type recordingPublisher struct {
	err    error
	topics []string
}

func (p *recordingPublisher) Publish(topic string, _ ...*message.Message) error {
	p.topics = append(p.topics, topic)
	return p.err
}

func (p *recordingPublisher) Close() error { return nil }

func TestDeadLettersPaging(t *testing.T) {
	t.Parallel()
	env := dbtest.SQLite(t)
	f := setup(t, env, nil)
	ctx := context.Background()
	for range 5 {
		res, err := f.ib.Handle(ctx, newMsg("x"), func(context.Context, *sql.Tx, *message.Message) error {
			return inbox.ErrDecode
		})
		require.NoError(t, err)
		require.Equal(t, inbox.ResultDeadLettered, res)
	}
	page1, err := f.ib.DeadLetters(ctx, &inbox.ListParams{Limit: 3})
	require.NoError(t, err)
	require.Len(t, page1, 3)
	page2, err := f.ib.DeadLetters(ctx, &inbox.ListParams{After: page1[2].Seq, Limit: 3})
	require.NoError(t, err)
	require.Len(t, page2, 2)
	require.Greater(t, page2[0].Seq, page1[2].Seq)
	_, err = f.ib.DeadLetters(ctx, &inbox.ListParams{Limit: inbox.ListLimitMax + 1})
	require.ErrorContains(t, err, "Limit")
}

// Cleanup deletes the consumer's inbox rows older than Retention, in
// batches, and stale attempts; newer rows and other consumers' rows stay.
func TestCleanup(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		var now atomic.Pointer[time.Time]
		t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
		setNow := func(t time.Time) { now.Store(&t) }
		setNow(t0)
		clock := func() time.Time { return *now.Load() }
		f := setup(t, env, &inbox.Config{Now: clock, Retention: 7 * 24 * time.Hour})
		inbox.SetCleanupBatch(f.ib, 7)
		f.seed(t, "k")
		other, err := inbox.New(env.DB, &inbox.Config{Dialect: env.Dialect, Schema: env.Schema, Consumer: "shipping", Now: clock})
		require.NoError(t, err)
		ctx := context.Background()
		apply := func(ib *inbox.Inbox, m *message.Message) inbox.Result {
			t.Helper()
			res, err := ib.Handle(ctx, m, f.incr("k"))
			require.NoError(t, err)
			return res
		}
		fail := func(m *message.Message) {
			t.Helper()
			_, err := f.ib.Handle(ctx, m, func(context.Context, *sql.Tx, *message.Message) error { return errors.New("later") })
			require.Error(t, err)
		}

		old := make([]*message.Message, 30)
		for j := range old {
			old[j] = newMsg("old")
			apply(f.ib, old[j])
		}
		otherOld := newMsg("other")
		apply(other, otherOld)
		staleFailure := newMsg("stale")
		fail(staleFailure)

		setNow(t0.Add(5 * 24 * time.Hour))
		recent := make([]*message.Message, 5)
		for j := range recent {
			recent[j] = newMsg("recent")
			apply(f.ib, recent[j])
		}
		recentFailure := newMsg("recent failure")
		fail(recentFailure)

		setNow(t0.Add(8 * 24 * time.Hour))
		deleted, err := f.ib.Cleanup(ctx)
		require.NoError(t, err)
		require.EqualValues(t, 30, deleted)
		require.Equal(t, 5, f.rows(t, "inbox", "billing"))
		require.Equal(t, 1, f.rows(t, "inbox", "shipping"), "another consumer's rows")
		n, _ := f.attempts(t, staleFailure.UUID)
		require.Zero(t, n, "stale attempt row")
		n, _ = f.attempts(t, recentFailure.UUID)
		require.Equal(t, 1, n, "recent attempt row")

		deleted, err = f.ib.Cleanup(ctx)
		require.NoError(t, err)
		require.Zero(t, deleted)

		require.Equal(t, inbox.ResultDuplicate, apply(f.ib, recent[0]), "within Retention")
		// Past Retention the id is forgotten: this is why Retention must
		// exceed the broker's redelivery window.
		require.Equal(t, inbox.ResultApplied, apply(f.ib, old[0]), "after Retention")
	})
}

func TestRunCleanup(t *testing.T) {
	t.Parallel()
	env := dbtest.SQLite(t)
	var now atomic.Pointer[time.Time]
	start := time.Now()
	now.Store(&start)
	f := setup(t, env, &inbox.Config{Retention: time.Hour, Now: func() time.Time { return *now.Load() }})
	f.seed(t, "k")
	ctx, cancel := context.WithCancel(context.Background())
	res, err := f.ib.Handle(ctx, newMsg("x"), f.incr("k"))
	require.NoError(t, err)
	require.Equal(t, inbox.ResultApplied, res)
	later := start.Add(2 * time.Hour)
	now.Store(&later)
	done := make(chan error, 1)
	go func() { done <- f.ib.RunCleanup(ctx, 10*time.Millisecond) }()
	waitFor(t, 10*time.Second, "RunCleanup to delete the old row", func() bool { return f.rows(t, "inbox", "billing") == 0 })
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("RunCleanup did not return after cancel")
	}
}

// Ids that do not fit the column (or are not text) are stored hashed and
// still deduplicate; ids differing only in case are different messages;
// metadata and topics with NUL bytes or invalid UTF-8 park fine.
func TestOddMessages(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		f := setup(t, env, nil)
		f.seed(t, "k")
		ctx := context.Background()
		for _, id := range []string{strings.Repeat("x", 300), "\xff\xfe", "a\x00b", "ABC", "abc", "ABC "} {
			m := message.NewMessage(id, []byte("p"))
			res, err := f.ib.Handle(ctx, m, f.incr("k"))
			require.NoError(t, err, "id %q", id)
			require.Equal(t, inbox.ResultApplied, res, "id %q", id)
			res, err = f.ib.Handle(ctx, m, f.incr("k"))
			require.NoError(t, err, "id %q", id)
			require.Equal(t, inbox.ResultDuplicate, res, "id %q", id)
		}
		require.EqualValues(t, 6, f.counter(t, "k"))
		require.True(t, strings.HasPrefix(inbox.StoredID(strings.Repeat("x", 300)), "sha256:"))
		require.Equal(t, "abc", inbox.StoredID("abc"))
		require.True(t, strings.HasPrefix(inbox.StoredID("ABC "), "sha256:"))

		m := newMsg("p", "bad\x00key", "v\x00\xff", inbox.MetadataTopic, "t\x00opic")
		res, err := f.ib.Handle(ctx, m, func(context.Context, *sql.Tx, *message.Message) error {
			return inbox.Permanent(errors.New("reason with \x00 and \xff"))
		})
		require.NoError(t, err)
		require.Equal(t, inbox.ResultDeadLettered, res)
		dls, err := f.ib.DeadLetters(ctx, nil)
		require.NoError(t, err)
		require.Len(t, dls, 1)
		require.Equal(t, "v\uFFFD\uFFFD", dls[0].Metadata.Get("bad\uFFFDkey"))
		require.Equal(t, "t\uFFFDopic", dls[0].Topic)
		require.Contains(t, dls[0].Reason, "reason with \uFFFD and \uFFFD")

		_, err = f.ib.Handle(ctx, nil, f.incr("k"))
		require.ErrorIs(t, err, inbox.ErrNilMessage)
	})
}

// A consumer whose tables are missing gets an error that says what to do,
// and nothing is counted.
func TestNotMigrated(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ib, err := inbox.New(env.DB, &inbox.Config{Dialect: env.Dialect, Schema: env.Schema, TablePrefix: "missing_", Consumer: "c"})
		require.NoError(t, err)
		res, err := ib.Handle(context.Background(), newMsg("x"), func(context.Context, *sql.Tx, *message.Message) error { return nil })
		require.Equal(t, inbox.ResultFailed, res)
		require.ErrorContains(t, err, "accord migrate up")
	})
}

// Shutting down (ctx cancelled) is not the message's fault: the failure is
// not counted.
func TestCancelledNotCounted(t *testing.T) {
	t.Parallel()
	env := dbtest.SQLite(t)
	f := setup(t, env, &inbox.Config{MaxAttempts: 1})
	ctx, cancel := context.WithCancel(context.Background())
	msg := newMsg("x")
	res, err := f.ib.Handle(ctx, msg, func(ctx context.Context, _ *sql.Tx, _ *message.Message) error {
		cancel()
		return ctx.Err()
	})
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, inbox.ResultFailed, res)
	n, _ := f.attempts(t, msg.UUID)
	require.Zero(t, n)
	require.Zero(t, f.rows(t, "dead_letter", "billing"))
}

// The middleware runs watermill handlers in the inbox transaction, which
// they find in the message's context.
func TestMiddleware(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		f := setup(t, env, nil)
		f.seed(t, "k")
		var calls atomic.Int32
		h := f.ib.Middleware(func(msg *message.Message) ([]*message.Message, error) {
			calls.Add(1)
			tx := inbox.TxFromContext(msg.Context())
			if tx == nil {
				return nil, errors.New("no transaction in the context")
			}
			return nil, f.incrTx(msg.Context(), tx, "k")
		})
		msg := newMsg("x")
		for range 3 {
			out, err := h(msg.Copy())
			require.NoError(t, err)
			require.Empty(t, out)
		}
		require.EqualValues(t, 1, calls.Load())
		require.EqualValues(t, 1, f.counter(t, "k"))
		require.Nil(t, inbox.TxFromContext(msg.Context()))

		producing := f.ib.Middleware(func(msg *message.Message) ([]*message.Message, error) {
			return []*message.Message{newMsg("event")}, nil
		})
		out, err := producing(newMsg("y"))
		require.NoError(t, err)
		require.Empty(t, out)
		dls, err := f.ib.DeadLetters(context.Background(), nil)
		require.NoError(t, err)
		require.Len(t, dls, 1)
		require.Contains(t, dls[0].Reason, inbox.ErrProducedMessages.Error())
	})
}
