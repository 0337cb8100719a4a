package broker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
)

// Payloads are any bytes, not only JSON (watermill-sql's default column
// type), and a watermill-sql subscriber with the default schema adapter,
// as another service would run it, reads them back.
func TestPostgresPayloadsAreBytes(t *testing.T) {
	t.Parallel()
	db := dbtest.Postgres(t)
	topic := dbtest.RandomName("accord_test_")
	t.Cleanup(func() {
		for _, table := range []string{"watermill_" + topic, "watermill_offsets_" + topic} {
			_, err := db.Exec(fmt.Sprintf(`DROP TABLE IF EXISTS %q`, table))
			require.NoError(t, err)
		}
	})
	b := openBroker(t, dbtest.PostgresURL(), nil)
	sent := []*message.Message{
		message.NewMessage(uuid.NewString(), []byte("not JSON")),
		message.NewMessage(uuid.NewString(), []byte{0xff, 0x00, 0xfe}),
		message.NewMessage(uuid.NewString(), []byte(`{"id":1}`)),
	}
	sent[0].Metadata.Set("accord_key", "order-42")
	require.NoError(t, b.Publisher.Publish(topic, sent...))

	var typ string
	require.NoError(t, db.QueryRow(`SELECT data_type FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = $1 AND column_name = 'payload'`, "watermill_"+topic).Scan(&typ))
	require.Equal(t, "bytea", typ)

	sub, err := wsql.NewSubscriber(wsql.BeginnerFromStdSQL(db), wsql.SubscriberConfig{
		ConsumerGroup:    "other_service",
		SchemaAdapter:    wsql.DefaultPostgreSQLSchema{},
		OffsetsAdapter:   wsql.DefaultPostgreSQLOffsetsAdapter{},
		InitializeSchema: true,
		PollInterval:     10 * time.Millisecond,
	}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, sub.Close()) })
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ch, err := sub.Subscribe(ctx, topic)
	require.NoError(t, err)
	for i, want := range sent {
		got := receive(t, ctx, ch)
		require.Equal(t, want.UUID, got.UUID, "message %d", i)
		require.Equal(t, want.Payload, got.Payload, "message %d", i)
		require.Equal(t, want.Metadata.Get("accord_key"), got.Metadata.Get("accord_key"))
		got.Ack()
	}
}
