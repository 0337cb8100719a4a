package inbox

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/sqlstore"
)

// Defaults and limits of [Config].
const (
	// TablePrefixDefault is the table prefix used when Config.TablePrefix is
	// empty. It must match the prefix the migrations were applied with.
	TablePrefixDefault = "accord_"

	// MaxAttemptsDefault is how many failed handler runs park a message as a
	// dead letter by default.
	MaxAttemptsDefault = 5

	// RetentionDefault is how long processed message ids are kept by
	// default (7 days).
	RetentionDefault = 7 * 24 * time.Hour

	// ConsumerMaxLength is the longest consumer name, in bytes.
	ConsumerMaxLength = 255

	// MessageIDMaxLength is the longest message id stored as it is, in
	// bytes. Longer ids are stored as "sha256:" followed by the hex
	// SHA-256 of the id (see [StoredID]).
	MessageIDMaxLength = 255

	// CleanupBatchMax is the most rows one statement of [Inbox.Cleanup]
	// deletes.
	CleanupBatchMax = 10000

	// CleanupIntervalDefault is the interval [Inbox.RunCleanup] uses when
	// given zero.
	CleanupIntervalDefault = time.Hour
)

// Config configures an [Inbox]. Dialect and Consumer are required.
type Config struct {
	// Dialect of the database the inbox tables live in: the consumer's own
	// database, where its handlers change state. Required.
	Dialect accord.Dialect

	// Schema is the PostgreSQL schema (MySQL database) of the inbox tables.
	// Empty means the connection's default. Must be empty on SQLite.
	// Defaults to "".
	Schema string

	// TablePrefix is the prefix of Accord's tables. Defaults to
	// TablePrefixDefault ("accord_").
	TablePrefix string

	// Consumer names the consumer: the inbox remembers, per consumer,
	// which message ids it applied. Two handlers that must each apply
	// every message need different names; two instances (replicas) of the
	// same handler share one. Valid UTF-8 without NUL bytes or leading
	// or trailing spaces, at most ConsumerMaxLength bytes. Required.
	Consumer string

	// MaxAttempts is how many failed handler runs a message gets: after
	// the MaxAttempts-th failure it is parked as a dead letter and
	// acknowledged, so it no longer blocks the messages behind it. The
	// special value -1 disables parking after failures (a failing message
	// is retried for as long as the broker redelivers it; permanent errors
	// are still parked at once). Defaults to MaxAttemptsDefault (5).
	MaxAttempts int

	// Retention is how long the ids of processed messages are kept.
	// Within it, a redelivered message is recognised and dropped; after
	// it, [Inbox.Cleanup] deletes the id and a redelivery would be applied
	// again. It must therefore exceed the longest time the broker can
	// redeliver a message after its first delivery: for NATS JetStream
	// the consumer's redelivery horizon (AckWait × MaxDeliver, plus any
	// backoff) and the stream's duplicate window; for Kafka, how far back
	// a consumer group can be rewound. Defaults to RetentionDefault
	// (7 days).
	Retention time.Duration

	// Logger receives the inbox's structured logs. Defaults to
	// slog.Default().
	Logger *slog.Logger

	// Observer is told about every message's outcome, for metrics.
	// Defaults to nil (none).
	Observer Observer

	// Now returns the current time: the receive time of inbox rows and
	// the reference of Retention. Defaults to time.Now.
	Now func() time.Time
}

// WithDefaults returns a copy of c with defaults filled in.
func (c *Config) WithDefaults() *Config {
	out := Config{}
	if c != nil {
		out = *c
	}
	if out.TablePrefix == "" {
		out.TablePrefix = TablePrefixDefault
	}
	if out.MaxAttempts == 0 {
		out.MaxAttempts = MaxAttemptsDefault
	}
	if out.Retention == 0 {
		out.Retention = RetentionDefault
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
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
	case c.Consumer == "":
		errs = append(errs, errors.New("Consumer is empty: name the consumer (for example \"billing.order-placed\")"))
	case len(c.Consumer) > ConsumerMaxLength:
		errs = append(errs, fmt.Errorf("Consumer %.40q...: %d bytes, over the %d-byte limit", c.Consumer, len(c.Consumer), ConsumerMaxLength))
	case !utf8.ValidString(c.Consumer) || strings.ContainsRune(c.Consumer, 0) || strings.TrimSpace(c.Consumer) != c.Consumer:
		errs = append(errs, fmt.Errorf("Consumer %q: must be valid UTF-8 without NUL bytes or leading or trailing spaces", c.Consumer))
	}
	if c.MaxAttempts < 1 && c.MaxAttempts != -1 {
		errs = append(errs, fmt.Errorf("MaxAttempts %d: must be at least 1, or -1 to never park after failures", c.MaxAttempts))
	}
	if c.Retention < 0 {
		errs = append(errs, fmt.Errorf("Retention %s: must be positive", c.Retention))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}
