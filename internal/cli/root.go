// Package cli implements the accord command (cmd/accord) with cobra. Each
// command reads its settings from flags first, then ACCORD_* environment
// variables, then defaults, and says so in its help.
package cli

import (
	"io"

	"github.com/spf13/cobra"
)

// Main runs the accord command with args and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	root := &cobra.Command{
		Use:           "accord",
		Short:         "Accord keeps data consistent across microservices: outbox relay, migrations, benchmarks",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newBenchCmd())
	if err := root.Execute(); err != nil {
		return 1
	}
	return 0
}
