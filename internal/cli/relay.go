package cli

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/accordprom"
	"github.com/accordgo/accord/internal/broker"
	"github.com/accordgo/accord/relay"
)

// httpAddrDefault is where `accord relay` serves /metrics, /healthz and
// /readyz unless told otherwise. The loopback address keeps the endpoints
// private until an operator opens them (":9464" in a container).
const httpAddrDefault = "127.0.0.1:9464"

// httpAddrOff turns the HTTP server off (as does an empty --http-addr).
const httpAddrOff = "off"

// readyzPingTimeout bounds the database ping of /readyz.
const readyzPingTimeout = time.Second

// httpShutdownTimeout bounds the graceful shutdown of the HTTP server.
const httpShutdownTimeout = 5 * time.Second

type relayFlags struct {
	db               dbFlags
	log              logFlags
	broker           string
	lanes            int
	batchSize        int
	pollInterval     time.Duration
	shutdownTimeout  time.Duration
	deadLetterAfter  int
	deadLetterPolicy string
	httpAddr         string
	leaseTTL         time.Duration
	instanceID       string
	disableLeases    bool
	visibilityDelay  time.Duration
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
  nats://host:4222[?subject_prefix=p&publisher=async&ack_timeout=10s&max_pending=4096]
                             NATS JetStream: subject <p>.<topic>, stream found
                             by subject or created, duplicates dropped on the
                             message UUID (Nats-Msg-Id); one ack round trip per
                             message (order holds even on failures), or with
                             publisher=async the messages of one publish call
                             are sent at once and all their acks awaited (about
                             12x faster; a message that failed may be stored
                             after later ones of its call)
  postgres://...             watermill-sql topic tables (watermill_<topic>,
                             BYTEA payloads) in that database, for broker-less
                             setups
  amqp://user:pass@host:5672/vhost[?declare_queue=true&consumer_group=g]
                             RabbitMQ (amqps:// for TLS): durable fanout
                             exchange <topic>, persistent messages, publisher
                             confirms; with declare_queue=true the relay also
                             declares and binds the queue <topic>_<g> (g
                             defaults to accord), otherwise messages sent
                             while no queue is bound are dropped by RabbitMQ
  redis://[user:pass@]host:6379/db[?maxlen=n]
                             Redis Streams (rediss:// for TLS): stream <topic>,
                             trimmed to about n entries when maxlen is set
  kafka://host1:9092,host2:9092[?version=2.1.0]
                             Kafka: acks=all, idempotent producer, Kafka key =
                             accord_key so each key stays on one partition;
                             create the topics first; no SASL/TLS

HTTP (--http-addr, "off" disables it):
  /metrics                   Prometheus metrics: accord_relay_* (published
                             messages, errors, latency, backlog), go_*,
                             process_* and go_sql_* (the database pool); see
                             docs/operations.md
  /healthz                   200 while the relay runs (or starts), 503 once
                             it stopped
  /readyz                    200 when the relay is running and the database
                             answers a ping within 1s, else 503 and the reason

Several relays (--lease-ttl, --instance-id, --disable-leases):
  Several 'accord relay' processes on the same outbox (same database, --schema
  and --table-prefix) share its rows through 64 leases in the table
  <prefix>relay_lease: each process publishes the rows of the leases it holds,
  in order per partition key, and the leases are rebalanced when a process
  joins or stops (without duplicates after a graceful stop). When a process
  dies, the others take over its rows after at most --lease-ttl. A process
  logs its instance id (--instance-id and a random suffix) at startup.
  --disable-leases publishes every row without the lease tables: only for a
  deployment that guarantees a single relay on the outbox, since two relays
  without leases publish each row twice and break order per key.

Exit codes: 0 after a graceful stop; 1 when the relay fails, for example
because Accord's tables do not exist (run 'accord migrate up' with the same
--schema and --table-prefix) or --http-addr is in use; 2 for invalid flags or
configuration.

` + settingsHelp,
		Example: `  accord relay --database-url sqlite:///var/lib/app/app.db
  ACCORD_DATABASE_URL=postgres://app@db:5432/app accord relay --broker nats://nats:4222 --log-format json
  accord relay --database-url "$DATABASE_URL" --broker 'amqp://app:secret@rabbitmq:5672/prod?declare_queue=true&consumer_group=billing'
  accord relay --database-url "$DATABASE_URL" --broker kafka://kafka-1:9092,kafka-2:9092`,
		Args: cobra.NoArgs,
	}
	f.db.register(cmd, databaseURLHelp+" (required)")
	fs := cmd.Flags()
	fs.StringVar(&f.broker, "broker", "log", "broker URL: log, gochannel, nats://host:4222[?subject_prefix=p], postgres://..., "+
		"amqp://user:pass@host:5672/vhost, redis://host:6379/0 or kafka://host1:9092,host2:9092")
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
	fs.IntVar(&f.deadLetterAfter, "dead-letter-after", 0, "move a row to the dead letters after this many failed publish attempts; 0 retries forever")
	bindEnv(cmd, "dead-letter-after", "ACCORD_DEAD_LETTER_AFTER")
	fs.StringVar(&f.deadLetterPolicy, "dead-letter-policy", "park", "what the later rows of a dead-lettered row's key do: park (wait, order holds) or skip (keep flowing)")
	bindEnv(cmd, "dead-letter-policy", "ACCORD_DEAD_LETTER_POLICY")
	fs.StringVar(&f.httpAddr, "http-addr", httpAddrDefault, `host:port of the HTTP server for /metrics, /healthz and /readyz; "off" disables it`)
	bindEnv(cmd, "http-addr", "ACCORD_HTTP_ADDR")
	fs.DurationVar(&f.leaseTTL, "lease-ttl", relay.LeaseTTLDefault, fmt.Sprintf("how long this relay's leases last without renewal; other relays take over a dead relay's rows after at most this long (at least %s)",
		relay.LeaseTTLMin))
	bindEnv(cmd, "lease-ttl", "ACCORD_LEASE_TTL")
	fs.StringVar(&f.instanceID, "instance-id", "", `name of this relay in the lease tables and logs, followed by a random suffix; empty means "<host name>-<process id>"`)
	bindEnv(cmd, "instance-id", "ACCORD_INSTANCE_ID")
	fs.BoolVar(&f.disableLeases, "disable-leases", false, "publish every row without leases (no lease tables needed); only when the deployment guarantees a single relay on the outbox")
	bindEnv(cmd, "disable-leases", "ACCORD_DISABLE_LEASES")
	fs.DurationVar(&f.visibilityDelay, "visibility-delay", 0, fmt.Sprintf("MySQL/MariaDB only: publish a row once it was inserted at least this long ago, so that a commit InnoDB made visible late goes out first; 0 means %s, negative turns it off",
		relay.VisibilityDelayDefault))
	bindEnv(cmd, "visibility-delay", "ACCORD_VISIBILITY_DELAY")
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
	if f.lanes < 1 || f.batchSize < 1 || f.pollInterval < 0 || f.shutdownTimeout <= 0 || f.leaseTTL <= 0 {
		return usageErrorf("--lanes and --batch-size must be at least 1, --poll-interval at least 0 and --shutdown-timeout and --lease-ttl positive (got %d, %d, %s, %s, %s)",
			f.lanes, f.batchSize, f.pollInterval, f.shutdownTimeout, f.leaseTTL)
	}
	httpOn := f.httpAddr != "" && f.httpAddr != httpAddrOff
	if httpOn {
		if _, _, err := net.SplitHostPort(f.httpAddr); err != nil {
			return usageErrorf("--http-addr %q: %w (want host:port, or %q to disable the HTTP server)", f.httpAddr, err, httpAddrOff)
		}
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

	var (
		reg     *prometheus.Registry
		metrics *accordprom.RelayMetrics
		obs     relay.Observer
	)
	if httpOn {
		reg = prometheus.NewRegistry()
		if err := reg.Register(collectors.NewGoCollector()); err != nil {
			return err
		}
		if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
			return err
		}
		if err := reg.Register(collectors.NewDBStatsCollector(db, "accord")); err != nil {
			return err
		}
		if metrics, err = accordprom.NewRelayMetrics(reg, nil); err != nil {
			return err
		}
		obs = metrics
	}
	policy := relay.ParkKey
	switch f.deadLetterPolicy {
	case "park", "":
	case "skip":
		policy = relay.SkipKey
	default:
		return usageErrorf("--dead-letter-policy %q: want park or skip", f.deadLetterPolicy)
	}
	r, err := relay.New(db, b.Publisher, &relay.Config{
		Dialect:          dialect,
		Schema:           f.db.schema,
		TablePrefix:      f.db.tablePrefix,
		Lanes:            f.lanes,
		BatchSize:        f.batchSize,
		PollInterval:     f.pollInterval,
		ShutdownTimeout:  f.shutdownTimeout,
		DeadLetterAfter:  f.deadLetterAfter,
		DeadLetterPolicy: policy,
		LeaseTTL:         f.leaseTTL,
		InstanceID:       f.instanceID,
		DisableLeases:    f.disableLeases,
		VisibilityDelay:  f.visibilityDelay,
		Logger:           logger,
		Observer:         obs,
	})
	if err != nil {
		if errors.Is(err, relay.ErrInvalidConfig) {
			return usageError(err)
		}
		return err
	}
	var srv *relayHTTP
	if httpOn {
		if err := metrics.Track(r); err != nil {
			return err
		}
		if srv, err = startRelayHTTP(ctx, f.httpAddr, r, db, reg, logger); err != nil {
			return err
		}
		defer srv.stop() // after a failure; the normal path stops it below
	}
	logger.InfoContext(ctx, "accord relay starting", "database", broker.RedactURL(f.db.url), "dialect", dialect,
		"schema", f.db.schema, "table_prefix", f.db.tablePrefix, "broker", b.Name, "instance_id", r.InstanceID(),
		"leases", !f.disableLeases, "lease_ttl", f.leaseTTL)
	runErr := r.Run(ctx)
	if runErr != nil && ctx.Err() != nil && errors.Is(runErr, ctx.Err()) {
		// Stopped while still waiting for the database: a graceful stop.
		runErr = nil
	}
	if srv != nil {
		srv.stop()
	}
	if err := b.Close(); err != nil {
		return errors.Join(runErr, fmt.Errorf("close broker %s: %w", b.Name, err))
	}
	return runErr
}

// relayHTTP is the HTTP server of `accord relay`: Prometheus metrics and
// health checks.
type relayHTTP struct {
	r   *relay.Relay
	db  *sql.DB
	ctx context.Context // the relay's: done once a stop was asked for
	log *slog.Logger

	srv      *http.Server
	served   chan struct{} // closed when Serve returned; nil before startRelayHTTP
	stopped  chan struct{} // closed when the relay's Run returned
	stopOnce sync.Once
}

// newRelayHTTP returns the handlers of the relay's HTTP server; it serves
// nothing until startRelayHTTP.
func newRelayHTTP(ctx context.Context, r *relay.Relay, db *sql.DB, g prometheus.Gatherer, reg prometheus.Registerer, logger *slog.Logger) *relayHTTP {
	h := &relayHTTP{r: r, db: db, ctx: ctx, log: logger, stopped: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelError),
		Registry: reg, // promhttp_metric_handler_errors_total
	}))
	mux.HandleFunc("GET /healthz", h.healthz)
	mux.HandleFunc("GET /readyz", h.readyz)
	h.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	return h
}

// startRelayHTTP listens on addr and serves the relay's metrics and health
// checks until stop. It logs the address it listens on (the port chosen by
// the system for port 0).
func startRelayHTTP(ctx context.Context, addr string, r *relay.Relay, db *sql.DB, reg *prometheus.Registry, logger *slog.Logger) (*relayHTTP, error) {
	h := newRelayHTTP(ctx, r, db, reg, reg, logger)
	ln, err := (&net.ListenConfig{}).Listen(context.WithoutCancel(ctx), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--http-addr %s: %w (use --http-addr %s to run without the HTTP server)", addr, err, httpAddrOff)
	}
	h.served = make(chan struct{})
	go func() {
		defer close(h.served)
		if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("accord relay HTTP server failed; metrics and health checks are unavailable", "error", err)
		}
	}()
	logger.InfoContext(ctx, "accord relay serving HTTP", "addr", ln.Addr().String(), "paths", "/metrics /healthz /readyz")
	return h, nil
}

// stop marks the relay as stopped and shuts the server down, letting
// requests in progress finish for at most httpShutdownTimeout. It is
// idempotent.
func (h *relayHTTP) stop() {
	h.stopOnce.Do(func() {
		close(h.stopped)
		ctx, cancel := context.WithTimeout(context.WithoutCancel(h.ctx), httpShutdownTimeout)
		defer cancel()
		if err := h.srv.Shutdown(ctx); err != nil {
			h.log.Warn("accord relay HTTP server did not shut down gracefully", "error", err)
			_ = h.srv.Close()
		}
		if h.served != nil {
			<-h.served
		}
	})
}

// healthz answers 200 while the relay's Run has not returned.
func (h *relayHTTP) healthz(w http.ResponseWriter, _ *http.Request) {
	select {
	case <-h.stopped:
		http.Error(w, "relay stopped", http.StatusServiceUnavailable)
		return
	default:
	}
	_, _ = fmt.Fprintln(w, "ok")
}

// readyz answers 200 when the relay is running and the database answers a
// ping within readyzPingTimeout, else 503 with the reason.
func (h *relayHTTP) readyz(w http.ResponseWriter, req *http.Request) {
	if reason := h.notReady(req.Context()); reason != "" {
		http.Error(w, reason, http.StatusServiceUnavailable)
		return
	}
	_, _ = fmt.Fprintln(w, "ok")
}

// notReady returns why the relay is not ready, or "".
func (h *relayHTTP) notReady(ctx context.Context) string {
	select {
	case <-h.stopped:
		return "relay stopped"
	default:
	}
	if h.ctx.Err() != nil {
		return "relay stopping"
	}
	select {
	case <-h.r.Running():
	default:
		return "relay not running yet (waiting for the database?)"
	}
	ctx, cancel := context.WithTimeout(ctx, readyzPingTimeout)
	defer cancel()
	if err := h.db.PingContext(ctx); err != nil {
		return "database ping failed: " + strings.TrimSpace(err.Error())
	}
	return ""
}
