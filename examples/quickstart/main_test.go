package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
)

func TestQuickstart(t *testing.T) {
	t.Parallel()

	// postgresSchema returns a fresh schema name and drops the schema when
	// the test ends; run creates it through package migrate.
	postgresSchema := func(t *testing.T) string {
		t.Helper()
		db := dbtest.Postgres(t)
		schema := dbtest.RandomName("qs_")
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := db.ExecContext(ctx, `DROP SCHEMA IF EXISTS "`+schema+`" CASCADE`)
			require.NoError(t, err)
		})
		return schema
	}

	requireProved := func(t *testing.T, cfg config) {
		t.Helper()
		var out bytes.Buffer
		require.NoError(t, run(t.Context(), cfg, &out), out.String())
		require.Contains(t, out.String(), `consumer: received orders.placed key=order-1 version=1 payload={"id":1,"customer":"ada","total_cents":4200}`)
		require.Contains(t, out.String(), "proved:\n")
		require.Contains(t, out.String(), "the rolled-back order left no order row, no outbox row and no event (the relay published 1 event in all)")
		require.NotContains(t, out.String(), "key=order-2")
	}

	t.Run("SQLiteGoChannel", func(t *testing.T) {
		t.Parallel()
		requireProved(t, config{})
	})

	t.Run("PostgresGoChannel", func(t *testing.T) {
		t.Parallel()
		cfg := config{DatabaseURL: dbtest.PostgresURL(), Schema: postgresSchema(t)}
		requireProved(t, cfg)
		// A second run on the same schema starts clean too.
		requireProved(t, cfg)
	})

	t.Run("PostgresNATS", func(t *testing.T) {
		t.Parallel()
		requireProved(t, config{
			DatabaseURL: dbtest.PostgresURL(),
			NATSURL:     dbtest.NATSURL(),
			Schema:      postgresSchema(t),
			Consumer:    dbtest.RandomName("qs_"),
		})
	})
}
