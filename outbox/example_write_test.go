package outbox_test

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/outbox"
)

// The order row and the event that announces it are written in one local
// transaction: both commit, or neither exists.
func ExampleOutbox_WriteTx() {
	ctx := context.Background()
	db, cleanup := openExampleDB() // SQLite in a temporary directory, migrated
	defer cleanup()

	ob, err := outbox.New(&outbox.Config{Dialect: accord.SQLite})
	if err != nil {
		panic(err)
	}

	placeOrder := func(id string, totalCents int, commit bool) {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			panic(err)
		}
		defer func() { _ = tx.Rollback() }() // a no-op after Commit

		if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, total_cents) VALUES (?, ?)`, id, totalCents); err != nil {
			panic(err)
		}
		payload, _ := json.Marshal(map[string]any{"order_id": id, "total_cents": totalCents})
		err = ob.WriteTx(ctx, tx, outbox.Event{
			Topic:   "orders.placed",
			Key:     "order-" + id, // events of one order are published in order
			Version: 1,
			Message: outbox.NewMessage(payload),
		})
		if err != nil {
			panic(err)
		}
		if commit {
			if err := tx.Commit(); err != nil {
				panic(err)
			}
		}
	}

	placeOrder("42", 1999, true)
	fmt.Println("pending events after commit:", pendingEvents(db))

	placeOrder("43", 500, false) // rolled back: no order, no event
	fmt.Println("pending events after rollback:", pendingEvents(db))

	// Output:
	// pending events after commit: 1
	// pending events after rollback: 1
}

// Existing watermill code publishes into the outbox through a
// message.Publisher bound to the business transaction. The partition key and
// aggregate version travel in metadata.
func ExampleOutbox_Publisher() {
	ctx := context.Background()
	db, cleanup := openExampleDB() // SQLite in a temporary directory, migrated
	defer cleanup()

	ob, err := outbox.New(&outbox.Config{Dialect: accord.SQLite})
	if err != nil {
		panic(err)
	}

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		panic(err)
	}
	defer func() { _ = tx.Rollback() }() // a no-op after Commit
	if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, total_cents) VALUES ('42', 1999)`); err != nil {
		panic(err)
	}

	var pub message.Publisher = ob.Publisher(tx) // for example a cqrs.EventBus's publisher
	msg := outbox.NewMessage([]byte(`{"order_id":"42"}`))
	msg.Metadata.Set(outbox.MetadataKey, "order-42")
	msg.Metadata.Set(outbox.MetadataVersion, "1")
	if err := pub.Publish("orders.placed", msg); err != nil {
		panic(err)
	}
	if err := tx.Commit(); err != nil {
		panic(err)
	}

	var topic, key string
	var version int64
	err = db.QueryRowContext(ctx, `SELECT topic, partition_key, aggregate_version FROM accord_outbox`).Scan(&topic, &key, &version)
	if err != nil {
		panic(err)
	}
	fmt.Println(topic, key, version)

	// Output:
	// orders.placed order-42 1
}
