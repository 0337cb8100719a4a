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
		Short: "Measure relay drain throughput, commit-to-publish latency and idle CPU on PostgreSQL, against watermill's forwarder",
		Long: `Measure the Accord relay on a PostgreSQL database. By default the destination
is in process (--destination inprocess), so the figures are the relay's and the
database's, not a broker's.

  1. Drain: write --events events into a fresh outbox, start --relays relays
     and time them until the destination received every event and the relays
     together deleted every row (the table is then checked to be empty).
  2. Forwarder: the same backlog through watermill's components/forwarder over
     watermill-sql v4 in its default configuration, publishing to the same
     destination (skip with --no-forwarder; its figures are then 0).
  3. Latency: --relays relays on an empty outbox while --rate events per second
     are committed for --duration, one event per transaction; p50/p99 of the
     time from just before COMMIT to arrival at the destination (--duration 0
     skips it). --open-transaction holds a transaction open in another
     database of the cluster meanwhile, holding back the xmin horizon.
  4. Idle: --relays relays on an empty outbox with nothing written, for
     --idle-duration once they settled; the CPU time (user + system) of the
     whole benchmark process over that window, in percent of one core
     (relay_cpu_idle_percent; --idle-duration 0 skips it).

--destination takes a broker URL instead of inprocess: nats://127.0.0.1:4222,
amqp://guest:guest@127.0.0.1:5672/, redis://127.0.0.1:6379 (any URL of
` + "`accord relay --broker`" + ` that can be subscribed to). The relays and the forwarder
then publish to that broker, each relay over its own connection, and the
benchmark subscribes to each phase's topic there (named after the run's schema
and the phase, subscribed before anything is published) and records what
arrives. The topics are removed from the broker when their phase ends.
--publish-latency applies to the in-process destination only.

--relays N runs N relay instances in this process, each with its own connection
pool and the same settings, on one outbox: they share its work only when the
relay coordinates instances, and publish rows twice (duplicates) otherwise.

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
			case opts.IdleDuration < 0:
				return usageErrorf("--idle-duration %s: must not be negative (0 skips the idle phase)", opts.IdleDuration)
			case opts.Relays < 1 || opts.Relays > bench.RelaysMax:
				return usageErrorf("--relays %d: must be between 1 and %d", opts.Relays, bench.RelaysMax)
			}
			if opts.LatencyDuration == 0 {
				opts.LatencyDuration = -1 // bench.Options: negative skips the phase
			}
			if opts.IdleDuration == 0 {
				opts.IdleDuration = -1
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
	f.DurationVar(&opts.IdleDuration, "idle-duration", bench.IdleDurationDefault, "length of the idle phase, which measures the CPU use of relays with nothing to do (0 skips it)")
	f.BoolVar(&opts.NoForwarder, "no-forwarder", false, "skip the watermill forwarder phase")
	f.BoolVar(&opts.OpenTransaction, "open-transaction", false, "hold a transaction open in another database of the cluster (postgres, or template1) during the latency phase, holding back the xmin horizon")
	f.StringVar(&opts.Destination, "destination", bench.DestinationInProcess, "where the relays and the forwarder publish: "+bench.DestinationInProcess+", or a broker URL (nats://, amqp://, redis://) the benchmark subscribes to")
	f.IntVar(&opts.Relays, "relays", bench.RelaysDefault, "relay instances run together in the drain, latency and idle phases (1 to "+strconv.Itoa(bench.RelaysMax)+")")
	f.DurationVar(&opts.PublishLatency, "publish-latency", 0, "sleep this long in every publish call of the in-process destination (a broker round trip), for Accord and the forwarder alike; in-process destination only")
	f.IntVar(&opts.Lanes, "lanes", 0, "Accord relay lanes (0: the relay default, "+strconv.Itoa(relay.LanesDefault)+")")
	f.IntVar(&opts.BatchSize, "batch-size", 0, "Accord relay batch size (0: the relay default, "+strconv.Itoa(relay.BatchSizeDefault)+")")
	f.BoolVar(&asJSON, "json", false, "also print the result as one JSON object on the last line")
	f.StringVar(&cpuProfile, "cpu-profile", "", "write a CPU profile of the Accord drain phase to this file (go tool pprof)")
	return cmd
}
