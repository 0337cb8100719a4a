package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
)

// The lease flags appear in the help with their environment variables.
func TestRelayLeaseFlagsHelp(t *testing.T) {
	t.Parallel()
	res := runCLI(t, nil, "relay", "--help")
	requireCode(t, exitOK, res)
	for _, want := range []string{
		"--lease-ttl duration", "[$ACCORD_LEASE_TTL]",
		"--instance-id string", "[$ACCORD_INSTANCE_ID]",
		"--disable-leases", "[$ACCORD_DISABLE_LEASES]",
		"share its rows through 64 leases",
		"only for a\n  deployment that guarantees a single relay",
	} {
		require.Contains(t, res.stdout, want)
	}
}

// runRelayUntilStarted runs `accord relay` with args and env until the
// relay logged that it started, then stops it and returns its JSON log
// lines on stderr.
func runRelayUntilStarted(t *testing.T, env map[string]string, args ...string) []map[string]any {
	t.Helper()
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := newSyncBuffer(), newSyncBuffer()
	done := make(chan int, 1)
	args = append([]string{"relay", "--log-format", "json", "--http-addr", "off"}, args...)
	go func() { done <- testApp(stdout, stderr, env).run(runCtx, args) }()
	stderr.waitFor(t, `"msg":"relay started"`, stdout)
	stopRelay(t, cancel, done, stderr)
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), "log line %q", l)
		lines = append(lines, m)
	}
	return lines
}

func logLine(t *testing.T, lines []map[string]any, msg string) map[string]any {
	t.Helper()
	for _, l := range lines {
		if l["msg"] == msg {
			return l
		}
	}
	require.FailNow(t, "no log line "+msg, "%v", lines)
	return nil
}

// --instance-id (here from the environment) and --lease-ttl reach the
// relay: the start line names the instance (the id and a random suffix).
// With --disable-leases the relay runs on an outbox without the lease
// tables, and the start line has no instance id.
func TestRelayLeaseFlags(t *testing.T) {
	t.Parallel()

	t.Run("InstanceID", func(t *testing.T) {
		t.Parallel()
		lines := runRelayUntilStarted(t, map[string]string{"ACCORD_INSTANCE_ID": "billing-relay-1"},
			"--database-url", dbtest.SQLite(t).URL, "--lease-ttl", "2s")
		start := logLine(t, lines, "accord relay starting")
		require.Regexp(t, `^billing-relay-1-[0-9a-f]{8}$`, start["instance_id"])
		require.Equal(t, true, start["leases"])
		require.Equal(t, float64(2*time.Second), start["lease_ttl"]) // slog writes durations as nanoseconds
		require.Equal(t, start["instance_id"], logLine(t, lines, "relay started")["instance"])
	})

	t.Run("DisableLeases", func(t *testing.T) {
		t.Parallel()
		env := dbtest.SQLite(t)
		for _, table := range []string{"accord_relay_lease", "accord_relay_instance"} {
			_, err := env.DB.Exec("DROP TABLE " + table)
			require.NoError(t, err)
		}
		lines := runRelayUntilStarted(t, map[string]string{"ACCORD_DISABLE_LEASES": "true"}, "--database-url", env.URL)
		start := logLine(t, lines, "accord relay starting")
		require.Equal(t, "", start["instance_id"])
		require.Equal(t, false, start["leases"])

		// Without --disable-leases the same outbox is not migrated.
		res := runCLI(t, nil, "relay", "--database-url", env.URL, "--http-addr", "off")
		requireCode(t, exitFailure, res)
		require.Contains(t, res.stderr, "table does not exist (outbox not migrated)")
		require.Contains(t, res.stderr, "relay_lease")
	})
}
