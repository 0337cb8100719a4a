// Package bench measures the Accord relay on a real PostgreSQL database and
// compares it with watermill's forwarder (components/forwarder over
// watermill-sql v4) in its default configuration. `accord bench relay` runs
// it; docs/benchmarks.md reports a run.
//
// A run has four phases, each on its own tables in one schema created for
// the run and dropped at the end:
//
//   - Drain: Events rows are written into the outbox first, then Relays
//     relays start and are timed until the destination received every event
//     and the relays together deleted every row (the table is then checked
//     to be empty).
//   - Forwarder: the same number of events is written through
//     forwarder.NewPublisher wrapping a watermill-sql publisher, then one
//     forwarder starts and is timed until the destination received every
//     event (watermill-sql's default schema never deletes rows).
//   - Latency: Relays relays run on an empty outbox while writers commit
//     Rate events per second, one event per transaction; the latency of an
//     event is the time from just before its COMMIT to its arrival at the
//     destination.
//   - Idle: Relays relays run on an empty outbox with nothing written; the
//     CPU time of the whole process (user + system, getrusage) over
//     IdleDuration, divided by the wall time, is the idle relays' CPU use in
//     percent of one core.
//
// Each relay instance has its own connection pool and its own publisher, as
// separate relay processes would; they run the same relay.Config on the
// same outbox and rely on the relay to share its work between them.
//
// By default the destination is an in-process message.Publisher that
// records each message and returns at once, so the figures measure the
// relays and the database, not a broker. With a broker URL as Destination
// (nats://, amqp://, redis://, anything internal/broker opens that has a
// subscriber), the relays and the forwarder publish to that broker, and the
// benchmark subscribes to each phase's topic (unique to the run and phase,
// subscribed before anything is published) and records what it receives
// there; the phase's topic is removed from the broker at its end. Every
// event carries its index, partition key and per-key sequence number in
// metadata; each phase checks for lost events, duplicates and per-key order
// violations.
package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/broker"
	"github.com/accordgo/accord/migrate"
	"github.com/accordgo/accord/relay"
)

// Defaults of [Options].
const (
	DatabaseURLDefault     = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	EventsDefault          = 100000
	RateDefault            = 1000
	LatencyDurationDefault = 10 * time.Second
	IdleDurationDefault    = 5 * time.Second
	RelaysDefault          = 1
	// RelaysMax is the most relay instances a run can have.
	RelaysMax = 16
	// Keys is the number of partition keys events are spread over.
	Keys = 1000
)

// ErrInvalidOptions wraps every problem with the Options given to RunRelay.
var ErrInvalidOptions = errors.New("accord bench: invalid options")

// stallTimeout ends a phase whose destination received nothing new for
// this long.
const stallTimeout = 60 * time.Second

// Options configure [RunRelay]. The zero value runs the default benchmark.
type Options struct {
	// DatabaseURL is a postgres:// URL. Defaults to DatabaseURLDefault.
	DatabaseURL string
	// Events is the size of the backlog drained by each relay. Defaults to
	// EventsDefault (100,000).
	Events int
	// Rate is the number of events per second written during the latency
	// phase. Defaults to RateDefault (1,000).
	Rate int
	// LatencyDuration is how long the latency phase writes. Defaults to
	// LatencyDurationDefault (10 s); a negative value skips the phase.
	LatencyDuration time.Duration
	// IdleDuration is how long the idle phase measures CPU use. Defaults to
	// IdleDurationDefault (5 s); a negative value skips the phase.
	IdleDuration time.Duration
	// NoForwarder skips the watermill forwarder phase.
	NoForwarder bool
	// Destination is where the relays and the forwarder publish:
	// DestinationInProcess (or "", the default) for the in-process sink, or
	// a broker URL that internal/broker opens and can subscribe to, such as
	// nats://127.0.0.1:4222, amqp://guest:guest@127.0.0.1:5672/ or
	// redis://127.0.0.1:6379.
	Destination string
	// Relays is the number of relay instances run together in the drain,
	// latency and idle phases, from 1 to RelaysMax. Defaults to 1.
	Relays int
	// Lanes and BatchSize configure the Accord relay; 0 means the relay's
	// defaults.
	Lanes, BatchSize int
	// OpenTransaction holds a transaction open in another database of the
	// same PostgreSQL cluster ("postgres", or "template1" when the
	// benchmark's database is "postgres") for the whole latency phase, with
	// a transaction id assigned, so that it holds back the cluster-wide xmin
	// horizon: the latency figures then show what such a transaction costs
	// delivery (a relay that waited for xmin would stall until it ends).
	OpenTransaction bool
	// PublishLatency is slept in every publish call of the in-process sink,
	// for Accord and the forwarder alike, to stand for a broker round trip.
	// Defaults to 0. It applies to the in-process destination only: a
	// non-zero value with a broker Destination is invalid.
	PublishLatency time.Duration
	// Progress receives one line per phase step. Defaults to os.Stderr.
	Progress io.Writer
	// CPUProfile, when not nil, receives a CPU profile (pprof format) taken
	// during the Accord drain.
	CPUProfile io.Writer
}

func (o Options) withDefaults() Options {
	if o.DatabaseURL == "" {
		o.DatabaseURL = DatabaseURLDefault
	}
	if o.Events == 0 {
		o.Events = EventsDefault
	}
	if o.Rate == 0 {
		o.Rate = RateDefault
	}
	if o.LatencyDuration == 0 {
		o.LatencyDuration = LatencyDurationDefault
	}
	if o.IdleDuration == 0 {
		o.IdleDuration = IdleDurationDefault
	}
	if o.Relays == 0 {
		o.Relays = RelaysDefault
	}
	if isInProcess(o.Destination) {
		o.Destination = DestinationInProcess
	}
	if o.Progress == nil {
		o.Progress = os.Stderr
	}
	return o
}

func (o Options) validate() error {
	var errs []error
	if o.Events < 1 {
		errs = append(errs, fmt.Errorf("Events %d: must be positive", o.Events))
	}
	if o.Rate < 1 {
		errs = append(errs, fmt.Errorf("Rate %d: must be positive", o.Rate))
	}
	if o.Relays < 1 || o.Relays > RelaysMax {
		errs = append(errs, fmt.Errorf("Relays %d: must be between 1 and %d", o.Relays, RelaysMax))
	}
	if o.PublishLatency < 0 {
		errs = append(errs, fmt.Errorf("PublishLatency %s: must not be negative", o.PublishLatency))
	}
	if err := checkDestination(o.Destination); err != nil {
		errs = append(errs, err)
	} else if !isInProcess(o.Destination) && o.PublishLatency != 0 {
		errs = append(errs, fmt.Errorf("PublishLatency %s: applies to the in-process destination only, not to %s", o.PublishLatency, broker.RedactURL(o.Destination)))
	}
	if d, _, err := accord.ParseDatabaseURL(o.DatabaseURL); err != nil {
		errs = append(errs, err)
	} else if d != accord.Postgres {
		errs = append(errs, fmt.Errorf("DatabaseURL: the relay benchmark needs PostgreSQL, got %s", d))
	}
	rc := (&relay.Config{Dialect: accord.Postgres, Lanes: o.Lanes, BatchSize: o.BatchSize}).WithDefaults()
	if rc.Lanes < 1 || rc.Lanes > relay.LanesMax {
		errs = append(errs, fmt.Errorf("Lanes %d: must be between 1 and %d (0 for the default)", o.Lanes, relay.LanesMax))
	}
	if rc.BatchSize < 1 || rc.BatchSize > relay.BatchSizeMax {
		errs = append(errs, fmt.Errorf("BatchSize %d: must be between 1 and %d (0 for the default)", o.BatchSize, relay.BatchSizeMax))
	}
	return errors.Join(errs...)
}

// Result is the outcome of [RunRelay]. Throughputs are events per second of
// wall-clock time; latencies are milliseconds.
type Result struct {
	// Events is the requested backlog size; Backlog the rows actually in
	// the outbox when the relay started.
	Events  int   `json:"events"`
	Backlog int64 `json:"backlog"`
	// Destination is "inprocess" or the broker URL, credentials redacted.
	Destination string `json:"destination"`
	// Relays is the number of relay instances of the drain, latency and
	// idle phases.
	Relays int `json:"relays"`
	// PublishLatencyMS is the injected per-publish-call latency (in-process
	// destination only).
	PublishLatencyMS float64 `json:"publish_latency_ms"`
	Lanes            int     `json:"lanes"`
	BatchSize        int     `json:"batch_size"`

	SeedSeconds       float64 `json:"seed_seconds"`
	DrainSeconds      float64 `json:"drain_seconds"`
	DrainEventsPerSec float64 `json:"drain_events_per_sec"`
	// DrainRelaySeconds is the time until the relays had deleted every
	// row, so the destination had accepted every event. DrainSeconds also
	// waits for every event to arrive: with a broker destination, at the
	// benchmark's own subscriber, which can be the slower side.
	DrainRelaySeconds float64 `json:"drain_relay_seconds"`
	// DrainBalancedAfterSeconds is when the relays first held their shares
	// of the lease slots. With several relays, DrainEventsPerSec counts the
	// events drained from then on, over the time from then on.
	DrainBalancedAfterSeconds float64 `json:"drain_balanced_after_seconds"`

	// Forwarder figures are 0 when the forwarder phase was skipped.
	ForwarderSeedSeconds  float64 `json:"forwarder_seed_seconds"`
	ForwarderSeconds      float64 `json:"forwarder_seconds"`
	ForwarderEventsPerSec float64 `json:"forwarder_events_per_sec"`
	// Ratio is DrainEventsPerSec / ForwarderEventsPerSec (0 without the
	// forwarder phase).
	Ratio float64 `json:"ratio"`

	LatencyP50Ms float64 `json:"latency_p50_ms"`
	LatencyP99Ms float64 `json:"latency_p99_ms"`
	LatencyMaxMs float64 `json:"latency_max_ms"`
	// Rate is the requested write rate of the latency phase, AchievedRate
	// what the writers managed (events / time from the first scheduled
	// write to the last commit), LatencyEvents the events written.
	Rate          int     `json:"rate"`
	AchievedRate  float64 `json:"achieved_rate"`
	LatencyEvents int     `json:"latency_events"`
	// LateWrites counts latency-phase writes that started more than 10 ms
	// after their scheduled time (the writers fell behind).
	LateWrites int64 `json:"late_writes"`
	// CommitP50Ms and CommitP99Ms are the durations of the writers' COMMIT
	// statements, part of every latency.
	CommitP50Ms float64 `json:"commit_p50_ms"`
	CommitP99Ms float64 `json:"commit_p99_ms"`
	// AfterCommitP50Ms and AfterCommitP99Ms measure from COMMIT returning
	// in the writer to arrival: the relay's share of the latency (it can
	// be negative when the relay is faster than the writer's wake-up).
	AfterCommitP50Ms float64 `json:"after_commit_p50_ms"`
	AfterCommitP99Ms float64 `json:"after_commit_p99_ms"`
	// OpenTransactionXID is the transaction id that Options.OpenTransaction
	// held open, in another database, during the latency phase ("" without
	// it); OpenTransactionHeldXmin reports that the benchmark's database saw
	// its xmin horizon at or below that id while the phase ran.
	OpenTransactionXID      string `json:"open_transaction_xid,omitempty"`
	OpenTransactionHeldXmin bool   `json:"open_transaction_held_xmin,omitempty"`

	// RelayCPUIdlePercent is the CPU time (user + system) of the whole
	// benchmark process while only the idle relays ran, over IdleSeconds
	// of wall time, in percent of one core. 0 when the idle phase was
	// skipped.
	RelayCPUIdlePercent float64 `json:"relay_cpu_idle_percent"`
	IdleSeconds         float64 `json:"idle_seconds"`

	MaxRSSMiB float64 `json:"max_rss_mib"`
	// LoadAvgStart and LoadAvgEnd are the machine's 1-minute load average
	// when the run started and ended: other work on the machine (or on the
	// database server) shows up in every figure.
	LoadAvgStart float64 `json:"loadavg_start"`
	LoadAvgEnd   float64 `json:"loadavg_end"`

	// Lost, Duplicates and OrderViolations cover every event the Accord
	// relays published (drain and latency phases).
	Lost            int64 `json:"lost"`
	Duplicates      int64 `json:"duplicates"`
	OrderViolations int64 `json:"order_violations"`
	// Unexpected counts received messages that match no written event.
	Unexpected int64 `json:"unexpected,omitempty"`

	ForwarderLost            *int64 `json:"forwarder_lost,omitempty"`
	ForwarderDuplicates      *int64 `json:"forwarder_duplicates,omitempty"`
	ForwarderOrderViolations *int64 `json:"forwarder_order_violations,omitempty"`
	ForwarderUnexpected      int64  `json:"forwarder_unexpected,omitempty"`

	GoVersion       string `json:"go_version"`
	CPUs            int    `json:"cpus"`
	PostgresVersion string `json:"postgres_version"`
}

// runner holds what the phases of one run share.
type runner struct {
	opts   Options
	db     *sql.DB
	schema string
	base   time.Time // clock base of sinks and writers
	logger *slog.Logger
	// timerStart and timerStop, when set, are called around the timed part
	// of the Accord drain (the Go benchmark stops its timer while seeding).
	timerStart, timerStop func()
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.opts.Progress, "accord bench: "+format+"\n", args...)
}

// RunRelay runs the relay benchmark (see the package documentation) and
// returns its figures. It creates a schema with a random name in the
// database and drops it before it returns, also on error.
func RunRelay(ctx context.Context, opts Options) (*Result, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	r, cleanup, err := newRunner(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer cleanup()

	rc := r.relayConfig("")
	res := &Result{
		Events:           opts.Events,
		Destination:      DestinationInProcess,
		Relays:           opts.Relays,
		PublishLatencyMS: float64(opts.PublishLatency) / float64(time.Millisecond),
		Lanes:            rc.Lanes,
		BatchSize:        rc.BatchSize,
		Rate:             opts.Rate,
		GoVersion:        runtime.Version(),
		LoadAvgStart:     loadAvg1(),
		CPUs:             runtime.NumCPU(),
	}
	if err := r.db.QueryRowContext(ctx, "SHOW server_version").Scan(&res.PostgresVersion); err != nil {
		return nil, fmt.Errorf("accord bench: read server version: %w", err)
	}
	if !isInProcess(opts.Destination) {
		res.Destination = broker.RedactURL(opts.Destination)
	}
	r.logf("PostgreSQL %s, %s, %d CPUs, schema %s, destination %s, %s", res.PostgresVersion, res.GoVersion, res.CPUs, r.schema, res.Destination, plural(opts.Relays, "relay"))

	// Phase 1: Accord drain.
	d, err := r.accordDrain(ctx, "drain_", opts.Events)
	if err != nil {
		return nil, err
	}
	res.Backlog = d.backlog
	res.SeedSeconds = d.seed.Seconds()
	res.DrainSeconds = d.elapsed.Seconds()
	res.DrainEventsPerSec = float64(d.backlog) / d.elapsed.Seconds()
	res.DrainBalancedAfterSeconds = d.balancedAfter.Seconds()
	if opts.Relays > 1 && d.elapsed > d.balancedAfter {
		// Several relays share the slots only once the later ones took
		// theirs (a second or two): the rate is measured from then on.
		res.DrainEventsPerSec = float64(d.afterBalance) / (d.elapsed - d.balancedAfter).Seconds()
	}
	res.DrainRelaySeconds = d.relaysElapsed.Seconds()
	res.Lost, res.Duplicates, res.OrderViolations, res.Unexpected = d.check.Lost, d.check.Duplicates, d.check.OrderViolations, d.check.Unexpected

	// Phase 2: watermill forwarder.
	if !opts.NoForwarder {
		f, err := r.forwarderDrain(ctx, opts.Events)
		if err != nil {
			return nil, err
		}
		res.ForwarderSeedSeconds = f.seed.Seconds()
		res.ForwarderSeconds = f.elapsed.Seconds()
		res.ForwarderEventsPerSec = float64(f.backlog) / f.elapsed.Seconds()
		res.Ratio = res.DrainEventsPerSec / res.ForwarderEventsPerSec
		res.ForwarderLost, res.ForwarderDuplicates, res.ForwarderOrderViolations = &f.check.Lost, &f.check.Duplicates, &f.check.OrderViolations
		res.ForwarderUnexpected = f.check.Unexpected
	}

	// Phase 3: latency at a steady rate.
	if opts.LatencyDuration > 0 {
		l, err := r.latency(ctx, "lat_")
		if err != nil {
			return nil, err
		}
		res.LatencyEvents = l.events
		res.AchievedRate = l.achievedRate
		res.LateWrites = l.late
		res.CommitP50Ms = ms(percentile(l.commits, 50))
		res.CommitP99Ms = ms(percentile(l.commits, 99))
		res.AfterCommitP50Ms = ms(percentile(l.afterCommit, 50))
		res.AfterCommitP99Ms = ms(percentile(l.afterCommit, 99))
		res.OpenTransactionXID, res.OpenTransactionHeldXmin = l.openXID, l.heldXmin
		lat := l.check.Latencies
		sortInt64s(lat)
		res.LatencyP50Ms = ms(percentile(lat, 50))
		res.LatencyP99Ms = ms(percentile(lat, 99))
		res.LatencyMaxMs = ms(percentile(lat, 100))
		res.Lost += l.check.Lost
		res.Duplicates += l.check.Duplicates
		res.OrderViolations += l.check.OrderViolations
		res.Unexpected += l.check.Unexpected
	}
	// Phase 4: idle relays.
	if opts.IdleDuration > 0 {
		i, err := r.idle(ctx, "idle_")
		if err != nil {
			return nil, err
		}
		if i.ok {
			res.IdleSeconds = i.window.Seconds()
			res.RelayCPUIdlePercent = i.percent()
		}
	}
	res.MaxRSSMiB = maxRSSMiB()
	res.LoadAvgEnd = loadAvg1()
	return res, nil
}

// newRunner opens the database and creates the run's schema. cleanup drops
// the schema and closes the pool.
func newRunner(ctx context.Context, opts Options) (*runner, func(), error) {
	logger := slog.New(slog.NewTextHandler(opts.Progress, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if !isInProcess(opts.Destination) {
		// Check the URL and that the broker is there before anything else.
		b, err := broker.Open(ctx, opts.Destination, logger)
		if errors.Is(err, broker.ErrUnknownScheme) || errors.Is(err, broker.ErrInvalidURL) {
			return nil, nil, fmt.Errorf("%w: Destination: %w", ErrInvalidOptions, err)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("accord bench: destination: %w", err)
		}
		noSub := b.Subscriber == nil
		_ = b.Close()
		if noSub {
			return nil, nil, fmt.Errorf("%w: Destination %s: the benchmark cannot subscribe to it", ErrInvalidOptions, b.Name)
		}
	}
	db, _, err := accord.OpenDB(opts.DatabaseURL)
	if err != nil {
		return nil, nil, fmt.Errorf("accord bench: %w", err)
	}
	// Enough idle connections that writers, the relay's reader and its
	// acker never reconnect; database/sql keeps only 2 idle by default.
	db.SetMaxOpenConns(64)
	db.SetMaxIdleConns(64)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		_ = db.Close()
		return nil, nil, fmt.Errorf("accord bench: PostgreSQL is not reachable at %s: %w", redactURL(opts.DatabaseURL), err)
	}
	r := &runner{
		opts:   opts,
		db:     db,
		schema: randomName("accord_bench_"),
		base:   time.Now(),
		logger: logger,
	}
	if _, err := db.ExecContext(ctx, `CREATE SCHEMA "`+r.schema+`"`); err != nil {
		_ = db.Close()
		return nil, nil, fmt.Errorf("accord bench: create schema %s: %w", r.schema, err)
	}
	cleanup := func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if _, err := db.ExecContext(dctx, `DROP SCHEMA IF EXISTS "`+r.schema+`" CASCADE`); err != nil {
			r.logf("could not drop schema %s: %v (drop it by hand)", r.schema, err)
		}
		_ = db.Close()
	}
	return r, cleanup, nil
}

// migrateUp creates Accord's tables with prefix in the run's schema.
func (r *runner) migrateUp(ctx context.Context, prefix string) error {
	m, err := migrate.New(r.db, &migrate.Config{Dialect: accord.Postgres, Schema: r.schema, TablePrefix: prefix})
	if err != nil {
		return err
	}
	if _, err := m.Migrate(ctx, migrate.Up, nil); err != nil {
		return fmt.Errorf("accord bench: migrate %s.%s*: %w", r.schema, prefix, err)
	}
	return nil
}

// migrateDown drops Accord's tables with prefix, so that autovacuum has
// nothing left to do on them during the next phase.
func (r *runner) migrateDown(ctx context.Context, prefix string) error {
	m, err := migrate.New(r.db, &migrate.Config{Dialect: accord.Postgres, Schema: r.schema, TablePrefix: prefix})
	if err != nil {
		return err
	}
	if _, err := m.Migrate(context.WithoutCancel(ctx), migrate.Down, &migrate.MigrateOpts{MaxSteps: -1}); err != nil {
		return fmt.Errorf("accord bench: migrate down %s.%s*: %w", r.schema, prefix, err)
	}
	return nil
}

func (r *runner) relayConfig(prefix string) *relay.Config {
	return (&relay.Config{
		Dialect:     accord.Postgres,
		Schema:      r.schema,
		TablePrefix: prefix,
		Lanes:       r.opts.Lanes,
		BatchSize:   r.opts.BatchSize,
		Logger:      r.logger,
	}).WithDefaults()
}

// background runs f in a goroutine; done is closed when it returned.
type background struct {
	done chan struct{}
	err  error
}

func goBackground(f func() error) *background {
	b := &background{done: make(chan struct{})}
	go func() {
		defer close(b.done)
		b.err = f()
	}()
	return b
}

// waitSink waits until s received its target, printing progress every
// couple of seconds. It fails when one of stops (the relays, the forwarder,
// the subscription reader) returns first, when ctx ends, or when nothing
// arrives for stallTimeout.
func (r *runner) waitSink(ctx context.Context, s *sink, phase string, stops ...*background) error {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	stopped := make(chan *background, len(stops))
	quit := make(chan struct{})
	defer close(quit)
	for _, bg := range stops {
		go func() {
			select {
			case <-bg.done:
				stopped <- bg
			case <-quit:
			}
		}()
	}
	last, lastChange := int64(-1), time.Now()
	for {
		select {
		case <-s.done:
			return nil
		case bg := <-stopped:
			select {
			case <-s.done:
				return nil
			default:
			}
			return fmt.Errorf("accord bench: %s: stopped after %d of %d events: %v", phase, s.Received(), s.target, bg.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			n := s.Received()
			r.logf("  %s: %d of %d events received", phase, n, s.target)
			if n != last {
				last, lastChange = n, time.Now()
			} else if time.Since(lastChange) > stallTimeout {
				return fmt.Errorf("accord bench: %s: stalled at %d of %d events for %s", phase, n, s.target, stallTimeout)
			}
		}
	}
}

// maxRSSMiB returns the peak resident set size of the process (VmHWM).
func maxRSSMiB() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			fields := strings.Fields(rest)
			if len(fields) >= 1 {
				kb, err := strconv.ParseFloat(fields[0], 64)
				if err == nil {
					return kb / 1024
				}
			}
		}
	}
	return 0
}

// loadAvg1 returns the 1-minute load average of the machine (0 if unknown).
func loadAvg1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

func randomName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// redactURL hides the password of a database URL in messages.
func redactURL(u string) string {
	at := strings.LastIndex(u, "@")
	scheme := strings.Index(u, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return u
	}
	userinfo := u[scheme+3 : at]
	if user, _, ok := strings.Cut(userinfo, ":"); ok {
		return u[:scheme+3] + user + ":xxxxx" + u[at:]
	}
	return u
}
