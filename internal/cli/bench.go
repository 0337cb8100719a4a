package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/accordgo/accord/internal/bench"
	"github.com/accordgo/accord/relay"
)

// newBenchCmd is the `accord bench` command group.
func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmark Accord against your own database and broker",
		Args:  cobra.ArbitraryArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(newBenchRelayCmd())
	return cmd
}

func newBenchRelayCmd() *cobra.Command {
	var (
		opts       bench.Options
		asJSON     bool
		cpuProfile string
	)
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Measure relay drain throughput and commit-to-publish latency on PostgreSQL, against watermill's forwarder",
		Long: `Measure the Accord relay on a PostgreSQL database with an in-process
destination, so the figures are the relay's and the database's, not a broker's.

  1. Drain: write --events events into a fresh outbox, start one relay and time
     it until every event was published and the table is empty.
  2. Forwarder: the same backlog through watermill's components/forwarder over
     watermill-sql v4 in its default configuration (skip with --no-forwarder).
  3. Latency: one relay on an empty outbox while --rate events per second are
     committed for --duration, one event per transaction; p50/p99 of the time
     from just before COMMIT to arrival at the destination (--duration 0 skips
     it).

Every phase checks for lost events, duplicates and per-key order violations.
The run creates a schema with a random name (accord_bench_...) and drops it at
the end. Progress goes to stderr, the result table to stdout; --json adds the
result as one JSON object on the last line. docs/benchmarks.md explains the
figures.

` + settingsHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case opts.Events < 1:
				return usageErrorf("--events %d: must be positive", opts.Events)
			case opts.Rate < 1:
				return usageErrorf("--rate %d: must be positive", opts.Rate)
			case opts.PublishLatency < 0:
				return usageErrorf("--publish-latency %s: must not be negative", opts.PublishLatency)
			case opts.LatencyDuration < 0:
				return usageErrorf("--duration %s: must not be negative (0 skips the latency phase)", opts.LatencyDuration)
			case opts.LatencyDuration == 0:
				opts.LatencyDuration = -1 // bench.Options: negative skips the phase
			}
			opts.Progress = cmd.ErrOrStderr()
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return fmt.Errorf("--cpu-profile: %w", err)
				}
				defer f.Close()
				opts.CPUProfile = f
			}
			res, err := bench.RunRelay(cmd.Context(), opts)
			if errors.Is(err, bench.ErrInvalidOptions) {
				return usageError(err)
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if err := res.WriteTable(out); err != nil {
				return err
			}
			if asJSON {
				b, err := json.Marshal(res)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "%s\n", b)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.DatabaseURL, "database-url", bench.DatabaseURLDefault, "PostgreSQL URL")
	bindEnv(cmd, "database-url", "ACCORD_DATABASE_URL")
	f.IntVar(&opts.Events, "events", bench.EventsDefault, "backlog size drained by each relay")
	f.IntVar(&opts.Rate, "rate", bench.RateDefault, "events per second written during the latency phase")
	f.DurationVar(&opts.LatencyDuration, "duration", bench.LatencyDurationDefault, "length of the latency phase (0 skips it)")
	f.BoolVar(&opts.NoForwarder, "no-forwarder", false, "skip the watermill forwarder phase")
	f.DurationVar(&opts.PublishLatency, "publish-latency", 0, "sleep this long in every publish call of the in-process destination (a broker round trip), for Accord and the forwarder alike")
	f.IntVar(&opts.Lanes, "lanes", 0, "Accord relay lanes (0: the relay default, "+strconv.Itoa(relay.LanesDefault)+")")
	f.IntVar(&opts.BatchSize, "batch-size", 0, "Accord relay batch size (0: the relay default, "+strconv.Itoa(relay.BatchSizeDefault)+")")
	f.BoolVar(&asJSON, "json", false, "also print the result as one JSON object on the last line")
	f.StringVar(&cpuProfile, "cpu-profile", "", "write a CPU profile of the Accord drain phase to this file (go tool pprof)")
	return cmd
}
