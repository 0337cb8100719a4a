package inbox_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/inbox"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/internal/testproc"
	"github.com/accordgo/accord/outbox"
)

// A consumer process reads a NATS JetStream topic through a watermill
// router (durable consumer, synchronous acks) and applies each message with
// the inbox: one counter increment and one row in "applied" per message.
// It is killed with SIGKILL twice: first right after a commit and before the
// ack (JetStream redelivers the message: the inbox must drop it), then in
// the middle of a handler's transaction (PostgreSQL rolls it back:
// the redelivery must apply it). After a third process drains the stream,
// every message has taken effect exactly once.
func TestCrashKillDashNine(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	nc := connectNATS(t)
	js, err := nc.JetStream()
	require.NoError(t, err)

	topic := dbtest.RandomName("inbox_crash_")
	_, err = js.AddStream(&nats.StreamConfig{Name: topic, Subjects: []string{topic}})
	require.NoError(t, err, "create JetStream stream (is JetStream enabled? nats-server -js)")
	t.Cleanup(func() { _ = js.DeleteStream(topic) })

	for _, ddl := range []string{
		"CREATE TABLE " + qualified(env, "counter") + " (id INT PRIMARY KEY, n BIGINT NOT NULL)",
		"INSERT INTO " + qualified(env, "counter") + " VALUES (1, 0)",
		"CREATE TABLE " + qualified(env, "applied") + " (message_id TEXT NOT NULL, pid INT NOT NULL)",
		"CREATE TABLE " + qualified(env, "duplicate") + " (message_id TEXT NOT NULL, pid INT NOT NULL)",
		"CREATE TABLE " + qualified(env, "blocked") + " (message_id TEXT NOT NULL, pid INT NOT NULL)",
	} {
		_, err := env.DB.Exec(ddl)
		require.NoError(t, err)
	}

	const total = 300
	pub, err := wnats.NewPublisherWithNatsConn(nc, wnats.PublisherPublishConfig{
		Marshaler:         &wnats.NATSMarshaler{},
		SubjectCalculator: wnats.DefaultSubjectCalculator,
		JetStream:         wnats.JetStreamConfig{TrackMsgId: true},
	}, watermill.NopLogger{})
	require.NoError(t, err)
	sent := map[string]bool{}
	for j := range total {
		m := outbox.NewMessage([]byte(strconv.Itoa(j)))
		sent[m.UUID] = true
		require.NoError(t, pub.Publish(topic, m))
	}

	count := func(table string) int {
		var n int
		require.NoError(t, env.DB.QueryRow("SELECT count(*) FROM "+qualified(env, table)).Scan(&n))
		return n
	}
	durable := "inbox-crash"
	consumerInfo := func() *nats.ConsumerInfo {
		info, err := js.ConsumerInfo(topic, durable)
		require.NoError(t, err)
		return info
	}
	spec := consumerChildSpec{
		Schema: env.Schema, NATSURL: dbtest.NATSURL(), Topic: topic, Durable: durable, Consumer: "crash",
		AckWait: 2 * time.Second,
	}

	// 1. Killed after the commit of its 60th message, before the ack.
	spec.BlockAfterCommit = 60
	first := startConsumerChild(t, spec)
	waitFor(t, 60*time.Second, "the first consumer to apply 60 messages", func() bool { return count("applied") >= 60 })
	first.Kill(t)
	require.Equal(t, 60, count("applied"), "the first consumer went on after blocking")
	waitFor(t, 10*time.Second, "JetStream to notice the first consumer is gone", func() bool { return !consumerInfo().PushBound })

	// 2. Killed inside the transaction of its 40th message.
	spec.BlockAfterCommit, spec.BlockInTx = 0, 40
	second := startConsumerChild(t, spec)
	waitFor(t, 60*time.Second, "the second consumer to block in a transaction", func() bool { return count("blocked") == 1 })
	var blockedID string
	require.NoError(t, env.DB.QueryRow("SELECT message_id FROM "+qualified(env, "blocked")).Scan(&blockedID))
	second.Kill(t)
	var blockedApplied int
	require.NoError(t, env.DB.QueryRow("SELECT count(*) FROM "+qualified(env, "applied")+" WHERE message_id = $1", blockedID).Scan(&blockedApplied))
	require.Zero(t, blockedApplied, "the killed transaction committed")
	atSecondKill := count("applied")
	require.Less(t, atSecondKill, total, "the second consumer applied everything before it was killed")
	waitFor(t, 10*time.Second, "JetStream to notice the second consumer is gone", func() bool { return !consumerInfo().PushBound })

	// 3. Drains the rest, redeliveries included.
	spec.BlockInTx = 0
	third := startConsumerChild(t, spec)
	waitFor(t, 60*time.Second, "every message applied and acknowledged", func() bool {
		if count("applied") < total {
			return false
		}
		info := consumerInfo()
		return info.NumPending == 0 && info.NumAckPending == 0
	})
	third.Kill(t)

	var counter int
	require.NoError(t, env.DB.QueryRow("SELECT n FROM "+qualified(env, "counter")+" WHERE id = 1").Scan(&counter))
	require.Equal(t, total, counter, "counter")
	rows, err := env.DB.Query("SELECT message_id, count(*) FROM " + qualified(env, "applied") + " GROUP BY message_id")
	require.NoError(t, err)
	defer rows.Close()
	applied := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		require.NoError(t, rows.Scan(&id, &n))
		applied[id] = n
	}
	require.NoError(t, rows.Err())
	require.Len(t, applied, total)
	for id, n := range applied {
		require.True(t, sent[id], "unknown message %s applied", id)
		require.Equal(t, 1, n, "message %s applied %d times", id, n)
	}
	require.Equal(t, total, count("accord_inbox"))
	dups := count("duplicate")
	require.GreaterOrEqual(t, dups, 1, "the message committed before the first kill was not redelivered")
	t.Logf("applied %d messages exactly once; %d before the first kill, %d before the second; %d redeliveries dropped as duplicates",
		total, 60, atSecondKill, dups)
}

// connectNATS connects to the test NATS server, failing t with instructions
// when it is not reachable.
func connectNATS(t *testing.T) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(dbtest.NATSURL(), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("NATS is not reachable at %s: %v\nStart nats-server -js (scripts/test.sh does) or point ACCORD_TEST_NATS_URL at one.",
			dbtest.NATSURL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// consumerChildSpec configures a consumer process (see TestMain).
type consumerChildSpec struct {
	Schema   string
	NATSURL  string
	Topic    string
	Durable  string
	Consumer string
	AckWait  time.Duration
	// BlockAfterCommit > 0 makes the process stop, forever, right after
	// the commit of its BlockAfterCommit-th message, before the ack.
	BlockAfterCommit int
	// BlockInTx > 0 makes the process stop, forever, inside the
	// transaction of its BlockInTx-th message, after its changes and
	// before the commit. It records the message id in "blocked" first.
	BlockInTx int
}

// runConsumerChild is the main function of a consumer process.
func runConsumerChild(specJSON string) int {
	var spec consumerChildSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "consumer child: bad %s: %v\n", consumerChildEnv, err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	db, _, err := accord.OpenDB(dbtest.PostgresURL())
	if err != nil {
		logger.Error("consumer child: open database", "error", err)
		return 2
	}
	defer db.Close()
	q := func(table string) string { return `"` + spec.Schema + `"."` + table + `"` }
	pid := os.Getpid()
	forever := make(chan struct{})

	var committed atomic.Int64
	obs := &childObserver{
		applied: func() {
			if n := committed.Add(1); spec.BlockAfterCommit > 0 && n == int64(spec.BlockAfterCommit) {
				logger.Info("consumer child: blocking after a commit, before the ack")
				<-forever
			}
		},
		duplicate: func(id string) {
			if _, err := db.Exec("INSERT INTO "+q("duplicate")+" VALUES ($1, $2)", id, pid); err != nil {
				logger.Error("consumer child: record duplicate", "error", err)
			}
		},
	}
	ib, err := inbox.New(db, &inbox.Config{
		Dialect: accord.Postgres, Schema: spec.Schema, Consumer: spec.Consumer, Logger: logger, Observer: obs,
	})
	if err != nil {
		logger.Error("consumer child: new inbox", "error", err)
		return 2
	}
	sub, err := wnats.NewSubscriber(wnats.SubscriberConfig{
		URL:          spec.NATSURL,
		Unmarshaler:  &wnats.NATSMarshaler{},
		CloseTimeout: 5 * time.Second,
		JetStream: wnats.JetStreamConfig{
			DurablePrefix: spec.Durable,
			AckAsync:      false,
			SubscribeOptions: []nats.SubOpt{
				nats.DeliverAll(), nats.AckExplicit(), nats.ManualAck(),
				nats.AckWait(spec.AckWait), nats.MaxAckPending(64),
			},
		},
	}, watermill.NewSlogLogger(logger))
	if err != nil {
		logger.Error("consumer child: subscriber", "error", err)
		return 2
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, watermill.NewSlogLogger(logger))
	if err != nil {
		logger.Error("consumer child: router", "error", err)
		return 2
	}
	var handled atomic.Int64
	router.AddConsumerHandler("apply", spec.Topic, sub, ib.HandlerFunc(func(ctx context.Context, tx *sql.Tx, msg *message.Message) error {
		if _, err := tx.ExecContext(ctx, "UPDATE "+q("counter")+" SET n = n + 1 WHERE id = 1"); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO "+q("applied")+" VALUES ($1, $2)", msg.UUID, pid); err != nil {
			return err
		}
		if n := handled.Add(1); spec.BlockInTx > 0 && n == int64(spec.BlockInTx) {
			if _, err := db.Exec("INSERT INTO "+q("blocked")+" VALUES ($1, $2)", msg.UUID, pid); err != nil {
				return err
			}
			logger.Info("consumer child: blocking inside a transaction", "message_id", msg.UUID)
			<-forever
		}
		return nil
	}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := router.Run(ctx); err != nil {
		logger.Error("consumer child: run", "error", err)
		return 1
	}
	return 0
}

type childObserver struct {
	inbox.ObserverDefaults
	applied   func()
	duplicate func(id string)
}

func (o *childObserver) Applied(context.Context, inbox.Observation) { o.applied() }
func (o *childObserver) Duplicate(_ context.Context, ob inbox.Observation) {
	o.duplicate(ob.MessageID)
}

// startConsumerChild starts the test binary as a consumer process (see
// TestMain).
func startConsumerChild(t *testing.T, spec consumerChildSpec) *testproc.Child {
	t.Helper()
	return testproc.Start(t, "consumer", consumerChildEnv, spec)
}
