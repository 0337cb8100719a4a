package broker

import (
	"context"
	"fmt"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"

	"github.com/accordgo/accord"
)

// openPostgres opens the broker-less transport: watermill-sql topic tables
// ("watermill_<topic>", created on first publish) in a PostgreSQL database
// that other services subscribe to with watermill-sql.
//
// The tables it creates store payloads as BYTEA, not watermill-sql's
// default JSON: an event's payload is any bytes, and a JSON column rejects
// every payload that is not JSON, which would block the relay's lane on it
// for good. Reading either column type gives the payload's bytes back, so
// watermill-sql subscribers read these tables with the default schema
// adapter too; a table that already exists is used as it is.
func openPostgres(ctx context.Context, rawURL string, wlog watermill.LoggerAdapter) (*Broker, error) {
	name := RedactURL(rawURL)
	db, _, err := accord.OpenDB(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrInvalidURL, name, err)
	}
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("accord broker: connect to PostgreSQL at %s: %w", name, err)
	}
	handle := wsql.BeginnerFromStdSQL(db)
	schema := wsql.DefaultPostgreSQLSchema{GeneratePayloadType: func(string) string { return "BYTEA" }}
	pub, err := wsql.NewPublisher(handle, wsql.PublisherConfig{
		SchemaAdapter:        schema,
		AutoInitializeSchema: true,
	}, wlog)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("accord broker: watermill-sql publisher: %w", err)
	}
	sub, err := wsql.NewSubscriber(handle, wsql.SubscriberConfig{
		SchemaAdapter:    schema,
		OffsetsAdapter:   wsql.DefaultPostgreSQLOffsetsAdapter{},
		InitializeSchema: true,
	}, wlog)
	if err != nil {
		_ = pub.Close()
		_ = db.Close()
		return nil, fmt.Errorf("accord broker: watermill-sql subscriber: %w", err)
	}
	return &Broker{
		Publisher:  pub,
		Subscriber: sub,
		Name:       name,
		closers:    []func() error{sub.Close, pub.Close, db.Close},
	}, nil
}
