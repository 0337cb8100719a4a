package relay_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/migrate"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// Run the relay: events committed in the outbox are published to a
// watermill publisher (here the in-process GoChannel) and deleted.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "accord-relay-example")
	defer os.RemoveAll(dir)
	db, dialect, err := accord.OpenDB("sqlite://" + filepath.Join(dir, "app.db"))
	if err != nil {
		panic(err)
	}
	defer db.Close()
	m, _ := migrate.New(db, &migrate.Config{Dialect: dialect})
	if _, err := m.Migrate(ctx, migrate.Up, nil); err != nil {
		panic(err)
	}

	broker := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	received, _ := broker.Subscribe(ctx, "orders.placed")

	r, err := relay.New(db, broker, &relay.Config{Dialect: dialect, Logger: discardLogger()})
	if err != nil {
		panic(err)
	}
	go func() { _ = r.Run(ctx) }()
	defer r.Close()

	ob, _ := outbox.New(&outbox.Config{Dialect: dialect})
	tx, _ := db.BeginTx(ctx, nil)
	_ = ob.WriteTx(ctx, tx, outbox.Event{Topic: "orders.placed", Key: "order-1", Version: 1,
		Message: outbox.NewMessage([]byte(`{"id":1}`))})
	_ = tx.Commit()
	r.Wake() // SQLite has no LISTEN/NOTIFY: tell the relay a commit happened

	select {
	case msg := <-received:
		msg.Ack()
		fmt.Println(string(msg.Payload), msg.Metadata.Get(outbox.MetadataKey), msg.Metadata.Get(outbox.MetadataVersion))
	case <-time.After(10 * time.Second):
		fmt.Println("timed out")
	}
	// Output: {"id":1} order-1 1
}

// On MySQL/MariaDB the relay publishes a row only once it was inserted
// VisibilityDelay ago (50 ms unless set; -1 turns it off), so that a commit
// InnoDB makes visible late cannot be overtaken by a later event of its key.
// PostgreSQL and SQLite need no delay.
func ExampleConfig_visibilityDelay() {
	for _, d := range []accord.Dialect{accord.MySQL, accord.Postgres, accord.SQLite} {
		cfg := (&relay.Config{Dialect: d}).WithDefaults()
		fmt.Printf("%s: %s\n", d, cfg.VisibilityDelay)
	}
	// Output:
	// mysql: 50ms
	// postgres: 0s
	// sqlite: 0s
}
