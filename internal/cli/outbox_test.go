package cli

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
)

// accord outbox dead list|requeue|drop manage the relay's dead letters.
func TestOutboxDead(t *testing.T) {
	t.Parallel()
	url := sqliteURL(t)
	requireCode(t, exitOK, runCLI(t, nil, "migrate", "up", "--database-url", url))
	db, _, err := accord.OpenDB(url)
	require.NoError(t, err)
	defer db.Close()
	ctx := context.Background()
	for i, key := range []string{"a", "b"} {
		_, err := db.ExecContext(ctx, `INSERT INTO accord_outbox_dead (seq, id, topic, partition_key, shard, payload, metadata, created_at, attempts, last_error, parked, dead_at)
			VALUES (?, ?, 'orders', ?, 0, x'00', '{}', 0, 5, 'broker says no', 1, 0)`, i+10, "0199d3c3-0000-7000-8000-00000000000"+strconv.Itoa(i), key)
		require.NoError(t, err)
	}
	res := runCLI(t, nil, "outbox", "dead", "list", "--database-url", url)
	requireCode(t, exitOK, res)
	require.Contains(t, res.stdout, "broker says no")
	require.Len(t, strings.Split(strings.TrimSpace(res.stdout), "\n"), 3)

	requireCode(t, exitOK, runCLI(t, nil, "outbox", "dead", "requeue", "10", "--database-url", url))
	requireCode(t, exitOK, runCLI(t, nil, "outbox", "dead", "drop", "11", "--database-url", url))
	requireCode(t, exitFailure, runCLI(t, nil, "outbox", "dead", "drop", "11", "--database-url", url))
	requireCode(t, exitUsage, runCLI(t, nil, "outbox", "dead", "drop", "x", "--database-url", url))
	requireCode(t, exitUsage, runCLI(t, nil, "relay", "--database-url", url, "--dead-letter-policy", "maybe", "--http-addr", "off"))

	var pending, dead int
	require.NoError(t, db.QueryRow("SELECT count(*) FROM accord_outbox WHERE seq = 10").Scan(&pending))
	require.NoError(t, db.QueryRow("SELECT count(*) FROM accord_outbox_dead").Scan(&dead))
	require.Equal(t, 1, pending)
	require.Zero(t, dead)
}
