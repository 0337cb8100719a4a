package cli

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/reconcile"
)

// `accord sync reconcile` reports drift with exit code 3, and --repair writes
// one snapshot event per drifted key into the source's outbox.
func TestSyncReconcile(t *testing.T) {
	t.Parallel()
	url := sqliteURL(t)
	requireCode(t, exitOK, runCLI(t, nil, "migrate", "up", "--database-url", url))
	db, _, err := accord.OpenDB(url)
	require.NoError(t, err)
	defer db.Close()
	for _, stmt := range []string{
		"CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT, version INTEGER NOT NULL)",
		"CREATE TABLE replica (id TEXT PRIMARY KEY, version INTEGER NOT NULL)",
		"INSERT INTO users VALUES ('ada', 'Ada', 3), ('bob', 'Bob', 1)",
		"INSERT INTO replica VALUES ('ada', 3), ('bob', 1)",
	} {
		_, err := db.Exec(stmt)
		require.NoError(t, err)
	}
	args := []string{"sync", "reconcile", "--source-url", url, "--source-table", "users",
		"--replica-url", url, "--replica-table", "replica", "--json"}

	res := runCLI(t, nil, args...)
	requireCode(t, exitOK, res)
	var rep reconcile.Report
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &rep))
	require.True(t, rep.InSync())

	_, err = db.Exec("UPDATE replica SET version = 2 WHERE id = 'ada'")
	require.NoError(t, err)
	res = runCLI(t, nil, args...)
	requireCode(t, exitDrift, res)
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &rep))
	require.Equal(t, []string{"ada"}, rep.DriftedKeys())

	requireCode(t, exitUsage, runCLI(t, nil, append(args, "--repair")...))
	requireCode(t, exitUsage, runCLI(t, nil, "sync", "reconcile", "--source-url", url, "--source-table", "users; drop table users",
		"--replica-url", url, "--replica-table", "replica"))

	res = runCLI(t, nil, append(args, "--repair", "--topic", "users.snapshot")...)
	requireCode(t, exitOK, res)
	var n int
	var key string
	var payload []byte
	require.NoError(t, db.QueryRow("SELECT count(*), max(partition_key), max(payload) FROM accord_outbox WHERE topic = 'users.snapshot'").Scan(&n, &key, &payload))
	require.Equal(t, 1, n)
	require.Equal(t, "ada", key)
	require.JSONEq(t, `{"id":"ada","name":"Ada","version":3}`, string(payload))
}
