package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/broker"
	"github.com/accordgo/accord/internal/dbtest"
)

func TestBenchRelay(t *testing.T) {
	dbtest.Postgres(t)
	// The URL comes from the environment variable, as documented.
	res := runCLI(t, map[string]string{"ACCORD_DATABASE_URL": dbtest.PostgresURL()},
		"bench", "relay", "--events", "300", "--rate", "100", "--duration", "1s", "--idle-duration", "200ms", "--no-forwarder", "--json")
	requireCode(t, exitOK, res)
	require.Contains(t, res.stdout, "Accord drain")
	require.Contains(t, res.stdout, "idle relay CPU")
	require.Contains(t, res.stderr, "accord bench: drain (Accord)")
	out := benchJSON(t, res.stdout)
	require.EqualValues(t, 300, out["backlog"])
	require.Equal(t, "inprocess", out["destination"])
	require.EqualValues(t, 1, out["relays"])
	require.Positive(t, out["idle_seconds"])
	require.EqualValues(t, 0, out["forwarder_events_per_sec"], "skipped forwarder: 0")
	require.EqualValues(t, 100, out["latency_events"])
	require.EqualValues(t, 0, out["lost"])
	require.EqualValues(t, 0, out["duplicates"])
	require.EqualValues(t, 0, out["order_violations"])
	require.NotContains(t, out, "forwarder_lost")
}

// benchJSONFields are the fields the --json result always has.
var benchJSONFields = []string{"events", "backlog", "destination", "relays", "drain_events_per_sec",
	"forwarder_events_per_sec", "ratio", "latency_p50_ms", "latency_p99_ms", "publish_latency_ms",
	"relay_cpu_idle_percent", "max_rss_mib", "lost", "duplicates", "order_violations"}

// benchJSON parses the last line of stdout, the --json result, and checks
// that it has every field of benchJSONFields.
func benchJSON(t *testing.T, stdout string) map[string]any {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	var out map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &out), "last line is the JSON result")
	for _, k := range benchJSONFields {
		require.Contains(t, out, k)
	}
	return out
}

// --destination publishes to a broker and reads every event back from it.
func TestBenchRelayDestinations(t *testing.T) {
	dbtest.Postgres(t)
	for name, url := range map[string]string{"nats": dbtest.NATSURL(), "amqp": dbtest.RabbitMQURL(), "redis": dbtest.RedisURL()} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			res := runCLI(t, nil, "bench", "relay", "--database-url", dbtest.PostgresURL(), "--destination", url,
				"--events", "500", "--rate", "100", "--duration", "1s", "--idle-duration", "0", "--no-forwarder", "--json")
			requireCode(t, exitOK, res)
			require.Contains(t, res.stdout, "relays deleted every row after")
			out := benchJSON(t, res.stdout)
			require.Equal(t, broker.RedactURL(url), out["destination"])
			require.EqualValues(t, 500, out["backlog"])
			require.EqualValues(t, 100, out["latency_events"])
			require.EqualValues(t, 0, out["lost"])
			require.EqualValues(t, 0, out["duplicates"])
			require.EqualValues(t, 0, out["order_violations"])
			require.EqualValues(t, 0, out["relay_cpu_idle_percent"], "idle phase skipped")
		})
	}
}

func TestBenchRelayUsage(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "relay", "--events", "0"},
		{"bench", "relay", "--rate", "-1"},
		{"bench", "relay", "--duration", "-1s"},
		{"bench", "relay", "--lanes", "5000"},
		{"bench", "relay", "--relays", "0"},
		{"bench", "relay", "--relays", "17"},
		{"bench", "relay", "--idle-duration", "-1s"},
		{"bench", "relay", "--publish-latency", "-1ms"},
		{"bench", "relay", "--destination", "log"},
		{"bench", "relay", "--destination", "gochannel"},
		{"bench", "relay", "--destination", "bogus://127.0.0.1:1"},
		{"bench", "relay", "--destination", "nats://127.0.0.1:4222?bogus=1"},
		{"bench", "relay", "--destination", "nats://127.0.0.1:4222", "--publish-latency", "1ms"},
		{"bench", "relay", "--database-url", "sqlite:///tmp/x.db"},
		{"bench", "relay", "extra"},
		{"bench", "nope"},
	} {
		res := runCLI(t, nil, args...)
		requireCode(t, exitUsage, res)
	}
}
