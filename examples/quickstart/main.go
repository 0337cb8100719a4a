// Command quickstart shows Accord's transactional outbox end to end: an order
// and its OrderPlaced event are saved in one transaction, the relay publishes
// the event to a broker, a consumer receives it, and an order whose
// transaction rolls back produces no event at all.
//
//	go run ./examples/quickstart
//
// With no configuration it needs nothing else: SQLite in a temporary file and
// watermill's in-process GoChannel. --database-url (ACCORD_DATABASE_URL)
// switches to PostgreSQL, --nats-url (ACCORD_NATS_URL) to NATS JetStream.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/nats-io/nats.go"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/migrate"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

const topic = "orders.placed"

// config is what the command line sets; zero values mean the defaults.
type config struct {
	DatabaseURL string        // PostgreSQL URL; empty means SQLite in a temporary file
	NATSURL     string        // NATS URL (JetStream enabled); empty means the in-process GoChannel
	Schema      string        // PostgreSQL schema for Accord's tables and orders; defaults to "quickstart"
	Consumer    string        // NATS durable consumer and queue group; defaults to "quickstart"
	Timeout     time.Duration // bounds the whole run; defaults to 30 s
}

func main() {
	var cfg config
	flag.StringVar(&cfg.DatabaseURL, "database-url", os.Getenv("ACCORD_DATABASE_URL"),
		"PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/test (env ACCORD_DATABASE_URL; default: SQLite in a temporary file)")
	flag.StringVar(&cfg.NATSURL, "nats-url", os.Getenv("ACCORD_NATS_URL"),
		"NATS URL with JetStream, e.g. nats://127.0.0.1:4222 (env ACCORD_NATS_URL; default: in-process GoChannel)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, cfg, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "quickstart failed:", err)
		os.Exit(1)
	}
}

// order is a row of the orders table and the payload of its OrderPlaced event.
type order struct {
	ID         int64  `json:"id"`
	Customer   string `json:"customer"`
	TotalCents int64  `json:"total_cents"`
}

func run(ctx context.Context, cfg config, stdout io.Writer) error {
	if cfg.Schema == "" {
		cfg.Schema = "quickstart"
	}
	if cfg.Consumer == "" {
		cfg.Consumer = "quickstart"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var outMu sync.Mutex // the consumer prints from its own goroutine
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(stdout, format+"\n", args...)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// 1. The service's own database: Accord's tables (package migrate) and
	// the business table, an orders table.
	url, dbName := cfg.DatabaseURL, "PostgreSQL, schema "+cfg.Schema
	if url == "" {
		dir, err := os.MkdirTemp("", "accord-quickstart-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		url, dbName = "sqlite://"+filepath.Join(dir, "quickstart.db"), "SQLite, temporary file"
	}
	db, dialect, err := accord.OpenDB(url)
	if err != nil {
		return err
	}
	defer db.Close()
	if dialect != accord.Postgres && dialect != accord.SQLite {
		return fmt.Errorf("this example runs on PostgreSQL or SQLite, not %s", dialect)
	}
	schema, orders, outboxTable := "", "orders", outbox.TablePrefixDefault+"outbox"
	if dialect == accord.Postgres {
		schema, orders, outboxTable = cfg.Schema, cfg.Schema+"."+orders, cfg.Schema+"."+outboxTable
	}
	m, err := migrate.New(db, &migrate.Config{Dialect: dialect, Schema: schema})
	if err != nil {
		return err
	}
	if _, err := m.Migrate(ctx, migrate.Up, nil); err != nil {
		return err
	}
	for _, stmt := range []string{
		"CREATE TABLE IF NOT EXISTS " + orders + " (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, total_cents BIGINT NOT NULL)",
		"DELETE FROM " + orders, // so that reruns on PostgreSQL start clean
	} {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			return err
		}
	}

	// 2. A broker, and a consumer subscribed before anything is published.
	pub, sub, brokerName, err := openBroker(ctx, cfg)
	if err != nil {
		return err
	}
	defer pub.Close()
	say("database: %s; broker: %s", dbName, brokerName)
	msgs, err := sub.Subscribe(ctx, topic)
	if err != nil {
		return fmt.Errorf("subscribe to %s: %w", topic, err)
	}
	var gotMu sync.Mutex
	var got []*message.Message
	consumerDone := make(chan struct{})
	go func() {
		defer close(consumerDone)
		for msg := range msgs {
			say("consumer: received %s key=%s version=%s payload=%s", topic,
				msg.Metadata.Get(outbox.MetadataKey), msg.Metadata.Get(outbox.MetadataVersion), msg.Payload)
			gotMu.Lock()
			got = append(got, msg)
			gotMu.Unlock()
			msg.Ack()
		}
	}()
	defer func() { sub.Close(); <-consumerDone }()

	// 3. The relay publishes committed outbox rows through the publisher.
	r, err := relay.New(db, pub, &relay.Config{Dialect: dialect, Schema: schema, Logger: logger})
	if err != nil {
		return err
	}
	relayErr := make(chan error, 1)
	go func() { relayErr <- r.Run(ctx) }()
	defer r.Close()
	select {
	case <-r.Running():
	case err := <-relayErr:
		return fmt.Errorf("relay: %w", err)
	case <-ctx.Done():
		return fmt.Errorf("relay did not start: %w", ctx.Err())
	}

	// 4. Save two orders, each with its event in the same transaction:
	// commit the first, roll the second back.
	ob, err := outbox.New(&outbox.Config{Dialect: dialect, Schema: schema})
	if err != nil {
		return err
	}
	placed := order{ID: 1, Customer: "ada", TotalCents: 4200}
	placedID, err := saveOrder(ctx, db, ob, orders, placed, true)
	if err != nil {
		return err
	}
	r.Wake() // SQLite has no LISTEN/NOTIFY; on PostgreSQL the commit wakes the relay by itself
	say("committed: order %d and its OrderPlaced event, in one transaction", placed.ID)
	abandoned := order{ID: 2, Customer: "bob", TotalCents: 1300}
	abandonedID, err := saveOrder(ctx, db, ob, orders, abandoned, false)
	if err != nil {
		return err
	}
	say("rolled back: order %d and its OrderPlaced event", abandoned.ID)

	// 5. Wait until the outbox is empty and the consumer has every event the
	// relay published. The rolled-back event never reached the outbox, so
	// after that nothing more can arrive.
	var pending int
	var st relay.Stats
	var received []*message.Message
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+outboxTable).Scan(&pending); err != nil {
			return fmt.Errorf("count outbox rows: %w", err)
		}
		st = r.Stats()
		gotMu.Lock()
		received = append([]*message.Message(nil), got...)
		gotMu.Unlock()
		if pending == 0 && st.InFlight == 0 && st.Published > 0 && int64(len(received)) >= st.Published {
			break
		}
		select {
		case <-tick.C:
		case err := <-relayErr:
			return fmt.Errorf("relay stopped: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("timed out after %s: %d rows still in the outbox, relay published %d (%d failed attempts), consumer received %d",
				cfg.Timeout, pending, st.Published, st.Failures, len(received))
		}
	}

	// 6. Check what happened.
	var ids []int64
	rows, err := db.QueryContext(ctx, "SELECT id FROM "+orders+" ORDER BY id")
	if err != nil {
		return err
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return err
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(ids) != 1 || ids[0] != placed.ID {
		return fmt.Errorf("orders table holds ids %v, want only [%d]", ids, placed.ID)
	}
	for _, msg := range received {
		if msg.UUID == abandonedID {
			return fmt.Errorf("the rolled-back order's event %s was published", abandonedID)
		}
	}
	if st.Published != 1 || len(received) != 1 {
		return fmt.Errorf("relay published %d events and the consumer received %d, want exactly 1 "+
			"(events of an interrupted earlier run go out with the next one: run again)", st.Published, len(received))
	}
	msg := received[0]
	wantPayload, _ := json.Marshal(placed)
	if msg.UUID != placedID || string(msg.Payload) != string(wantPayload) ||
		msg.Metadata.Get(outbox.MetadataKey) != "order-1" || msg.Metadata.Get(outbox.MetadataVersion) != "1" {
		return fmt.Errorf("received message %s key=%q version=%q payload %s, want %s key=\"order-1\" version=\"1\" payload %s",
			msg.UUID, msg.Metadata.Get(outbox.MetadataKey), msg.Metadata.Get(outbox.MetadataVersion), msg.Payload, placedID, wantPayload)
	}
	say("proved:")
	say("  - the committed order's event reached the consumer, with its id, key, version and payload")
	say("  - the rolled-back order left no order row, no outbox row and no event (the relay published 1 event in all)")
	say("  - the outbox is empty: the relay deletes rows once the broker accepted them")
	return nil
}

// saveOrder inserts an order and its OrderPlaced event in one transaction,
// then commits or rolls back. It returns the event's message id.
func saveOrder(ctx context.Context, db *sql.DB, ob *outbox.Outbox, orders string, o order, commit bool) (string, error) {
	payload, err := json.Marshal(o)
	if err != nil {
		return "", err
	}
	msg := outbox.NewMessage(payload)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return "", err
	}
	defer tx.Rollback() //nolint:errcheck // a no-op once committed
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+orders+" (id, customer, total_cents) VALUES ($1, $2, $3)",
		o.ID, o.Customer, o.TotalCents); err != nil {
		return "", fmt.Errorf("insert order %d: %w", o.ID, err)
	}
	err = ob.WriteTx(ctx, tx, outbox.Event{
		Topic:   topic,
		Key:     fmt.Sprintf("order-%d", o.ID),
		Version: 1,
		Message: msg,
	})
	if err != nil {
		return "", err
	}
	if !commit {
		return msg.UUID, tx.Rollback()
	}
	return msg.UUID, tx.Commit()
}

// openBroker returns watermill's in-process GoChannel, or a NATS JetStream
// publisher and a durable, queue-grouped subscriber when cfg.NATSURL is set.
func openBroker(ctx context.Context, cfg config) (message.Publisher, message.Subscriber, string, error) {
	logger := watermill.NopLogger{}
	if cfg.NATSURL == "" {
		ch := gochannel.NewGoChannel(gochannel.Config{}, logger)
		return ch, ch, "GoChannel, in process", nil
	}
	// JetStream stream names cannot contain dots, and watermill-nats'
	// AutoProvision names the stream after the topic, so unless a stream
	// already stores the topic, create the stream ORDERS for the subjects
	// orders.> here (in production: with the rest of your infrastructure).
	nc, err := nats.Connect(cfg.NATSURL)
	if err != nil {
		return nil, nil, "", fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := nc.JetStream(nats.Context(ctx))
	if err != nil {
		return nil, nil, "", err
	}
	stream, err := js.StreamNameBySubject(topic)
	if errors.Is(err, nats.ErrNoMatchingStream) {
		stream = "ORDERS"
		_, err = js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{"orders.>"}})
	}
	if err != nil {
		return nil, nil, "", fmt.Errorf("JetStream stream for %s: %w", topic, err)
	}
	// A durable consumer resumes where it left off, across runs too: start it
	// afresh, so that this run receives only its own events.
	if err := js.DeleteConsumer(stream, cfg.Consumer); err != nil && !errors.Is(err, nats.ErrConsumerNotFound) {
		return nil, nil, "", fmt.Errorf("reset consumer %s: %w", cfg.Consumer, err)
	}
	pub, err := wmnats.NewPublisher(wmnats.PublisherConfig{
		URL: cfg.NATSURL,
		// Nats-Msg-Id = message UUID: JetStream drops a duplicate that the
		// relay publishes again after a crash (within the dedup window).
		JetStream: wmnats.JetStreamConfig{TrackMsgId: true},
	}, logger)
	if err != nil {
		return nil, nil, "", fmt.Errorf("NATS publisher: %w", err)
	}
	sub, err := wmnats.NewSubscriber(wmnats.SubscriberConfig{
		URL:              cfg.NATSURL,
		QueueGroupPrefix: cfg.Consumer,
		JetStream: wmnats.JetStreamConfig{
			DurablePrefix:    cfg.Consumer,
			SubscribeOptions: []nats.SubOpt{nats.DeliverNew(), nats.AckExplicit()},
		},
	}, logger)
	if err != nil {
		pub.Close()
		return nil, nil, "", fmt.Errorf("NATS subscriber: %w", err)
	}
	return pub, sub, "NATS JetStream, stream " + stream, nil
}
