package accordprom_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/accordprom"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// A relay with Prometheus metrics: the backlog gauge counts the outbox rows
// before the relay runs, and the counters tell what it published.
func ExampleRelayMetrics() {
	ctx := context.Background()
	db, cleanup := openExampleDB() // SQLite in a temporary directory, migrated
	defer cleanup()

	// The application commits three events.
	ob, err := outbox.New(&outbox.Config{Dialect: accord.SQLite})
	if err != nil {
		panic(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		panic(err)
	}
	for _, ev := range []outbox.Event{
		{Topic: "orders.placed", Key: "order-1", Message: outbox.NewMessage([]byte(`{"id":1}`))},
		{Topic: "orders.placed", Key: "order-2", Message: outbox.NewMessage([]byte(`{"id":2}`))},
		{Topic: "orders.paid", Key: "order-1", Message: outbox.NewMessage([]byte(`{"id":1}`))},
	} {
		if err := ob.WriteTx(ctx, tx, ev); err != nil {
			panic(err)
		}
	}
	if err := tx.Commit(); err != nil {
		panic(err)
	}

	// The relay, with its metrics on a registry served at /metrics.
	reg := prometheus.NewRegistry()
	metrics, err := accordprom.NewRelayMetrics(reg, nil)
	if err != nil {
		panic(err)
	}
	broker := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{}) // your broker's Publisher
	r, err := relay.New(db, broker, &relay.Config{Dialect: accord.SQLite, Observer: metrics, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	if err := metrics.Track(r); err != nil { // the backlog gauges
		panic(err)
	}
	server := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer server.Close()

	scrape(server.URL, "accord_relay_backlog_rows")

	placed, err := broker.Subscribe(ctx, "orders.placed")
	if err != nil {
		panic(err)
	}
	paid, err := broker.Subscribe(ctx, "orders.paid")
	if err != nil {
		panic(err)
	}
	go func() { _ = r.Run(ctx) }()
	for _, ch := range []<-chan *message.Message{placed, placed, paid} {
		select {
		case msg := <-ch:
			msg.Ack()
		case <-time.After(10 * time.Second):
			panic("event not published")
		}
	}
	if err := r.Close(); err != nil { // waits for Run to delete what it published
		panic(err)
	}

	scrape(server.URL, "accord_relay_backlog_rows", "accord_relay_published_messages_total",
		"accord_relay_deleted_rows_total", "accord_relay_write_to_publish_seconds_count")

	// Output:
	// accord_relay_backlog_rows 3
	// accord_relay_backlog_rows 0
	// accord_relay_deleted_rows_total 3
	// accord_relay_published_messages_total{topic="orders.paid"} 1
	// accord_relay_published_messages_total{topic="orders.placed"} 2
	// accord_relay_write_to_publish_seconds_count 3
}
