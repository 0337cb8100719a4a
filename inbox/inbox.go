package inbox

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/sqlstore"
)

// MetadataTopic is the metadata key [Inbox.Handle] reads the topic of a
// message from when the message did not come through a watermill router
// (which tells the topic through the message's context). The topic is only
// recorded with dead letters, as the default destination of
// [Inbox.Requeue].
const MetadataTopic = "accord_topic"

// Result is the outcome of [Inbox.Handle].
type Result int

const (
	// ResultFailed means the message was not applied: the handler or the
	// database failed, and Handle returned the error. The broker must
	// redeliver the message (watermill nacks it).
	ResultFailed Result = iota
	// ResultApplied means the handler ran and its transaction, with the
	// inbox row, committed.
	ResultApplied
	// ResultDuplicate means the message was applied (or parked) before:
	// nothing was changed, and it can be acknowledged.
	ResultDuplicate
	// ResultDeadLettered means the message was parked as a dead letter,
	// together with its inbox row: it can be acknowledged, and its
	// redeliveries are duplicates.
	ResultDeadLettered
)

// String returns "failed", "applied", "duplicate" or "dead_lettered".
func (r Result) String() string {
	switch r {
	case ResultFailed:
		return "failed"
	case ResultApplied:
		return "applied"
	case ResultDuplicate:
		return "duplicate"
	case ResultDeadLettered:
		return "dead_lettered"
	}
	return fmt.Sprintf("Result(%d)", int(r))
}

// HandlerFunc applies one message in tx, the transaction that also records
// the message in the inbox. It changes the consumer's state through tx and
// may write events with outbox.WriteTx(ctx, tx, ...): the state change, the
// events and the inbox row commit together or not at all. It must not
// commit or roll back tx. A returned error rolls everything back.
type HandlerFunc func(ctx context.Context, tx *sql.Tx, msg *message.Message) error

// PgxHandlerFunc is [HandlerFunc] for pgx transactions (PostgreSQL). Write
// events with outbox.WritePgxTx(ctx, tx, ...).
type PgxHandlerFunc func(ctx context.Context, tx pgx.Tx, msg *message.Message) error

// PgxBeginner starts pgx transactions: *pgxpool.Pool and *pgx.Conn
// implement it.
type PgxBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Inbox applies each message to a consumer's database once in
// effect: the handler's changes commit in the same transaction as the row
// that records the message id, so a redelivered message is recognised and
// dropped. One Inbox serves every goroutine.
type Inbox struct {
	db    *sql.DB
	cfg   *Config
	names sqlstore.Names
	log   *slog.Logger

	cleanupBatch int // CleanupBatchMax; lowered by tests
}

// New validates cfg and returns an Inbox on db, the consumer's database.
// Errors wrap ErrInvalidConfig and name each bad field. db may be nil for
// an Inbox used only through [Inbox.HandlePgx]; the dead letter and cleanup
// methods need it.
func New(db *sql.DB, cfg *Config) (*Inbox, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	names, _ := sqlstore.NewNames(cfg.Dialect, cfg.Schema, cfg.TablePrefix)
	return &Inbox{
		db:           db,
		cfg:          cfg,
		names:        names,
		log:          cfg.Logger.With("component", "accord.inbox", "consumer", cfg.Consumer),
		cleanupBatch: CleanupBatchMax,
	}, nil
}

// Consumer returns the configured consumer name.
func (i *Inbox) Consumer() string { return i.cfg.Consumer }

// errNoDB is returned by methods that need the *sql.DB given to New.
var errNoDB = errors.New("accord inbox: this Inbox was created without a *sql.DB")

// Handle applies msg once in effect. It begins a transaction on the
// Inbox's database, inserts the inbox row (consumer, message id) and:
//
//   - if the row existed, the message was applied or parked before:
//     Handle returns ResultDuplicate and nil, without calling h;
//   - otherwise it calls h with the transaction and commits:
//     ResultApplied and nil.
//
// A second delivery of the same message that arrives while the first is
// being handled waits on the inbox row and becomes a duplicate once the
// first commits (or is applied, if the first rolls back).
//
// When h (or the commit) fails, everything is rolled back, the failed
// attempt is recorded in its own short transaction, and Handle returns
// ResultFailed with the error (wrapping h's), so the broker redelivers the
// message. When the error is permanent ([IsPermanent]), the message has no
// id, or this was the MaxAttempts-th failure, the message is parked
// instead: its dead letter and its inbox row are written in one
// transaction, and Handle returns ResultDeadLettered and nil, so the
// message is acknowledged and the ones behind it keep flowing.
//
// Errors of the inbox's own statements (database unreachable, tables
// missing) are returned with ResultFailed and are not counted as attempts;
// neither are failures after ctx was cancelled. A panic in h is recovered
// and counted as a failure.
func (i *Inbox) Handle(ctx context.Context, msg *message.Message, h HandlerFunc) (Result, error) {
	if i.db == nil {
		return ResultFailed, errNoDB
	}
	return i.handle(ctx, i.beginSQL, msg, func(ctx context.Context, t txn) error {
		return h(ctx, t.(*sqlTxn).tx, msg)
	})
}

// HandlePgx is [Inbox.Handle] on a pgx transaction started with db,
// usually a *pgxpool.Pool. PostgreSQL only.
func (i *Inbox) HandlePgx(ctx context.Context, db PgxBeginner, msg *message.Message, h PgxHandlerFunc) (Result, error) {
	if i.cfg.Dialect != accord.Postgres {
		return ResultFailed, fmt.Errorf("accord inbox: HandlePgx needs the %q dialect, this inbox is %q", accord.Postgres, i.cfg.Dialect)
	}
	begin := func(ctx context.Context) (txn, error) {
		tx, err := db.Begin(ctx)
		if err != nil {
			return nil, err
		}
		return pgxTxn{tx}, nil
	}
	return i.handle(ctx, begin, msg, func(ctx context.Context, t txn) error {
		return h(ctx, t.(pgxTxn).tx, msg)
	})
}

// HandlerFunc adapts h to a watermill handler that acknowledges applied,
// duplicate and parked messages and nacks failed ones:
//
//	router.AddConsumerHandler("billing", "orders.placed", sub, ib.HandlerFunc(applyOrder))
func (i *Inbox) HandlerFunc(h HandlerFunc) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		_, err := i.Handle(msg.Context(), msg, h)
		return err
	}
}

// HandlerFuncPgx is [Inbox.HandlerFunc] for pgx handlers.
func (i *Inbox) HandlerFuncPgx(db PgxBeginner, h PgxHandlerFunc) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		_, err := i.HandlePgx(msg.Context(), db, msg, h)
		return err
	}
}

type txKey struct{}

// TxFromContext returns the inbox transaction that [Inbox.Middleware] put in
// the context of the message it handles, or nil.
func TxFromContext(ctx context.Context) *sql.Tx {
	tx, _ := ctx.Value(txKey{}).(*sql.Tx)
	return tx
}

// Middleware is a watermill router middleware (message.HandlerMiddleware)
// that runs each handler under [Inbox.Handle]: the handler finds the
// transaction with TxFromContext(msg.Context()), and duplicates never reach
// it. It suits handlers that do not know about the inbox, such as
// watermill's cqrs event handlers:
//
//	router.AddMiddleware(ib.Middleware)
//
// The handler must not return messages: the router would publish them
// after the commit, outside the transaction, and a crash in between would
// lose them (the redelivery is a duplicate, which produces nothing). Such a
// handler fails with [ErrProducedMessages], a permanent error; publish
// through the outbox in the transaction instead.
func (i *Inbox) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		_, err := i.Handle(msg.Context(), msg, func(ctx context.Context, tx *sql.Tx, m *message.Message) error {
			orig := m.Context()
			m.SetContext(context.WithValue(ctx, txKey{}, tx))
			defer m.SetContext(orig)
			out, err := h(m)
			if err == nil && len(out) > 0 {
				return Permanent(fmt.Errorf("%w (%d messages)", ErrProducedMessages, len(out)))
			}
			return err
		})
		return nil, err
	}
}

// txn is a database/sql or pgx transaction.
type txn interface {
	conn() sqlstore.InboxConn
	commit(ctx context.Context) error
	rollback(ctx context.Context) error
}

type beginFunc func(ctx context.Context) (txn, error)

type sqlTxn struct{ tx *sql.Tx }

func (t *sqlTxn) conn() sqlstore.InboxConn       { return sqlstore.InboxSQL(t.tx) }
func (t *sqlTxn) commit(context.Context) error   { return t.tx.Commit() }
func (t *sqlTxn) rollback(context.Context) error { return t.tx.Rollback() }

func (i *Inbox) beginSQL(ctx context.Context) (txn, error) {
	tx, err := i.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	return &sqlTxn{tx}, nil
}

type pgxTxn struct{ tx pgx.Tx }

func (t pgxTxn) conn() sqlstore.InboxConn           { return sqlstore.InboxPgx(t.tx) }
func (t pgxTxn) commit(ctx context.Context) error   { return t.tx.Commit(ctx) }
func (t pgxTxn) rollback(ctx context.Context) error { return t.tx.Rollback(ctx) }

// rollback rolls t back on a context that outlives a cancelled ctx.
func rollback(ctx context.Context, t txn) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = t.rollback(ctx)
}

// delivery is one message being handled.
type delivery struct {
	msg   *message.Message
	id    string // as stored
	topic string
	start time.Time
}

func (d *delivery) observation(consumer string) Observation {
	return Observation{Consumer: consumer, MessageID: d.id, Topic: d.topic, Duration: time.Since(d.start)}
}

func (i *Inbox) handle(ctx context.Context, begin beginFunc, msg *message.Message, run func(context.Context, txn) error) (Result, error) {
	if msg == nil {
		return ResultFailed, ErrNilMessage
	}
	d := &delivery{msg: msg, id: StoredID(msg.UUID), topic: topicOf(ctx, msg), start: time.Now()}
	if msg.UUID == "" {
		return i.parkWithoutID(ctx, begin, d)
	}

	t, err := begin(ctx)
	if err != nil {
		return ResultFailed, i.dbErr("begin transaction", d, err)
	}
	inserted, err := i.names.InboxInsert(ctx, t.conn(), i.cfg.Consumer, d.id, i.cfg.Now())
	if err != nil {
		rollback(ctx, t)
		return ResultFailed, i.dbErr("record the message", d, err)
	}
	if !inserted {
		if err := t.commit(ctx); err != nil {
			return ResultFailed, i.dbErr("commit", d, err)
		}
		i.log.DebugContext(ctx, "duplicate message dropped", "message_id", d.id, "topic", d.topic)
		if o := i.cfg.Observer; o != nil {
			o.Duplicate(ctx, d.observation(i.cfg.Consumer))
		}
		return ResultDuplicate, nil
	}

	herr := i.run(ctx, t, d, run)
	if herr == nil {
		if err := t.commit(ctx); err != nil {
			herr = fmt.Errorf("commit: %w", err)
		} else {
			if o := i.cfg.Observer; o != nil {
				o.Applied(ctx, d.observation(i.cfg.Consumer))
			}
			return ResultApplied, nil
		}
	} else {
		rollback(ctx, t)
	}
	return i.fail(ctx, begin, d, herr)
}

// run calls the handler, turning a panic into an error.
func (i *Inbox) run(ctx context.Context, t txn, d *delivery, run func(context.Context, txn) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			i.log.ErrorContext(ctx, "handler panicked", "message_id", d.id, "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return run(ctx, t)
}

// fail records a failed attempt, or parks the message.
func (i *Inbox) fail(ctx context.Context, begin beginFunc, d *delivery, herr error) (Result, error) {
	wrapped := fmt.Errorf("accord inbox: consumer %q: message %s: %w", i.cfg.Consumer, d.id, herr)
	if ctx.Err() != nil {
		// Shutting down: not the message's fault, and not worth an attempt.
		return ResultFailed, wrapped
	}
	permanent := IsPermanent(herr)
	t, err := begin(ctx)
	if err != nil {
		return ResultFailed, errors.Join(wrapped, i.dbErr("record the failed attempt", d, err))
	}
	c := t.conn()
	attempts, err := i.names.InboxRecordFailure(ctx, c, i.cfg.Consumer, d.id, herr.Error(), i.cfg.Now())
	if err != nil {
		rollback(ctx, t)
		return ResultFailed, errors.Join(wrapped, i.dbErr("record the failed attempt", d, err))
	}
	if !permanent && (i.cfg.MaxAttempts == -1 || attempts < i.cfg.MaxAttempts) {
		if err := t.commit(ctx); err != nil {
			return ResultFailed, errors.Join(wrapped, i.dbErr("record the failed attempt", d, err))
		}
		i.log.WarnContext(ctx, "message failed; it will be retried", "message_id", d.id, "topic", d.topic,
			"attempts", attempts, "max_attempts", i.cfg.MaxAttempts, "error", herr)
		if o := i.cfg.Observer; o != nil {
			ob := d.observation(i.cfg.Consumer)
			ob.Err, ob.Attempts = herr, attempts
			o.Failed(ctx, ob)
		}
		return ResultFailed, wrapped
	}

	// Park: the dead letter and the inbox row in one transaction, so that
	// the message is acknowledged and its redeliveries are duplicates.
	inserted, err := i.names.InboxInsert(ctx, c, i.cfg.Consumer, d.id, i.cfg.Now())
	if err != nil {
		rollback(ctx, t)
		return ResultFailed, errors.Join(wrapped, i.dbErr("park the message", d, err))
	}
	if !inserted {
		// A concurrent delivery applied (or parked) it meanwhile.
		rollback(ctx, t)
		if o := i.cfg.Observer; o != nil {
			o.Duplicate(ctx, d.observation(i.cfg.Consumer))
		}
		return ResultDuplicate, nil
	}
	seq, err := i.insertDeadLetter(ctx, c, d, herr, attempts)
	if err == nil {
		err = i.names.InboxDeleteAttempts(ctx, c, i.cfg.Consumer, d.id)
	}
	if err != nil {
		rollback(ctx, t)
		return ResultFailed, errors.Join(wrapped, i.dbErr("park the message", d, err))
	}
	if err := t.commit(ctx); err != nil {
		return ResultFailed, errors.Join(wrapped, i.dbErr("park the message", d, err))
	}
	i.parked(ctx, d, herr, attempts, seq, permanent)
	return ResultDeadLettered, nil
}

// parkWithoutID parks a message without a UUID. It writes no inbox row:
// with no id, a redelivery cannot be told from another message, and an
// inbox row for "" would turn every later id-less message into a silent
// duplicate.
func (i *Inbox) parkWithoutID(ctx context.Context, begin beginFunc, d *delivery) (Result, error) {
	t, err := begin(ctx)
	if err != nil {
		return ResultFailed, i.dbErr("park the message", d, err)
	}
	seq, err := i.insertDeadLetter(ctx, t.conn(), d, ErrNoMessageID, 1)
	if err != nil {
		rollback(ctx, t)
		return ResultFailed, i.dbErr("park the message", d, err)
	}
	if err := t.commit(ctx); err != nil {
		return ResultFailed, i.dbErr("park the message", d, err)
	}
	i.parked(ctx, d, ErrNoMessageID, 1, seq, true)
	return ResultDeadLettered, nil
}

func (i *Inbox) parked(ctx context.Context, d *delivery, reason error, attempts int, seq int64, permanent bool) {
	i.log.ErrorContext(ctx, "message parked as a dead letter", "message_id", d.id, "topic", d.topic,
		"dead_letter_seq", seq, "attempts", attempts, "permanent", permanent, "reason", reason)
	if o := i.cfg.Observer; o != nil {
		ob := d.observation(i.cfg.Consumer)
		ob.Err, ob.Attempts, ob.DeadLetterSeq = reason, attempts, seq
		o.DeadLettered(ctx, ob)
	}
}

func (i *Inbox) insertDeadLetter(ctx context.Context, c sqlstore.InboxConn, d *delivery, reason error, attempts int) (int64, error) {
	md, err := encodeMetadata(d.msg.Metadata)
	if err != nil {
		return 0, err
	}
	return i.names.DeadLetterInsert(ctx, c, sqlstore.DeadLetterRow{
		Consumer:  i.cfg.Consumer,
		MessageID: d.id,
		Topic:     sqlstore.StorableText(d.topic, 1024),
		Payload:   d.msg.Payload,
		Metadata:  md,
		Reason:    reason.Error(),
		Attempts:  attempts,
		CreatedAt: i.cfg.Now(),
	})
}

func (i *Inbox) dbErr(op string, d *delivery, err error) error {
	if sqlstore.IsUndefinedTable(err) {
		return fmt.Errorf("accord inbox: %s: the inbox tables (%s) do not exist; run `accord migrate up` (or migrate.Migrator.Migrate) with the same schema and prefix: %w",
			op, i.names.Inbox(), err)
	}
	if d != nil {
		return fmt.Errorf("accord inbox: consumer %q: message %s: %s: %w", i.cfg.Consumer, d.id, op, err)
	}
	return fmt.Errorf("accord inbox: consumer %q: %s: %w", i.cfg.Consumer, op, err)
}

// StoredID returns the id under which the inbox stores a message id: the id
// itself when it is valid UTF-8 without NUL bytes, does not end with a space
// and is at most MessageIDMaxLength bytes; otherwise "sha256:" and the id's
// hex SHA-256. (MySQL's and MariaDB's utf8mb4_bin collation ignores
// trailing spaces, which would make "a" and "a " the same message.)
// Observations and dead letters carry the stored id.
func StoredID(id string) string {
	if len(id) <= MessageIDMaxLength && utf8.ValidString(id) && !strings.ContainsRune(id, 0) &&
		!strings.HasSuffix(id, " ") {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// topicOf returns the topic msg arrived on: the router's subscribe topic
// (from ctx or the message's context), else the MetadataTopic metadata.
func topicOf(ctx context.Context, msg *message.Message) string {
	if t := message.SubscribeTopicFromCtx(ctx); t != "" {
		return t
	}
	if t := message.SubscribeTopicFromCtx(msg.Context()); t != "" {
		return t
	}
	return msg.Metadata.Get(MetadataTopic)
}
