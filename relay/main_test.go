package relay_test

import (
	"os"
	"testing"
)

// relayChildEnv, when set in the environment, makes the test binary run as a
// relay process instead of running tests. Its value is a JSON relayChildSpec.
// crash_test.go starts such processes, kills them with SIGKILL and stops them
// with SIGTERM.
const relayChildEnv = "ACCORD_RELAY_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(relayChildEnv); spec != "" {
		os.Exit(runRelayChild(spec))
	}
	os.Exit(m.Run())
}
