package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/sqlstore"
)

const (
	// TablePrefixDefault is the table prefix used when Config.TablePrefix is
	// empty. It must match the prefix the migrations were applied with.
	TablePrefixDefault = "accord_"

	// MaxPayloadBytesDefault is the default bound on one event's payload
	// (1 MiB, which is also NATS's default max_payload).
	MaxPayloadBytesDefault = 1 << 20

	// ShardCount is the fixed number of shards partition keys hash into. The
	// relay assigns shards to ordered lanes. It is part of the stored data
	// and never changes.
	ShardCount = 1024
)

// Metadata keys that the relay sets on every published message.
const (
	// MetadataKey holds the event's partition key.
	MetadataKey = "accord_key"
	// MetadataVersion holds the aggregate version, when the event has one.
	MetadataVersion = "accord_version"
	// MetadataCreatedAt holds the time the event was written, RFC 3339 with
	// nanoseconds, UTC.
	MetadataCreatedAt = "accord_created_at"
	// MetadataLease holds the fencing token of the relay instance that
	// published the message, "<slot>:<epoch>": the lease slot of the event's
	// partition key (shard % 64) and the epoch of the lease the instance
	// held. Epochs of a slot only grow, so a consumer can tell a late
	// publish of an instance that lost its lease (a duplicate) from the
	// current owner's. Absent when the relay runs without leases.
	MetadataLease = "accord_lease"
)

// Config configures an [Outbox]. Only Dialect is required.
type Config struct {
	// Dialect of the database the outbox table lives in. Required.
	Dialect accord.Dialect

	// Schema is the PostgreSQL schema of the outbox table. Empty means the
	// connection's search_path. Must be empty on SQLite. Defaults to "".
	Schema string

	// TablePrefix is the prefix of Accord's tables. Defaults to
	// TablePrefixDefault ("accord_").
	TablePrefix string

	// MaxPayloadBytes bounds the payload of one event; larger events are
	// rejected with ErrPayloadTooLarge before anything is written. The
	// special value -1 disables the check. Defaults to MaxPayloadBytesDefault.
	MaxPayloadBytes int

	// Propagator injects the trace context of the writing transaction's
	// context into message metadata. Defaults to W3C Trace Context
	// (traceparent, tracestate).
	Propagator propagation.TextMapPropagator

	// Now returns the creation time of events. Defaults to time.Now.
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
	if out.MaxPayloadBytes == 0 {
		out.MaxPayloadBytes = MaxPayloadBytesDefault
	}
	if out.Propagator == nil {
		out.Propagator = propagation.TraceContext{}
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
	if c.MaxPayloadBytes < -1 {
		errs = append(errs, fmt.Errorf("MaxPayloadBytes %d: must be positive, or -1 to disable the check", c.MaxPayloadBytes))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}

// Outbox writes events into the outbox table. It holds no connection and no
// state besides its configuration, so one Outbox serves every goroutine.
type Outbox struct {
	cfg   *Config
	names sqlstore.Names
}

// New validates cfg and returns an Outbox. Errors wrap ErrInvalidConfig and
// name each bad field.
func New(cfg *Config) (*Outbox, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	names, _ := sqlstore.NewNames(cfg.Dialect, cfg.Schema, cfg.TablePrefix)
	return &Outbox{cfg: cfg, names: names}, nil
}

// Dialect returns the configured dialect.
func (o *Outbox) Dialect() accord.Dialect { return o.cfg.Dialect }

// Event is one event to write: a watermill message and where it goes.
type Event struct {
	// Topic is the destination topic the relay publishes to. Required.
	Topic string
	// Key is the partition key (for example "order-42"). Events with the same
	// key are published in write order. Defaults to "" (one shared key).
	Key string
	// Version is the aggregate version after the change the event
	// describes, carried in MetadataVersion. Zero means "no version".
	Version int64
	// Message is the payload and metadata. Its UUID is set to a new UUIDv7
	// when empty. Required.
	Message *message.Message
}

// NewMessage returns a watermill message with a new UUIDv7 id.
func NewMessage(payload []byte) *message.Message {
	return message.NewMessage(NewID(), payload)
}

// NewID returns a new UUIDv7 string.
func NewID() string {
	id, err := uuid.NewV7()
	if err != nil {
		// uuid.NewV7 fails only when the system's random source fails.
		panic(fmt.Sprintf("accord outbox: generate UUIDv7: %v", err))
	}
	return id.String()
}

// Shard returns the shard (0..ShardCount-1) of a partition key.
func Shard(key string) int32 {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int32(h.Sum32() % ShardCount)
}

// WriteTx writes events in the caller's database/sql transaction with one
// statement (PostgreSQL) and returns the first error. tx is usually a
// *sql.Tx; a *sql.DB or *sql.Conn works too, outside any transaction.
// Invalid events (ErrInvalidEvent, ErrPayloadTooLarge) are reported before
// anything is written.
func (o *Outbox) WriteTx(ctx context.Context, tx sqlstore.Execer, events ...Event) error {
	rows, err := o.rows(ctx, events)
	if err != nil {
		return err
	}
	if err := o.names.Insert(ctx, tx, rows); err != nil {
		return o.wrapWriteErr(err)
	}
	return nil
}

// WritePgxTx writes events in the caller's pgx transaction with one
// statement. PostgreSQL only.
func (o *Outbox) WritePgxTx(ctx context.Context, tx pgx.Tx, events ...Event) error {
	rows, err := o.rows(ctx, events)
	if err != nil {
		return err
	}
	if err := o.names.InsertPgx(ctx, tx, rows); err != nil {
		return o.wrapWriteErr(err)
	}
	return nil
}

func (o *Outbox) wrapWriteErr(err error) error {
	if sqlstore.IsUndefinedTable(err) {
		return fmt.Errorf("accord outbox: table %s does not exist; run `accord migrate up` (or migrate.Migrator.Migrate) with the same schema and prefix: %w", o.names.Outbox(), err)
	}
	return fmt.Errorf("accord outbox: write events: %w", err)
}

// PublishTx writes messages for one topic in the caller's transaction. The
// partition key and version come from each message's metadata
// (MetadataKey, MetadataVersion), so code that only has messages can still
// route them.
func (o *Outbox) PublishTx(ctx context.Context, tx sqlstore.Execer, topic string, msgs ...*message.Message) error {
	events, err := eventsFromMessages(topic, msgs)
	if err != nil {
		return err
	}
	return o.WriteTx(ctx, tx, events...)
}

func eventsFromMessages(topic string, msgs []*message.Message) ([]Event, error) {
	events := make([]Event, len(msgs))
	for i, m := range msgs {
		ev := Event{Topic: topic, Message: m}
		if m != nil {
			ev.Key = m.Metadata.Get(MetadataKey)
			if v := m.Metadata.Get(MetadataVersion); v != "" {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil || n < 0 {
					return nil, fmt.Errorf("%w: message %s: metadata %s=%q is not a non-negative integer", ErrInvalidEvent, m.UUID, MetadataVersion, v)
				}
				ev.Version = n
			}
		}
		events[i] = ev
	}
	return events, nil
}

func (o *Outbox) rows(ctx context.Context, events []Event) ([]sqlstore.NewRow, error) {
	now := o.cfg.Now().UTC()
	rows := make([]sqlstore.NewRow, len(events))
	for i, ev := range events {
		r, err := o.row(ctx, ev, now)
		if err != nil {
			return nil, fmt.Errorf("event %d of %d: %w", i+1, len(events), err)
		}
		rows[i] = r
	}
	return rows, nil
}

func (o *Outbox) row(ctx context.Context, ev Event, now time.Time) (sqlstore.NewRow, error) {
	if ev.Message == nil {
		return sqlstore.NewRow{}, fmt.Errorf("%w: Message is nil", ErrInvalidEvent)
	}
	m := ev.Message
	if ev.Topic == "" {
		return sqlstore.NewRow{}, fmt.Errorf("%w: message %s has no Topic", ErrInvalidEvent, m.UUID)
	}
	if len(ev.Topic) > 1024 {
		return sqlstore.NewRow{}, fmt.Errorf("%w: message %s: topic is %d bytes, over 1024", ErrInvalidEvent, m.UUID, len(ev.Topic))
	}
	if ev.Version < 0 {
		return sqlstore.NewRow{}, fmt.Errorf("%w: message %s: Version %d is negative", ErrInvalidEvent, m.UUID, ev.Version)
	}
	if m.UUID == "" {
		m.UUID = NewID()
	}
	id, err := uuid.Parse(m.UUID)
	if err != nil {
		return sqlstore.NewRow{}, fmt.Errorf("%w: message id %q is not a UUID: %v", ErrInvalidEvent, m.UUID, err)
	}
	if max := o.cfg.MaxPayloadBytes; max > 0 && len(m.Payload) > max {
		return sqlstore.NewRow{}, fmt.Errorf("%w: message %s: %d bytes, over MaxPayloadBytes %d", ErrPayloadTooLarge, m.UUID, len(m.Payload), max)
	}
	md := make(map[string]string, len(m.Metadata)+2)
	for k, v := range m.Metadata {
		if strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0) {
			return sqlstore.NewRow{}, fmt.Errorf("%w: message %s: metadata %q contains a NUL byte", ErrInvalidEvent, m.UUID, k)
		}
		md[k] = v
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		o.cfg.Propagator.Inject(ctx, propagation.MapCarrier(md))
	} else if sc := trace.SpanContextFromContext(m.Context()); sc.IsValid() {
		o.cfg.Propagator.Inject(m.Context(), propagation.MapCarrier(md))
	}
	mdJSON, err := json.Marshal(md)
	if err != nil {
		return sqlstore.NewRow{}, fmt.Errorf("%w: message %s: metadata: %v", ErrInvalidEvent, m.UUID, err)
	}
	r := sqlstore.NewRow{
		ID:        id.String(),
		Topic:     ev.Topic,
		Key:       ev.Key,
		Shard:     Shard(ev.Key),
		Payload:   m.Payload,
		Metadata:  string(mdJSON),
		CreatedAt: now,
	}
	if ev.Version > 0 {
		v := ev.Version
		r.Version = &v
	}
	return r, nil
}
