package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
)

func TestOrdersUsers(t *testing.T) {
	t.Parallel()

	// postgresSchemas returns two fresh schema names and drops the schemas
	// when the test ends; run creates them (and drops them first).
	postgresSchemas := func(t *testing.T) (string, string) {
		t.Helper()
		db := dbtest.Postgres(t)
		users, orders := dbtest.RandomName("ou_users_"), dbtest.RandomName("ou_orders_")
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for _, s := range []string{users, orders} {
				_, err := db.ExecContext(ctx, `DROP SCHEMA IF EXISTS "`+s+`" CASCADE`)
				require.NoError(t, err)
			}
		})
		return users, orders
	}

	requireProved := func(t *testing.T, cfg config) {
		t.Helper()
		var out bytes.Buffer
		require.NoError(t, run(t.Context(), cfg, &out), out.String())
		got := out.String()
		for _, want := range []string{
			"order service: its inbox holds that message id already: dropped as a duplicate, user_profiles unchanged\n",
			"the feed skipped it, it holds that id already\n",
			"user service: pulled the copy and skipped it as stale: order_summaries holds order-1 at version 2 already\n",
			"order service: user-2 v3 arrived first: applied, and the replica reported a gap (it held version 1)\n",
			"order service: user-2 v2 arrived late: skipped as stale, user_profiles keeps version 3\n",
			"user service: order-2 v3 arrived first: applied, and the replica reported a gap (it held version 1)\n",
			"user service: order-2 v2 arrived late: skipped as stale, order_summaries keeps version 3\n",
			"order service: caught up: applied the 3 changes it missed",
			"user service: resumed from its stored cursor: applied the 3 events it missed; order_summaries matches orders again (4 rows)\n",
			"  missing user-3 (source version 2, replica version 0)\n",
			"  stale   user-2 (source version 3, replica version 1)\n",
			"  extra   user-99 (source version 0, replica version 1)\n",
			"  ahead   order-1 (source version 3, replica version 9)\n",
			"consumers: applied the snapshots: order-1 rewritten at version 3; user-2 rewritten at version 3; user-3 rewritten at version 2; user-99 deleted (tombstone)\n",
			"user service: orders per user, joining users with its order_summaries replica: Ada King 2 orders, 49.25; Bob 1 order, 19.90; Cy 0 orders, 0.00; Dee 1 order, 12.50\n",
			"order service: customers of orders, joining orders with its user_profiles replica: order 1 shipped for Ada King <ada@example.com>, gold; " +
				"order 2 shipped for Bob <bob@example.org>, gold; order 3 placed for Dee <dee@example.com>, bronze; order 4 placed for Ada King <ada@example.com>, gold\n",
			"\nproved:\n",
			"  - push: user_profiles (order service) equals users (user service), 4 rows, every column, and each replica position equals the user's version\n",
			"  - pull: order_summaries (user service) equals orders (order service), 4 rows, every column, and each replica position equals the order's version\n",
			"  - drift was found and repaired: reconcile found 3 drifted users and 1 drifted order",
		} {
			require.Contains(t, got, want)
		}
		require.True(t, strings.HasSuffix(got, "  - nothing is left behind: both outboxes are empty and the inbox holds no dead letter\n"), got)
	}

	t.Run("SQLiteGoChannel", func(t *testing.T) {
		t.Parallel()
		requireProved(t, config{})
	})

	t.Run("PostgresGoChannel", func(t *testing.T) {
		t.Parallel()
		users, orders := postgresSchemas(t)
		cfg := config{UsersDatabaseURL: dbtest.PostgresURL(), OrdersDatabaseURL: dbtest.PostgresURL(), UsersSchema: users, OrdersSchema: orders}
		requireProved(t, cfg)
		// A second run on the same schemas starts clean too.
		requireProved(t, cfg)
	})

	t.Run("PostgresNATS", func(t *testing.T) {
		t.Parallel()
		users, orders := postgresSchemas(t)
		// Subjects of this run only, in a stream of their own, removed at
		// the end: other runs on the same server cannot interfere.
		prefix := dbtest.RandomName("ou_") + "."
		t.Cleanup(func() {
			nc, err := nats.Connect(dbtest.NATSURL())
			require.NoError(t, err)
			defer nc.Close()
			js, err := nc.JetStream()
			require.NoError(t, err)
			stream, err := js.StreamNameBySubject(prefix + usersTopic)
			require.NoError(t, err)
			require.NoError(t, js.DeleteStream(stream))
		})
		requireProved(t, config{
			UsersDatabaseURL:  dbtest.PostgresURL(),
			OrdersDatabaseURL: dbtest.PostgresURL(),
			UsersSchema:       users,
			OrdersSchema:      orders,
			NATSURL:           dbtest.NATSURL(),
			NATSSubjectPrefix: prefix,
		})
	})

	t.Run("MySQLAndSQLite", func(t *testing.T) {
		t.Parallel()
		// The user service on MySQL/MariaDB, the order service on SQLite:
		// each service picks its own database.
		db := dbtest.MySQL(t)
		users := dbtest.RandomName("ou_users_")
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS `"+users+"`")
			require.NoError(t, err)
		})
		requireProved(t, config{UsersDatabaseURL: dbtest.MySQLURL(), UsersSchema: users})
	})
}
