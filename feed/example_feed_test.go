package feed_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http/httptest"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/feed"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
)

// openExampleDB opens a new, migrated SQLite database in a temporary
// directory. The returned function closes it and removes the directory.
func openExampleDB() (*sql.DB, func()) {
	return dbtest.ExampleSQLite()
}

// A producer appends events to its feed (here through the Publisher the
// relay would use); a consumer pulls them over HTTP and applies them in its
// own database, storing its cursor in the same transaction.
func ExamplePuller_PullOnce() {
	ctx := context.Background()
	producerDB, closeProducer := openExampleDB() // SQLite in a temporary directory, migrated
	defer closeProducer()
	consumerDB, closeConsumer := openExampleDB()
	defer closeConsumer()

	// Producer: the feed, filled through a watermill publisher and served
	// over HTTP.
	src, err := feed.NewSource(producerDB, &feed.SourceConfig{Dialect: accord.SQLite, Name: "orders"})
	if err != nil {
		panic(err)
	}
	var pub message.Publisher = src.Publisher() // relay.New(producerDB, pub, ...) in production
	for i, status := range []string{"placed", "paid", "shipped"} {
		msg := message.NewMessage(outbox.NewID(), []byte(status))
		msg.Metadata.Set(outbox.MetadataKey, "order-42")
		msg.Metadata.Set(outbox.MetadataVersion, strconv.Itoa(i+1))
		if err := pub.Publish("orders.status", msg); err != nil {
			panic(err)
		}
	}
	server := httptest.NewServer(src.Handler())
	defer server.Close()

	// Consumer: its own table, updated with the cursor in one transaction.
	if _, err := consumerDB.Exec(`CREATE TABLE shipments (order_id TEXT PRIMARY KEY, status TEXT NOT NULL)`); err != nil {
		panic(err)
	}
	client, err := feed.NewHTTPFetcher(server.URL, nil)
	if err != nil {
		panic(err)
	}
	puller, err := feed.NewPuller(consumerDB, client, &feed.PullerConfig{Dialect: accord.SQLite, Consumer: "shipping", Feed: "orders"},
		func(ctx context.Context, tx *sql.Tx, ev feed.Event) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO shipments (order_id, status) VALUES (?, ?)
				ON CONFLICT (order_id) DO UPDATE SET status = excluded.status`, ev.Key, string(ev.Payload))
			return err
		})
	if err != nil {
		panic(err)
	}

	n, err := puller.PullOnce(ctx) // e.g. from a cron job; Run follows the feed instead
	if err != nil {
		panic(err)
	}
	fmt.Println("applied:", n)
	var status string
	if err := consumerDB.QueryRow(`SELECT status FROM shipments WHERE order_id = 'order-42'`).Scan(&status); err != nil {
		panic(err)
	}
	fmt.Println("order-42:", status)

	n, err = puller.PullOnce(ctx) // the cursor was stored: nothing is applied twice
	if err != nil {
		panic(err)
	}
	fmt.Println("applied again:", n)

	// Output:
	// applied: 3
	// order-42: shipped
	// applied again: 0
}

// Reading a feed page by page with the cursor each page returns.
func ExampleSource_Read() {
	ctx := context.Background()
	db, cleanup := openExampleDB() // SQLite in a temporary directory, migrated
	defer cleanup()

	src, err := feed.NewSource(db, &feed.SourceConfig{Dialect: accord.SQLite, Name: "orders"})
	if err != nil {
		panic(err)
	}
	for i := 1; i <= 5; i++ {
		_, err := src.Append(ctx, feed.Event{Topic: "orders.placed", Key: fmt.Sprintf("order-%d", i), Payload: []byte("{}")})
		if err != nil {
			panic(err)
		}
	}

	cursor := "" // the start of the feed
	for {
		page, err := src.Read(ctx, cursor, 2, 0)
		if err != nil {
			panic(err)
		}
		for _, ev := range page.Events {
			fmt.Print(ev.Position, ":", ev.Key, " ")
		}
		fmt.Println("more:", page.More)
		cursor = page.Next
		if !page.More {
			break
		}
	}

	// Output:
	// 1:order-1 2:order-2 more: true
	// 3:order-3 4:order-4 more: true
	// 5:order-5 more: false
}
