package replica_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/replica"
)

// A ByVersion replica of customers: each event carries the customer's whole
// state and its aggregate version, and a late, older event never overwrites
// a newer state.
func ExampleReplica_Apply() {
	ctx := context.Background()
	db, cleanup := openExampleDB() // SQLite in a temporary directory, migrated
	defer cleanup()

	upsertCustomer := func(ctx context.Context, tx *sql.Tx, c replica.Change) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO customers (id, name) VALUES (?, ?)
			ON CONFLICT (id) DO UPDATE SET name = excluded.name`, c.Key, string(c.Message.Payload))
		return err
	}
	r, err := replica.New(db, &replica.Config{
		Dialect: accord.SQLite,
		Name:    "crm.customers",
		Mode:    replica.ByVersion, // GapPolicy defaults to ApplyAndReport
		Logger:  slog.New(slog.DiscardHandler),
	}, upsertCustomer)
	if err != nil {
		panic(err)
	}

	change := func(version int64, name string) replica.Change {
		return replica.Change{Key: "customer-7", Version: version, Message: message.NewMessage(outbox.NewID(), []byte(name))}
	}
	// Versions 1 to 3 arrive as 2, 1, 3, 3.
	for _, c := range []replica.Change{change(2, "Ada L."), change(1, "Ada"), change(3, "Ada Lovelace"), change(3, "Ada Lovelace")} {
		outcome, err := r.Apply(ctx, c)
		if err != nil {
			panic(err)
		}
		fmt.Printf("version %d: %s\n", c.Version, outcome)
	}
	version, _, _, err := r.Position(ctx, "customer-7")
	if err != nil {
		panic(err)
	}
	fmt.Printf("replica at version %d: %s\n", version, customerName(db, "customer-7"))

	// Output:
	// version 2: gap
	// version 1: stale
	// version 3: applied
	// version 3: stale
	// replica at version 3: Ada Lovelace
}

// A BySequence replica applies every change exactly once and in order:
// changes that arrive early wait in replica_parked until the gap fills.
func ExampleReplica_Apply_bySequence() {
	ctx := context.Background()
	db, cleanup := openExampleDB()
	defer cleanup()

	appendName := func(ctx context.Context, tx *sql.Tx, c replica.Change) error {
		fmt.Printf("  applying %d\n", c.Version)
		_, err := tx.ExecContext(ctx, `INSERT INTO customers (id, name) VALUES (?, ?)
			ON CONFLICT (id) DO UPDATE SET name = name || excluded.name`, c.Key, string(c.Message.Payload))
		return err
	}
	r, err := replica.New(db, &replica.Config{
		Dialect:    accord.SQLite,
		Name:       "crm.customer_names",
		Mode:       replica.BySequence,
		GapTimeout: time.Minute, // then CheckGaps asks for a resync
		Logger:     slog.New(slog.DiscardHandler),
	}, appendName)
	if err != nil {
		panic(err)
	}

	parts := map[int64]string{1: "A", 2: "d", 3: "a", 4: "!"}
	for _, seq := range []int64{1, 3, 4, 2} {
		fmt.Printf("sequence %d arrives\n", seq)
		outcome, err := r.Apply(ctx, replica.Change{
			Key:     "customer-7",
			Version: seq,
			Message: message.NewMessage(outbox.NewID(), []byte(parts[seq])),
		})
		if err != nil {
			panic(err)
		}
		fmt.Printf("  %s\n", outcome)
	}
	fmt.Println(customerName(db, "customer-7"))

	// Output:
	// sequence 1 arrives
	//   applying 1
	//   applied
	// sequence 3 arrives
	//   parked
	// sequence 4 arrives
	//   parked
	// sequence 2 arrives
	//   applying 2
	//   applying 3
	//   applying 4
	//   applied
	// Ada!
}

// In a consumer, ApplyTx runs in the transaction that handles the message
// (for example an inbox handler's), reading the key and version from the
// metadata the relay published.
func ExampleReplica_ApplyTx() {
	ctx := context.Background()
	db, cleanup := openExampleDB()
	defer cleanup()

	r, err := replica.New(db, &replica.Config{
		Dialect: accord.SQLite,
		Name:    "crm.customers",
		Mode:    replica.ByVersion,
		Logger:  slog.New(slog.DiscardHandler),
	}, func(ctx context.Context, tx *sql.Tx, c replica.Change) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO customers (id, name) VALUES (?, ?)
			ON CONFLICT (id) DO UPDATE SET name = excluded.name`, c.Key, string(c.Message.Payload))
		return err
	})
	if err != nil {
		panic(err)
	}

	// A message as the relay publishes it.
	msg := message.NewMessage(outbox.NewID(), []byte("Grace Hopper"))
	msg.Metadata.Set(outbox.MetadataKey, "customer-9")
	msg.Metadata.Set(outbox.MetadataVersion, "1")
	msg.Metadata.Set(outbox.MetadataCreatedAt, "2025-01-02T03:04:05.123456Z")

	handle := func(ctx context.Context, tx *sql.Tx, msg *message.Message) error {
		c, err := replica.ChangeFromMessage(msg)
		if err != nil {
			return err // a message without accord_key: nothing to retry
		}
		outcome, err := r.ApplyTx(ctx, tx, c)
		if err != nil {
			return err
		}
		fmt.Println(c.Key, "version", c.Version, outcome)
		return nil
	}

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		panic(err)
	}
	defer func() { _ = tx.Rollback() }() // a no-op after Commit
	if err := handle(ctx, tx, msg); err != nil {
		panic(err)
	}
	if err := tx.Commit(); err != nil {
		panic(err)
	}
	_, ts, _, err := r.Position(ctx, "customer-9")
	if err != nil {
		panic(err)
	}
	fmt.Println(customerName(db, "customer-9"), "as of", ts.Format(time.RFC3339Nano))

	// Output:
	// customer-9 version 1 applied
	// Grace Hopper as of 2025-01-02T03:04:05.123456Z
}
