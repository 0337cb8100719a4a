package cli

import "github.com/spf13/cobra"

// newBenchCmd is the `accord bench` command group.
func newBenchCmd() *cobra.Command {
	return &cobra.Command{Use: "bench", Short: "Benchmark Accord against your own database and broker"}
}
