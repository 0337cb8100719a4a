package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
)

func TestBenchRelay(t *testing.T) {
	dbtest.Postgres(t)
	// The URL comes from the environment variable, as documented.
	res := runCLI(t, map[string]string{"ACCORD_DATABASE_URL": dbtest.PostgresURL()},
		"bench", "relay", "--events", "300", "--rate", "100", "--duration", "1s", "--no-forwarder", "--json")
	requireCode(t, exitOK, res)
	require.Contains(t, res.stdout, "Accord drain")
	require.Contains(t, res.stderr, "accord bench: drain (Accord)")
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	var out map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &out), "last line is the JSON result")
	require.EqualValues(t, 300, out["backlog"])
	require.EqualValues(t, 100, out["latency_events"])
	require.EqualValues(t, 0, out["lost"])
	require.EqualValues(t, 0, out["duplicates"])
	require.EqualValues(t, 0, out["order_violations"])
	require.NotContains(t, out, "forwarder_lost")
}

func TestBenchRelayUsage(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "relay", "--events", "0"},
		{"bench", "relay", "--rate", "-1"},
		{"bench", "relay", "--duration", "-1s"},
		{"bench", "relay", "--lanes", "5000"},
		{"bench", "relay", "--database-url", "sqlite:///tmp/x.db"},
		{"bench", "relay", "extra"},
		{"bench", "nope"},
	} {
		res := runCLI(t, nil, args...)
		requireCode(t, exitUsage, res)
	}
}
