package relay

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/sqlstore"
	"github.com/accordgo/accord/outbox"
)

// Defaults and limits of [Config].
const (
	BatchSizeDefault       = 1000
	BatchSizeMax           = 10000
	LanesDefault           = 16
	LanesMax               = outbox.ShardCount
	PollIntervalDefault    = time.Second
	PollIntervalSQLite     = 100 * time.Millisecond
	SweepIntervalDefault   = time.Second
	RetryBackoffMinDefault = 100 * time.Millisecond
	RetryBackoffMaxDefault = 30 * time.Second
	ShutdownTimeoutDefault = 10 * time.Second
	LeaseTTLDefault        = 10 * time.Second
	LeaseTTLMin            = 500 * time.Millisecond
	VisibilityDelayDefault = 50 * time.Millisecond
	VisibilityDelayMax     = 10 * time.Second
)

// DeadLetterPolicy is what the relay does with the later rows of a key
// whose row went to the dead letters.
type DeadLetterPolicy int

const (
	// ParkKey holds the key's later rows back until the dead letter is
	// requeued (it then goes out first) or dropped: order per key holds.
	ParkKey DeadLetterPolicy = iota
	// SkipKey publishes the key's later rows: the key keeps flowing, out of
	// order with the dead letter if it is requeued later.
	SkipKey
)

// ErrInvalidConfig wraps every configuration problem reported by [New].
var ErrInvalidConfig = errors.New("accord relay: invalid config")

// Config configures a [Relay]. Only Dialect is required.
type Config struct {
	// Dialect of the database the outbox table lives in. Required.
	Dialect accord.Dialect

	// Schema is the PostgreSQL schema of the outbox table. Empty means the
	// connection's search_path. Defaults to "".
	Schema string

	// TablePrefix is the prefix of Accord's tables. Defaults to "accord_".
	TablePrefix string

	// BatchSize is the most rows read with one statement. Larger batches
	// drain a backlog faster; each batch's rows are deleted with one
	// statement once published. Defaults to BatchSizeDefault (1000), at most
	// BatchSizeMax.
	BatchSize int

	// Lanes is the number of ordered lanes that publish concurrently. Every
	// partition key maps to exactly one lane, and a lane publishes its rows
	// one publish call at a time, in order, so order per key holds while
	// different keys proceed in parallel. Defaults to LanesDefault (16), at
	// most LanesMax.
	Lanes int

	// MaxInFlight bounds the rows read but not yet deleted (memory, and the
	// duplicates a crash can cause). Defaults to 4 × BatchSize.
	MaxInFlight int

	// PollInterval is how long an idle relay waits before it looks for new
	// rows when no wake-up arrives. On PostgreSQL the relay also LISTENs for
	// the notification the outbox trigger sends at commit, so polling is
	// only a fallback. Defaults to PollIntervalDefault (1 s) on PostgreSQL and
	// PollIntervalSQLite (100 ms) on SQLite.
	PollInterval time.Duration

	// SweepInterval bounds how long the relay reads forward from its cursor
	// before it reads the whole table again to pick up rows whose
	// transaction committed after rows with larger sequence numbers (the
	// late commits that watermill issue 311 lost). An idle or caught-up relay
	// always reads the whole table. Defaults to SweepIntervalDefault (1 s).
	SweepInterval time.Duration

	// DisableNotify turns off LISTEN/NOTIFY on PostgreSQL; the relay then
	// polls every PollInterval. Defaults to false.
	DisableNotify bool

	// RetryBackoffMin and RetryBackoffMax bound the exponential backoff
	// (with jitter) between attempts to publish a row that failed, and
	// between attempts to reach the database. Default to 100 ms and 30 s.
	RetryBackoffMin time.Duration
	RetryBackoffMax time.Duration

	// ShutdownTimeout bounds how long Run keeps publishing rows it already
	// read after its context is cancelled (or Close is called). Rows not
	// published by then stay in the outbox and are published by the next
	// relay. Defaults to ShutdownTimeoutDefault (10 s).
	ShutdownTimeout time.Duration

	// DeadLetterAfter moves a row to the dead letters (table
	// <prefix>outbox_dead) after that many failed publish attempts, with its
	// last error and attempt count; `accord outbox dead list|requeue|drop`
	// and outbox.Outbox's dead-letter methods manage them. A failing publish
	// call of several rows is first split into single rows, so only the row
	// that fails is moved. Defaults to 0: never, rows are retried until they
	// succeed (their lane waits).
	DeadLetterAfter int

	// DeadLetterPolicy says what happens to the later rows of a
	// dead-lettered row's key: ParkKey (the default) holds them back until
	// the dead letter is requeued or dropped, so order per key holds;
	// SkipKey publishes them, giving up order for that key.
	DeadLetterPolicy DeadLetterPolicy

	// LeaseTTL is how long a relay instance's leases last without renewal.
	// Relay instances on the same outbox (processes, hosts) share its rows
	// through Slots leases in the table <prefix>relay_lease: each instance
	// takes about Slots / (live instances) of them, renews them every
	// LeaseTTL/5 and stops publishing a slot's rows LeaseTTL/5 before the
	// lease could expire unrenewed; deletes and dead-letter moves run only
	// while the database says the lease is held. When an instance dies its
	// slots are taken over after at most LeaseTTL; when one joins or stops
	// gracefully, slots move without duplicates. Defaults to
	// LeaseTTLDefault (10 s), at least LeaseTTLMin.
	LeaseTTL time.Duration

	// InstanceID names this relay in the lease tables and its logs; a random
	// suffix is added so that every Relay is a distinct lease owner.
	// Defaults to "<host name>-<process id>".
	InstanceID string

	// DisableLeases turns off leases: the relay publishes every row and
	// does not need the lease tables. Only safe when the deployment makes
	// sure a single relay runs on the outbox; two relays without leases
	// publish each row twice and break order per key. Defaults to false.
	DisableLeases bool

	// VisibilityDelay (MySQL/MariaDB only) is how old a row must be, since
	// its insert and on the database's clock (the outbox's inserted_at
	// column, migration 008), before the relay publishes it. InnoDB can
	// release a committing transaction's locks a moment before its commit
	// is visible to other reads, so a writer serialized behind it by a row
	// lock can commit a later event of the same key that the relay would
	// otherwise see, and publish, first. Every commit that released its
	// locks before a row was inserted is visible once the row is this old:
	// the window lasts microseconds, or milliseconds on a loaded server.
	// The relay reads up to the first row that is too young and reads again
	// when it is old enough, so a backlog (old rows) is not slowed down;
	// new events wait up to this long. 0 means VisibilityDelayDefault
	// (50 ms) on MySQL; a negative value turns the wait off (order per key
	// is then best effort on MySQL). At most VisibilityDelayMax. Must not
	// be set on PostgreSQL or SQLite, which need none.
	VisibilityDelay time.Duration

	// Logger receives the relay's structured logs. Defaults to slog.Default().
	Logger *slog.Logger

	// Observer is told about every read, publish call and delete, for
	// metrics (see package accordprom for Prometheus). Defaults to nil: no
	// observer.
	Observer Observer

	// TracerProvider creates the span of each publish call
	// ("accord.relay publish <topic>"), linked to the trace context each
	// event's writer stored in its metadata (W3C traceparent). Defaults to
	// otel.GetTracerProvider(), which does nothing until the application
	// installs an SDK.
	TracerProvider trace.TracerProvider
}

// WithDefaults returns a copy of c with defaults filled in.
func (c *Config) WithDefaults() *Config {
	out := Config{}
	if c != nil {
		out = *c
	}
	if out.TablePrefix == "" {
		out.TablePrefix = outbox.TablePrefixDefault
	}
	if out.BatchSize == 0 {
		out.BatchSize = BatchSizeDefault
	}
	if out.Lanes == 0 {
		out.Lanes = LanesDefault
	}
	if out.MaxInFlight == 0 {
		out.MaxInFlight = 4 * out.BatchSize
	}
	if out.PollInterval == 0 {
		out.PollInterval = PollIntervalDefault
		if out.Dialect == accord.SQLite {
			out.PollInterval = PollIntervalSQLite
		}
	}
	if out.SweepInterval == 0 {
		out.SweepInterval = SweepIntervalDefault
	}
	if out.RetryBackoffMin == 0 {
		out.RetryBackoffMin = RetryBackoffMinDefault
	}
	if out.RetryBackoffMax == 0 {
		out.RetryBackoffMax = RetryBackoffMaxDefault
	}
	if out.ShutdownTimeout == 0 {
		out.ShutdownTimeout = ShutdownTimeoutDefault
	}
	if out.LeaseTTL == 0 {
		out.LeaseTTL = LeaseTTLDefault
	}
	if out.VisibilityDelay == 0 && out.Dialect == accord.MySQL {
		out.VisibilityDelay = VisibilityDelayDefault
	}
	if out.InstanceID == "" {
		out.InstanceID = defaultInstanceID()
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.TracerProvider == nil {
		out.TracerProvider = otel.GetTracerProvider()
	}
	return &out
}

func (c *Config) validate() error {
	var errs []error
	if _, err := sqlstore.NewNames(c.Dialect, c.Schema, c.TablePrefix); err != nil {
		errs = append(errs, err)
	}
	if c.BatchSize < 1 || c.BatchSize > BatchSizeMax {
		errs = append(errs, fmt.Errorf("BatchSize %d: must be between 1 and %d", c.BatchSize, BatchSizeMax))
	}
	if c.Lanes < 1 || c.Lanes > LanesMax {
		errs = append(errs, fmt.Errorf("Lanes %d: must be between 1 and %d", c.Lanes, LanesMax))
	}
	if c.MaxInFlight < c.BatchSize {
		errs = append(errs, fmt.Errorf("MaxInFlight %d: must be at least BatchSize (%d)", c.MaxInFlight, c.BatchSize))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"PollInterval", c.PollInterval}, {"SweepInterval", c.SweepInterval}, {"RetryBackoffMin", c.RetryBackoffMin},
		{"RetryBackoffMax", c.RetryBackoffMax}, {"ShutdownTimeout", c.ShutdownTimeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %s: must not be negative", d.name, d.v))
		}
	}
	if !c.DisableLeases && c.LeaseTTL < LeaseTTLMin {
		errs = append(errs, fmt.Errorf("LeaseTTL %s: must be at least %s", c.LeaseTTL, LeaseTTLMin))
	}
	if c.VisibilityDelay > 0 && c.Dialect != accord.MySQL {
		errs = append(errs, fmt.Errorf("VisibilityDelay %s: applies to %s only (%s makes commits visible in order)", c.VisibilityDelay, accord.MySQL, c.Dialect))
	}
	if c.VisibilityDelay > VisibilityDelayMax {
		errs = append(errs, fmt.Errorf("VisibilityDelay %s: at most %s", c.VisibilityDelay, VisibilityDelayMax))
	}
	if len(c.InstanceID) > 200 {
		errs = append(errs, fmt.Errorf("InstanceID: %d bytes, at most 200", len(c.InstanceID)))
	}
	if c.DeadLetterAfter < 0 {
		errs = append(errs, fmt.Errorf("DeadLetterAfter %d: must be 0 (never) or positive", c.DeadLetterAfter))
	}
	if c.DeadLetterPolicy != ParkKey && c.DeadLetterPolicy != SkipKey {
		errs = append(errs, fmt.Errorf("DeadLetterPolicy %d: must be ParkKey or SkipKey", c.DeadLetterPolicy))
	}
	if c.RetryBackoffMax < c.RetryBackoffMin {
		errs = append(errs, fmt.Errorf("RetryBackoffMax %s: must be at least RetryBackoffMin (%s)", c.RetryBackoffMax, c.RetryBackoffMin))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}
