package replica

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/sqlstore"
	"github.com/accordgo/accord/outbox"
)

// Defaults and limits of [Config] and [Change].
const (
	// GapTimeoutDefault is how long a BySequence replica waits for a gap to
	// fill before [Replica.CheckGaps] asks for a resync.
	GapTimeoutDefault = 30 * time.Second

	// NameMaxLength bounds Config.Name, in characters (the replica column
	// is VARCHAR(255) on MySQL).
	NameMaxLength = 255
	// KeyMaxLength bounds Change.Key, in characters (the entity_key column
	// is VARCHAR(500) on MySQL).
	KeyMaxLength = 500
	// MessageIDMaxLength bounds the id of a parked message, in characters.
	MessageIDMaxLength = 255
	// OriginMaxLength bounds Change.Origin and the message id stored with
	// it, together plus one, in characters (the origin column is
	// VARCHAR(255) on MySQL).
	OriginMaxLength = 255
)

// Mode is the algorithm a [Replica] uses to decide whether a change is
// newer than what it holds.
type Mode int

const (
	// ByVersion compares the aggregate version the producer wrote with the
	// event (outbox.Event.Version, metadata accord_version): a change is
	// applied only if its version is above the key's position. Older and
	// equal versions are Stale. A version more than one above the position
	// is a gap, handled by Config.GapPolicy. Versions must come from one
	// writer per key (the aggregate's own transaction), which is what the
	// outbox gives.
	ByVersion Mode = iota + 1

	// BySequence applies every sequence number of a key exactly once and in
	// order: a change that arrives early is parked (stored in the
	// replica_parked table, nothing applied) until the ones before it have
	// been applied, and then applied in the same transaction as the one
	// that filled the gap. A gap that stays open longer than
	// Config.GapTimeout is reported by [Replica.CheckGaps], which asks for a
	// resync. Use it for events that carry deltas (increments, appends),
	// where skipping one corrupts the replica.
	BySequence

	// ByTimestamp is last-writer-wins: a change is applied if its
	// (Timestamp, Origin, message id) is greater than the one the key holds,
	// compared in that order, so ties are broken the same way whatever the
	// arrival order and every replica converges to the same state. Use it
	// only when several writers change the same key and no version exists.
	//
	// Clock-skew warning: timestamps come from the writers' clocks. A writer
	// whose clock runs ahead wins against later writes from the others until
	// real time catches up, and a write from a writer whose clock lags is
	// silently lost to an older write (it is reported as Stale). Keep
	// clocks synchronized (NTP) and prefer ByVersion whenever a single
	// writer per key exists.
	ByTimestamp
)

// String returns "version", "sequence" or "timestamp".
func (m Mode) String() string {
	switch m {
	case ByVersion:
		return "version"
	case BySequence:
		return "sequence"
	case ByTimestamp:
		return "timestamp"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// GapPolicy says what a ByVersion replica does with a change whose version
// is more than one above the key's position.
type GapPolicy int

const (
	// ApplyAndReport applies the change, moves the position to its version
	// and reports the gap (Observer.Gap, a warning log); the skipped
	// versions are Stale if they arrive later. Right for state-carrying
	// events, where each event holds the whole new state of the entity.
	// The default.
	ApplyAndReport GapPolicy = iota
	// Reject applies nothing and returns an error wrapping [ErrGap] (and the
	// outcome Rejected), so that the message is redelivered after the
	// missing versions. Right for events that carry deltas when the broker
	// redelivers nacked messages. The first version of a key must then be 1
	// (or the key be set up with [Replica.Resync]).
	Reject
)

// String returns "apply_and_report" or "reject".
func (p GapPolicy) String() string {
	switch p {
	case ApplyAndReport:
		return "apply_and_report"
	case Reject:
		return "reject"
	}
	return fmt.Sprintf("GapPolicy(%d)", int(p))
}

// Config configures a [Replica]. Dialect, Name and Mode are required.
type Config struct {
	// Dialect of the replica's database. Required.
	Dialect accord.Dialect

	// Schema is the PostgreSQL schema (MySQL database) of Accord's tables.
	// Empty means the connection's default. Must be empty on SQLite.
	// Defaults to "".
	Schema string

	// TablePrefix is the prefix of Accord's tables. Defaults to "accord_".
	TablePrefix string

	// Name identifies the replica: positions and parked changes are stored
	// per (Name, key), so several replicas share the tables. Use one name
	// per replicated entity type and producer, for example
	// "billing.customers". At most NameMaxLength characters. Required.
	Name string

	// Mode selects the algorithm: ByVersion, BySequence or ByTimestamp.
	// Required.
	Mode Mode

	// GapPolicy says what a ByVersion replica does when versions are
	// missing before a change. Only ByVersion uses it. Defaults to
	// ApplyAndReport.
	GapPolicy GapPolicy

	// GapTimeout is how long the changes of a key may stay parked (the
	// oldest one counts) before [Replica.CheckGaps] reports the gap and
	// calls Resync. Only BySequence uses it. Defaults to GapTimeoutDefault
	// (30 s).
	GapTimeout time.Duration

	// Resync is called by [Replica.CheckGaps] for each key whose gap timed
	// out, outside any transaction. It typically fetches a snapshot of the
	// entity from its producer (through the feed or an API) and calls
	// [Replica.Resync] with it. It is called again on every check while the
	// gap stays open, so it must be idempotent. Defaults to nil: gaps are
	// only reported.
	Resync ResyncFunc

	// Logger receives the replica's structured logs: stale changes at
	// debug level (info for a ByTimestamp write that lost to another
	// writer), parked changes at info, gaps and resyncs at warn. Defaults to
	// slog.Default().
	Logger *slog.Logger

	// Observer is told about every decision, for metrics. Defaults to an
	// observer that does nothing.
	Observer Observer

	// Now returns the current time (parking times, gap timeouts,
	// updated_at). Tests set it to a controllable clock. Defaults to
	// time.Now.
	Now func() time.Time
}

// WithDefaults returns a copy of c with defaults filled in. A nil c is
// treated as an empty Config.
func (c *Config) WithDefaults() *Config {
	out := Config{}
	if c != nil {
		out = *c
	}
	if out.TablePrefix == "" {
		out.TablePrefix = outbox.TablePrefixDefault
	}
	if out.GapTimeout == 0 {
		out.GapTimeout = GapTimeoutDefault
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.Observer == nil {
		out.Observer = ObserverDefaults{}
	}
	if out.Now == nil {
		out.Now = time.Now
	}
	return &out
}

func (c *Config) validate() error {
	var errs []error
	if _, err := sqlstore.NewNames(c.Dialect, c.Schema, c.TablePrefix); err != nil {
		errs = append(errs, err)
	}
	switch {
	case c.Name == "":
		errs = append(errs, errors.New("Name: required (the replica's name, for example \"billing.customers\")"))
	case utf8.RuneCountInString(c.Name) > NameMaxLength:
		errs = append(errs, fmt.Errorf("Name %q: over %d characters", c.Name, NameMaxLength))
	case !storable(c.Name):
		errs = append(errs, fmt.Errorf("Name %q: must be valid UTF-8 without NUL bytes", c.Name))
	}
	switch c.Mode {
	case ByVersion, BySequence, ByTimestamp:
	case 0:
		errs = append(errs, errors.New("Mode: required (ByVersion, BySequence or ByTimestamp)"))
	default:
		errs = append(errs, fmt.Errorf("Mode %d: unknown (want ByVersion, BySequence or ByTimestamp)", int(c.Mode)))
	}
	switch c.GapPolicy {
	case ApplyAndReport:
	case Reject:
		if c.Mode != ByVersion && c.Mode != 0 {
			errs = append(errs, fmt.Errorf("GapPolicy %s: only ByVersion uses a gap policy, this replica is %s", c.GapPolicy, c.Mode))
		}
	default:
		errs = append(errs, fmt.Errorf("GapPolicy %d: unknown (want ApplyAndReport or Reject)", int(c.GapPolicy)))
	}
	if c.GapTimeout < 0 {
		errs = append(errs, fmt.Errorf("GapTimeout %s: must be positive", c.GapTimeout))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}

// storable reports whether s can be stored in a text column of every
// dialect (PostgreSQL rejects NUL, MySQL invalid UTF-8).
func storable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}
