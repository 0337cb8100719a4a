package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/broker"
	"github.com/accordgo/accord/relay"
)

type relayFlags struct {
	db              dbFlags
	log             logFlags
	broker          string
	lanes           int
	batchSize       int
	pollInterval    time.Duration
	shutdownTimeout time.Duration
}

func (a *app) newRelayCmd() *cobra.Command {
	var f relayFlags
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Publish committed outbox rows to a broker until stopped",
		Long: `Run the outbox relay: read committed rows from the outbox table, publish them
to the broker in order per partition key, and delete them once the broker
accepted them. It runs until SIGINT or SIGTERM, then keeps publishing the rows
it already read for at most --shutdown-timeout and exits with code 0.

Brokers (--broker):
  log, stdout                one JSON line per message on stdout (the default;
                             for trying things out)
  gochannel, inprocess       watermill GoChannel inside this process (nobody
                             else can subscribe: for demos only)
  nats://host:4222[?subject_prefix=p]
                             NATS JetStream: subject <p>.<topic>, stream found
                             by subject or created, duplicates dropped on the
                             message UUID (Nats-Msg-Id)
  postgres://...             watermill-sql topic tables (watermill_<topic>) in
                             that database, for broker-less setups

Exit codes: 0 after a graceful stop; 1 when the relay fails, for example
because the outbox table does not exist (run 'accord migrate up' with the same
--schema and --table-prefix); 2 for invalid flags or configuration.

` + settingsHelp,
		Example: `  accord relay --database-url sqlite:///var/lib/app/app.db
  ACCORD_DATABASE_URL=postgres://app@db:5432/app accord relay --broker nats://nats:4222 --log-format json`,
		Args: cobra.NoArgs,
	}
	f.db.register(cmd, databaseURLHelp+" (required)")
	fs := cmd.Flags()
	fs.StringVar(&f.broker, "broker", "log", "broker URL: log, gochannel, nats://host:4222[?subject_prefix=p] or postgres://...")
	bindEnv(cmd, "broker", "ACCORD_BROKER")
	fs.IntVar(&f.lanes, "lanes", relay.LanesDefault, fmt.Sprintf("ordered lanes publishing concurrently (1-%d)", relay.LanesMax))
	bindEnv(cmd, "lanes", "ACCORD_LANES")
	fs.IntVar(&f.batchSize, "batch-size", relay.BatchSizeDefault, fmt.Sprintf("most rows read per statement (1-%d)", relay.BatchSizeMax))
	bindEnv(cmd, "batch-size", "ACCORD_BATCH_SIZE")
	fs.DurationVar(&f.pollInterval, "poll-interval", 0, fmt.Sprintf("wait between reads when idle; 0 means %s on SQLite and %s elsewhere (PostgreSQL also wakes up on LISTEN/NOTIFY)",
		relay.PollIntervalSQLite, relay.PollIntervalDefault))
	bindEnv(cmd, "poll-interval", "ACCORD_POLL_INTERVAL")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", relay.ShutdownTimeoutDefault, "how long to keep publishing rows already read after a stop signal")
	bindEnv(cmd, "shutdown-timeout", "ACCORD_SHUTDOWN_TIMEOUT")
	f.log.register(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.runRelay(cmd.Context(), &f)
	}
	return cmd
}

func (a *app) runRelay(ctx context.Context, f *relayFlags) error {
	if err := f.db.requireURL(); err != nil {
		return err
	}
	logger, err := f.log.logger(a.stderr)
	if err != nil {
		return err
	}
	// Zero-valued or negative settings would silently mean "default" in
	// relay.Config; on the command line they are mistakes.
	if f.lanes < 1 || f.batchSize < 1 || f.pollInterval < 0 || f.shutdownTimeout <= 0 {
		return usageErrorf("--lanes and --batch-size must be at least 1, --poll-interval at least 0 and --shutdown-timeout positive (got %d, %d, %s, %s)",
			f.lanes, f.batchSize, f.pollInterval, f.shutdownTimeout)
	}
	db, dialect, err := accord.OpenDB(f.db.url)
	if err != nil {
		return usageErrorf("--database-url: %w", err)
	}
	defer db.Close()

	b, err := broker.OpenWith(ctx, f.broker, logger, &broker.OpenOpts{Stdout: a.stdout})
	if err != nil {
		if errors.Is(err, broker.ErrUnknownScheme) || errors.Is(err, broker.ErrInvalidURL) {
			return usageErrorf("--broker: %w", err)
		}
		return err
	}
	defer b.Close() // after a failure; the normal path closes it below

	r, err := relay.New(db, b.Publisher, &relay.Config{
		Dialect:         dialect,
		Schema:          f.db.schema,
		TablePrefix:     f.db.tablePrefix,
		Lanes:           f.lanes,
		BatchSize:       f.batchSize,
		PollInterval:    f.pollInterval,
		ShutdownTimeout: f.shutdownTimeout,
		Logger:          logger,
	})
	if err != nil {
		if errors.Is(err, relay.ErrInvalidConfig) {
			return usageError(err)
		}
		return err
	}
	logger.InfoContext(ctx, "accord relay starting", "database", broker.RedactURL(f.db.url), "dialect", dialect,
		"schema", f.db.schema, "table_prefix", f.db.tablePrefix, "broker", b.Name)
	runErr := r.Run(ctx)
	if runErr != nil && ctx.Err() != nil && errors.Is(runErr, ctx.Err()) {
		// Stopped while still waiting for the database: a graceful stop.
		runErr = nil
	}
	if err := b.Close(); err != nil {
		return errors.Join(runErr, fmt.Errorf("close broker %s: %w", b.Name, err))
	}
	return runErr
}
