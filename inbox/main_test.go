package inbox_test

import (
	"os"
	"testing"
)

// consumerChildEnv, when set in the environment, makes the test binary run
// as a consumer process instead of running tests. Its value is a JSON
// consumerChildSpec. crash_test.go starts such processes and kills them
// with SIGKILL.
const consumerChildEnv = "ACCORD_INBOX_CONSUMER_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(consumerChildEnv); spec != "" {
		os.Exit(runConsumerChild(spec))
	}
	os.Exit(m.Run())
}
