package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/accordgo/accord"
	"github.com/jackc/pgx/v5"
)

// The inbox statements run on database/sql transactions and on pgx
// transactions alike, through InboxConn.

// InboxConn runs the inbox's statements on one transaction or pool.
type InboxConn interface {
	// Exec runs a statement and returns the number of rows it affected.
	Exec(ctx context.Context, query string, args ...any) (int64, error)
	// QueryRow runs a query that returns at most one row.
	QueryRow(ctx context.Context, query string, args ...any) RowScanner
	// Query runs a query and calls each for every row.
	Query(ctx context.Context, query string, each func(RowScanner) error, args ...any) error
}

// RowScanner is what *sql.Row, *sql.Rows, pgx.Row and pgx.Rows share.
type RowScanner interface {
	Scan(dest ...any) error
}

// SQLHandle is what *sql.DB, *sql.Tx and *sql.Conn share.
type SQLHandle interface {
	Execer
	Querier
	RowQuerier
}

// InboxSQL adapts a database/sql handle (usually a *sql.Tx) to InboxConn.
func InboxSQL(h SQLHandle) InboxConn { return inboxSQLConn{h} }

type inboxSQLConn struct{ h SQLHandle }

func (c inboxSQLConn) Exec(ctx context.Context, q string, args ...any) (int64, error) {
	res, err := c.h.ExecContext(ctx, q, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (c inboxSQLConn) QueryRow(ctx context.Context, q string, args ...any) RowScanner {
	return c.h.QueryRowContext(ctx, q, args...)
}

func (c inboxSQLConn) Query(ctx context.Context, q string, each func(RowScanner) error, args ...any) error {
	rows, err := c.h.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := each(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// InboxPgx adapts a pgx transaction to InboxConn (PostgreSQL only).
func InboxPgx(tx pgx.Tx) InboxConn { return inboxPgxConn{tx} }

type inboxPgxConn struct{ tx pgx.Tx }

func (c inboxPgxConn) Exec(ctx context.Context, q string, args ...any) (int64, error) {
	tag, err := c.tx.Exec(ctx, q, args...)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

func (c inboxPgxConn) QueryRow(ctx context.Context, q string, args ...any) RowScanner {
	return c.tx.QueryRow(ctx, q, args...)
}

func (c inboxPgxConn) Query(ctx context.Context, q string, each func(RowScanner) error, args ...any) error {
	rows, err := c.tx.Query(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := each(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Inbox is the quoted inbox table.
func (n Names) Inbox() string { return n.Table("inbox") }

// InboxAttempt is the quoted table of failed attempts.
func (n Names) InboxAttempt() string { return n.Table("inbox_attempt") }

// DeadLetter is the quoted dead letter table.
func (n Names) DeadLetter() string { return n.Table("dead_letter") }

// inboxTime is how a time column is written: TIMESTAMPTZ on PostgreSQL,
// Unix microseconds (UTC) elsewhere.
func (n Names) inboxTime(t time.Time) any {
	if n.Dialect == accord.Postgres {
		return t.UTC()
	}
	return t.UnixMicro()
}

// inboxScanTime converts a scanned time column.
func inboxScanTime(v any) time.Time {
	switch c := v.(type) {
	case time.Time:
		return c.UTC()
	case int64:
		return time.UnixMicro(c).UTC()
	}
	return time.Time{}
}

// InboxInsert records that consumer received message id. It returns false
// (and no error) when the row already exists: the message was applied, or
// parked, before. A concurrent transaction inserting the same row makes this
// one wait until it commits (then false) or rolls back (then true).
func (n Names) InboxInsert(ctx context.Context, c InboxConn, consumer, id string, at time.Time) (bool, error) {
	var q string
	switch n.Dialect {
	case accord.Postgres:
		q = "INSERT INTO " + n.Inbox() + " (consumer, message_id, received_at) VALUES ($1, $2, $3) ON CONFLICT (consumer, message_id) DO NOTHING"
	case accord.MySQL:
		q = "INSERT IGNORE INTO " + n.Inbox() + " (consumer, message_id, received_at) VALUES (?, ?, ?)"
	case accord.SQLite:
		q = "INSERT OR IGNORE INTO " + n.Inbox() + " (consumer, message_id, received_at) VALUES (?, ?, ?)"
	default:
		return false, n.Dialect.Validate()
	}
	affected, err := c.Exec(ctx, q, consumer, id, n.inboxTime(at))
	if err != nil {
		return false, err
	}
	return affected > 0, nil
}

// InboxDelete removes the inbox row of consumer's message id, so that the
// message is applied again when it next arrives.
func (n Names) InboxDelete(ctx context.Context, c InboxConn, consumer, id string) (int64, error) {
	ph := Placeholders(n.Dialect)
	return c.Exec(ctx, "DELETE FROM "+n.Inbox()+" WHERE consumer = "+ph(1)+" AND message_id = "+ph(2), consumer, id)
}

// InboxRecordFailure adds one failed attempt for consumer's message id
// and returns the number of failed attempts recorded so far.
func (n Names) InboxRecordFailure(ctx context.Context, c InboxConn, consumer, id, lastError string, at time.Time) (int, error) {
	lastError = StorableText(lastError, MaxErrorLength)
	var attempts int
	switch n.Dialect {
	case accord.Postgres, accord.SQLite:
		ph := Placeholders(n.Dialect)
		q := "INSERT INTO " + n.InboxAttempt() + " AS a (consumer, message_id, attempts, last_error, updated_at) VALUES (" +
			ph(1) + ", " + ph(2) + ", 1, " + ph(3) + ", " + ph(4) + `)
ON CONFLICT (consumer, message_id) DO UPDATE SET attempts = a.attempts + 1, last_error = excluded.last_error, updated_at = excluded.updated_at
RETURNING attempts`
		err := c.QueryRow(ctx, q, consumer, id, lastError, n.inboxTime(at)).Scan(&attempts)
		return attempts, err
	case accord.MySQL:
		q := "INSERT INTO " + n.InboxAttempt() + ` (consumer, message_id, attempts, last_error, updated_at) VALUES (?, ?, 1, ?, ?)
ON DUPLICATE KEY UPDATE attempts = attempts + 1, last_error = VALUES(last_error), updated_at = VALUES(updated_at)`
		if _, err := c.Exec(ctx, q, consumer, id, lastError, n.inboxTime(at)); err != nil {
			return 0, err
		}
		// The upsert locked the row: this transaction reads its own write.
		err := c.QueryRow(ctx, "SELECT attempts FROM "+n.InboxAttempt()+" WHERE consumer = ? AND message_id = ?", consumer, id).Scan(&attempts)
		return attempts, err
	}
	return 0, n.Dialect.Validate()
}

// InboxAttempts returns the failed attempts recorded for consumer's message
// id and the last error (0 and "" when none).
func (n Names) InboxAttempts(ctx context.Context, c InboxConn, consumer, id string) (int, string, error) {
	ph := Placeholders(n.Dialect)
	var attempts int
	var lastError string
	err := c.QueryRow(ctx, "SELECT attempts, last_error FROM "+n.InboxAttempt()+" WHERE consumer = "+ph(1)+" AND message_id = "+ph(2),
		consumer, id).Scan(&attempts, &lastError)
	if errors.Is(err, sql.ErrNoRows) || errors.Is(err, pgx.ErrNoRows) {
		return 0, "", nil
	}
	return attempts, lastError, err
}

// InboxDeleteAttempts removes the failed attempts of consumer's message id.
func (n Names) InboxDeleteAttempts(ctx context.Context, c InboxConn, consumer, id string) error {
	ph := Placeholders(n.Dialect)
	_, err := c.Exec(ctx, "DELETE FROM "+n.InboxAttempt()+" WHERE consumer = "+ph(1)+" AND message_id = "+ph(2), consumer, id)
	return err
}

// DeadLetterRow is one row of the dead letter table.
type DeadLetterRow struct {
	Seq       int64
	Consumer  string
	MessageID string
	Topic     string
	Payload   []byte
	Metadata  string // JSON object of string values
	Reason    string
	Attempts  int
	CreatedAt time.Time
}

// DeadLetterInsert parks a message and returns its sequence number.
func (n Names) DeadLetterInsert(ctx context.Context, c InboxConn, r DeadLetterRow) (int64, error) {
	payload := r.Payload
	if payload == nil {
		payload = []byte{}
	}
	if r.Metadata == "" {
		r.Metadata = "{}"
	}
	r.Reason = StorableText(r.Reason, MaxErrorLength)
	args := []any{r.Consumer, r.MessageID, r.Topic, payload, r.Metadata, r.Reason, r.Attempts, n.inboxTime(r.CreatedAt)}
	const cols = " (consumer, message_id, topic, payload, metadata, reason, attempts, created_at) VALUES "
	var seq int64
	switch n.Dialect {
	case accord.Postgres:
		q := "INSERT INTO " + n.DeadLetter() + cols + "($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8) RETURNING seq"
		err := c.QueryRow(ctx, q, args...).Scan(&seq)
		return seq, err
	case accord.SQLite:
		q := "INSERT INTO " + n.DeadLetter() + cols + "(?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq"
		err := c.QueryRow(ctx, q, args...).Scan(&seq)
		return seq, err
	case accord.MySQL:
		q := "INSERT INTO " + n.DeadLetter() + cols + "(?, ?, ?, ?, ?, ?, ?, ?)"
		if _, err := c.Exec(ctx, q, args...); err != nil {
			return 0, err
		}
		// Same transaction, so the same connection.
		err := c.QueryRow(ctx, "SELECT LAST_INSERT_ID()").Scan(&seq)
		return seq, err
	}
	return 0, n.Dialect.Validate()
}

func (n Names) inboxDeadLetterSelect() string {
	md := "metadata"
	if n.Dialect == accord.Postgres {
		md = "metadata::text"
	}
	return "SELECT seq, consumer, message_id, topic, payload, " + md + ", reason, attempts, created_at FROM " + n.DeadLetter()
}

func inboxScanDeadLetter(s RowScanner) (DeadLetterRow, error) {
	var r DeadLetterRow
	var created any
	var md any
	if err := s.Scan(&r.Seq, &r.Consumer, &r.MessageID, &r.Topic, &r.Payload, &md, &r.Reason, &r.Attempts, &created); err != nil {
		return DeadLetterRow{}, err
	}
	switch m := md.(type) {
	case string:
		r.Metadata = m
	case []byte:
		r.Metadata = string(m)
	}
	r.CreatedAt = inboxScanTime(created)
	return r, nil
}

// DeadLetterList returns up to limit dead letters of consumer with seq >
// after, in seq order.
func (n Names) DeadLetterList(ctx context.Context, c InboxConn, consumer string, after int64, limit int) ([]DeadLetterRow, error) {
	ph := Placeholders(n.Dialect)
	q := n.inboxDeadLetterSelect() + " WHERE consumer = " + ph(1) + " AND seq > " + ph(2) + " ORDER BY seq LIMIT " + ph(3)
	var out []DeadLetterRow
	err := c.Query(ctx, q, func(s RowScanner) error {
		r, err := inboxScanDeadLetter(s)
		if err != nil {
			return err
		}
		out = append(out, r)
		return nil
	}, consumer, after, limit)
	return out, err
}

// DeadLetterGet returns consumer's dead letter seq, or (nil, nil). With
// lock, c must be a transaction: the row stays locked until it ends (on
// SQLite the transaction takes the database's write lock first, so that
// its later writes cannot fail to upgrade a read snapshot).
func (n Names) DeadLetterGet(ctx context.Context, c InboxConn, consumer string, seq int64, lock bool) (*DeadLetterRow, error) {
	ph := Placeholders(n.Dialect)
	q := n.inboxDeadLetterSelect() + " WHERE consumer = " + ph(1) + " AND seq = " + ph(2)
	if lock && n.Dialect == accord.SQLite {
		if _, err := c.Exec(ctx, "UPDATE "+n.DeadLetter()+" SET attempts = attempts WHERE consumer = ? AND seq = ?", consumer, seq); err != nil {
			return nil, err
		}
	} else if lock {
		q += " FOR UPDATE"
	}
	r, err := inboxScanDeadLetter(c.QueryRow(ctx, q, consumer, seq))
	if errors.Is(err, sql.ErrNoRows) || errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// DeadLetterDelete removes consumer's dead letter seq and returns the number
// of rows removed (0 or 1).
func (n Names) DeadLetterDelete(ctx context.Context, c InboxConn, consumer string, seq int64) (int64, error) {
	ph := Placeholders(n.Dialect)
	return c.Exec(ctx, "DELETE FROM "+n.DeadLetter()+" WHERE consumer = "+ph(1)+" AND seq = "+ph(2), consumer, seq)
}

// InboxCleanup deletes at most limit inbox rows of consumer received before
// cutoff, with one statement, and returns how many it deleted.
func (n Names) InboxCleanup(ctx context.Context, c InboxConn, consumer string, cutoff time.Time, limit int) (int64, error) {
	return n.inboxDeleteBatch(ctx, c, n.Inbox(), "received_at", consumer, cutoff, limit)
}

// InboxAttemptCleanup deletes at most limit failed-attempt rows of consumer
// last updated before cutoff, with one statement.
func (n Names) InboxAttemptCleanup(ctx context.Context, c InboxConn, consumer string, cutoff time.Time, limit int) (int64, error) {
	return n.inboxDeleteBatch(ctx, c, n.InboxAttempt(), "updated_at", consumer, cutoff, limit)
}

func (n Names) inboxDeleteBatch(ctx context.Context, c InboxConn, table, col, consumer string, cutoff time.Time, limit int) (int64, error) {
	var q string
	switch n.Dialect {
	case accord.Postgres:
		q = "DELETE FROM " + table + " WHERE consumer = $1 AND message_id IN (SELECT message_id FROM " + table +
			" WHERE consumer = $1 AND " + col + " < $2 LIMIT $3)"
	case accord.MySQL:
		q = "DELETE FROM " + table + " WHERE consumer = ? AND " + col + " < ? LIMIT ?"
	case accord.SQLite:
		q = "DELETE FROM " + table + " WHERE rowid IN (SELECT rowid FROM " + table + " WHERE consumer = ? AND " + col + " < ? LIMIT ?)"
	default:
		return 0, n.Dialect.Validate()
	}
	return c.Exec(ctx, q, consumer, n.inboxTime(cutoff), limit)
}

// InboxAttemptCleanupApplied deletes at most limit failed-attempt rows of
// consumer whose message has an inbox row (it was applied or parked after
// failing), with one statement.
func (n Names) InboxAttemptCleanupApplied(ctx context.Context, c InboxConn, consumer string, limit int) (int64, error) {
	a, i := n.InboxAttempt(), n.Inbox()
	var q string
	switch n.Dialect {
	case accord.Postgres:
		q = "DELETE FROM " + a + " WHERE consumer = $1 AND message_id IN (SELECT x.message_id FROM " + a + " x JOIN " + i +
			" y ON y.consumer = x.consumer AND y.message_id = x.message_id WHERE x.consumer = $1 LIMIT $2)"
	case accord.MySQL:
		// MySQL cannot select from the table it deletes from; the semi-join
		// on the other table is allowed.
		q = "DELETE FROM " + a + " WHERE consumer = ? AND message_id IN (SELECT message_id FROM " + i +
			" WHERE consumer = ?) LIMIT ?"
		return c.Exec(ctx, q, consumer, consumer, limit)
	case accord.SQLite:
		q = "DELETE FROM " + a + " WHERE rowid IN (SELECT x.rowid FROM " + a + " x JOIN " + i +
			" y ON y.consumer = x.consumer AND y.message_id = x.message_id WHERE x.consumer = ? LIMIT ?)"
	default:
		return 0, n.Dialect.Validate()
	}
	return c.Exec(ctx, q, consumer, limit)
}

// StorableText makes s storable in any dialect's text column: invalid UTF-8
// and NUL bytes (which PostgreSQL rejects) become U+FFFD, and the result is
// cut to at most max bytes at a character boundary.
func StorableText(s string, max int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	if len(s) <= max {
		return s
	}
	for max > 0 && !utf8.RuneStart(s[max]) {
		max--
	}
	return s[:max]
}
