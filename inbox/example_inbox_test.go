package inbox_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/inbox"
)

// credit applies a "credited" event to the accounts table, in the inbox's
// transaction.
func credit(ctx context.Context, tx *sql.Tx, msg *message.Message) error {
	var ev struct {
		Account string `json:"account"`
		Amount  int    `json:"amount"`
	}
	if err := json.Unmarshal(msg.Payload, &ev); err != nil {
		return fmt.Errorf("%w: %v", inbox.ErrDecode, err) // parked at once: retrying cannot help
	}
	_, err := tx.ExecContext(ctx, `UPDATE accounts SET balance = balance + ? WHERE id = ?`, ev.Amount, ev.Account)
	return err
}

// A message delivered three times (the broker delivers at least once)
// changes the balance once.
func ExampleInbox_Handle() {
	ctx := context.Background()
	db, cleanup := openExampleDB() // SQLite in a temporary directory, migrated
	defer cleanup()

	ib, err := inbox.New(db, &inbox.Config{Dialect: accord.SQLite, Consumer: "billing"})
	if err != nil {
		panic(err)
	}
	msg := message.NewMessage("0196f3c2-7c4e-7d2a-9b1e-3f0c5a8e4d21", []byte(`{"account":"alice","amount":10}`))
	for range 3 {
		res, err := ib.Handle(ctx, msg, credit)
		fmt.Println(res, err)
	}
	fmt.Println("balance:", balance(db))

	// Output:
	// applied <nil>
	// duplicate <nil>
	// duplicate <nil>
	// balance: 10
}

// A message the handler cannot decode is parked as a dead letter and
// acknowledged (Handle returns no error), so the messages behind it keep
// flowing. An operator lists dead letters, then requeues or drops them.
func ExampleInbox_DeadLetters() {
	ctx := context.Background()
	db, cleanup := openExampleDB()
	defer cleanup()

	ib, err := inbox.New(db, &inbox.Config{
		Dialect:  accord.SQLite,
		Consumer: "billing",
		Logger:   slog.New(slog.DiscardHandler), // parking logs an error
	})
	if err != nil {
		panic(err)
	}
	bad := message.NewMessage("0196f3c2-7c4e-7d2a-9b1e-3f0c5a8e4d22", []byte(`{"account":`))
	bad.Metadata.Set(inbox.MetadataTopic, "accounts.credited")
	good := message.NewMessage("0196f3c2-7c4e-7d2a-9b1e-3f0c5a8e4d23", []byte(`{"account":"alice","amount":5}`))
	for _, m := range []*message.Message{bad, good} {
		res, err := ib.Handle(ctx, m, credit)
		fmt.Println(res, err)
	}

	dls, err := ib.DeadLetters(ctx, nil)
	if err != nil {
		panic(err)
	}
	for _, dl := range dls {
		fmt.Printf("dead letter %d: %s from %s after %d attempt: %s\n", dl.Seq, dl.MessageID, dl.Topic, dl.Attempts, dl.Reason)
	}
	fmt.Println("balance:", balance(db))

	// Output:
	// dead_lettered <nil>
	// applied <nil>
	// dead letter 1: 0196f3c2-7c4e-7d2a-9b1e-3f0c5a8e4d22 from accounts.credited after 1 attempt: accord inbox: cannot decode message: unexpected end of JSON input
	// balance: 5
}

// In a watermill router, Inbox.HandlerFunc acknowledges applied, duplicate
// and parked messages and nacks failed ones, so the broker redelivers them.
func ExampleInbox_HandlerFunc() {
	db, cleanup := openExampleDB()
	defer cleanup()

	done := make(chan inbox.Observation, 3)
	ib, err := inbox.New(db, &inbox.Config{Dialect: accord.SQLite, Consumer: "billing", Observer: notify(done)})
	if err != nil {
		panic(err)
	}

	pubsub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{}) // any watermill Subscriber
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		panic(err)
	}
	router.AddConsumerHandler("billing", "accounts.credited", pubsub, ib.HandlerFunc(credit))
	go func() { _ = router.Run(context.Background()) }()
	defer router.Close()
	<-router.Running()

	msg := message.NewMessage("0196f3c2-7c4e-7d2a-9b1e-3f0c5a8e4d24", []byte(`{"account":"alice","amount":7}`))
	for range 3 { // the broker redelivers
		if err := pubsub.Publish("accounts.credited", msg.Copy()); err != nil {
			panic(err)
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			panic("message not handled")
		}
	}
	fmt.Println("balance:", balance(db))

	// Output:
	// balance: 7
}

// notify is an Observer that sends every applied or duplicate outcome to ch.
type notify chan<- inbox.Observation

func (n notify) Applied(_ context.Context, o inbox.Observation)   { n <- o }
func (n notify) Duplicate(_ context.Context, o inbox.Observation) { n <- o }
func (n notify) Failed(context.Context, inbox.Observation)        {}
func (n notify) DeadLettered(context.Context, inbox.Observation)  {}
