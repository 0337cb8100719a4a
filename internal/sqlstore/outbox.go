package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/accordgo/accord"
	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
)

// NewRow is an outbox row to insert.
type NewRow struct {
	ID        string
	Topic     string
	Key       string
	Shard     int32
	Version   *int64
	Payload   []byte
	Metadata  string // JSON object of string values
	CreatedAt time.Time
}

// Row is an outbox row as the relay reads it.
type Row struct {
	Seq       int64
	ID        string
	Topic     string
	Key       string
	Shard     int32
	Version   sql.NullInt64
	Payload   []byte
	Metadata  []byte
	CreatedAt time.Time
	Attempts  int
	// Thin marks a row a ReadOpts.Thin read returned only as a number (not
	// the caller's to publish).
	Thin bool
	// Settling is how much longer the row has to wait before it is
	// ReadOpts.Settle old (0 without Settle, or when it is).
	Settling time.Duration
}

// Execer is what database/sql's *sql.DB, *sql.Tx and *sql.Conn share.
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Querier is what database/sql's *sql.DB, *sql.Tx and *sql.Conn share for
// reads.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// sqliteChunk bounds rows per INSERT so a statement stays under SQLite's
// bind-variable limit (32766 since 3.32) and MySQL's (65535).
const sqliteChunk = 1000

func (n Names) pgInsertSQL() string {
	return `INSERT INTO ` + n.Outbox() + ` (id, topic, partition_key, shard, aggregate_version, payload, metadata, created_at)
SELECT u.id::uuid, u.topic, u.key, u.shard, u.ver, u.payload, u.md::jsonb, u.ts
FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int8[], $6::bytea[], $7::text[], $8::timestamptz[])
  WITH ORDINALITY AS u(id, topic, key, shard, ver, payload, md, ts, ord)
ORDER BY u.ord`
}

func pgInsertArgs(rows []NewRow) []any {
	ids := make([]string, len(rows))
	topics := make([]string, len(rows))
	keys := make([]string, len(rows))
	shards := make([]int32, len(rows))
	vers := make([]*int64, len(rows))
	payloads := make([][]byte, len(rows))
	mds := make([]string, len(rows))
	ts := make([]time.Time, len(rows))
	for i, r := range rows {
		ids[i], topics[i], keys[i], shards[i], vers[i] = r.ID, r.Topic, r.Key, r.Shard, r.Version
		payloads[i], mds[i], ts[i] = r.Payload, r.Metadata, r.CreatedAt
		if payloads[i] == nil {
			payloads[i] = []byte{}
		}
	}
	return []any{ids, topics, keys, shards, vers, payloads, mds, ts}
}

// Insert writes rows with one statement (PostgreSQL) or one statement per
// 1,000 rows (SQLite) through a database/sql handle, usually the caller's
// *sql.Tx.
func (n Names) Insert(ctx context.Context, ex Execer, rows []NewRow) error {
	if len(rows) == 0 {
		return nil
	}
	switch n.Dialect {
	case accord.Postgres:
		_, err := ex.ExecContext(ctx, n.pgInsertSQL(), pgInsertArgs(rows)...)
		return err
	case accord.SQLite, accord.MySQL:
		for start := 0; start < len(rows); start += sqliteChunk {
			end := min(start+sqliteChunk, len(rows))
			q, args := n.sqliteInsert(rows[start:end])
			if _, err := ex.ExecContext(ctx, q, args...); err != nil {
				return err
			}
		}
		return nil
	}
	return n.Dialect.Validate()
}

// InsertPgx writes rows with one statement through pgx (PostgreSQL only).
func (n Names) InsertPgx(ctx context.Context, tx pgx.Tx, rows []NewRow) error {
	if n.Dialect != accord.Postgres {
		return fmt.Errorf("pgx transactions need the %q dialect, this outbox is %q", accord.Postgres, n.Dialect)
	}
	if len(rows) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, n.pgInsertSQL(), pgInsertArgs(rows)...)
	return err
}

func (n Names) sqliteInsert(rows []NewRow) (string, []any) {
	var b strings.Builder
	b.WriteString("INSERT INTO " + n.Outbox() + " (id, topic, partition_key, shard, aggregate_version, payload, metadata, created_at) VALUES ")
	args := make([]any, 0, len(rows)*8)
	for i, r := range rows {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?, ?, ?, ?, ?)")
		var ver any
		if r.Version != nil {
			ver = *r.Version
		}
		payload := r.Payload
		if payload == nil {
			payload = []byte{}
		}
		args = append(args, r.ID, r.Topic, r.Key, r.Shard, ver, payload, r.Metadata, r.CreatedAt.UnixMicro())
	}
	return b.String(), args
}

const selectCols = "seq, id, topic, partition_key, shard, aggregate_version, payload, metadata, created_at, attempts"

func (n Names) selectSQL(where string) string {
	cols := selectCols
	if n.Dialect == accord.Postgres {
		cols = "seq, id::text, topic, partition_key, shard, aggregate_version, payload, metadata::text, created_at, attempts"
	}
	return "SELECT " + cols + " FROM " + n.Outbox() + " " + where
}

// ReadAfter returns up to limit rows with seq > after, in seq order.
func (n Names) ReadAfter(ctx context.Context, q Querier, after int64, limit int) ([]Row, error) {
	return n.Read(ctx, q, after, limit, ReadOpts{})
}

// ReadOne returns the row with the given seq, or (nil, nil) if it is gone.
func (n Names) ReadOne(ctx context.Context, q Querier, seq int64) (*Row, error) {
	rows, err := n.scan(q.QueryContext(ctx, n.selectSQL("WHERE seq = "+Placeholders(n.Dialect)(1)), seq))
	if err != nil || len(rows) == 0 {
		return nil, err
	}
	return &rows[0], nil
}

func (n Names) scan(rs *sql.Rows, err error) ([]Row, error) {
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	cols, err := rs.Columns()
	if err != nil {
		return nil, err
	}
	var out []Row
	var r Row
	var created any
	var settleUS int64
	dest := []any{&r.Seq, &r.ID, &r.Topic, &r.Key, &r.Shard, &r.Version, &r.Payload, &r.Metadata, &created, &r.Attempts}
	if len(cols) > len(dest) {
		dest = append(dest, &settleUS) // ReadOpts.Settle
	}
	for rs.Next() {
		r, created, settleUS = Row{}, nil, 0
		if err := rs.Scan(dest...); err != nil {
			return nil, err
		}
		r.Settling = time.Duration(settleUS) * time.Microsecond
		switch c := created.(type) {
		case time.Time:
			r.CreatedAt = c
		case int64:
			r.CreatedAt = time.UnixMicro(c).UTC()
		}
		out = append(out, r)
	}
	return out, rs.Err()
}

// Delete removes the rows with the given seqs in one statement (MySQL: one
// per 1,000 rows).
func (n Names) Delete(ctx context.Context, ex Execer, seqs []int64) error {
	_, err := n.DeleteFenced(ctx, ex, seqs, "")
	return err
}

// MaxErrorLength bounds the last_error text stored for a failed row.
const MaxErrorLength = 2000

// MarkFailed records a failed publish attempt on a row.
// With owner not "", only while owner holds the row's lease slot.
func (n Names) MarkFailed(ctx context.Context, ex Execer, seq int64, cause error, owner string) error {
	msg := StorableText(cause.Error(), MaxErrorLength)
	ph := Placeholders(n.Dialect)
	q := "UPDATE " + n.Outbox() + " SET attempts = attempts + 1, last_error = " + ph(1) + " WHERE seq = " + ph(2)
	args := []any{msg, seq}
	if owner != "" {
		q += " AND " + n.heldBy("", ph(3))
		args = append(args, owner)
	}
	_, err := ex.ExecContext(ctx, q, args...)
	return err
}

// Stats is the state of the outbox table.
type Stats struct {
	// Pending is the number of rows not yet published.
	Pending int64
	// Oldest is the creation time of the oldest pending row (zero if none).
	Oldest time.Time
}

// Stats counts pending rows.
func (n Names) Stats(ctx context.Context, q Querier) (Stats, error) {
	rows, err := q.QueryContext(ctx, "SELECT count(*), min(created_at) FROM "+n.Outbox())
	if err != nil {
		return Stats{}, err
	}
	defer rows.Close()
	var s Stats
	if rows.Next() {
		var oldest any
		if err := rows.Scan(&s.Pending, &oldest); err != nil {
			return Stats{}, err
		}
		switch c := oldest.(type) {
		case time.Time:
			s.Oldest = c
		case int64:
			s.Oldest = time.UnixMicro(c).UTC()
		}
	}
	return s, rows.Err()
}

// IsUndefinedTable reports whether err says a table does not exist.
func IsUndefinedTable(err error) bool {
	if err == nil {
		return false
	}
	var coded interface{ SQLState() string }
	if errors.As(err, &coded) && coded.SQLState() == "42P01" {
		return true
	}
	// MySQL reports a missing table, and a table in a missing database, as
	// ER_NO_SUCH_TABLE 1146 (SQLSTATE 42S02).
	var my *mysql.MySQLError
	if errors.As(err, &my) && my.Number == 1146 {
		return true
	}
	return strings.Contains(err.Error(), "no such table")
}

// FormatSeqs renders seqs for log lines.
func FormatSeqs(seqs []int64) string {
	parts := make([]string, len(seqs))
	for i, s := range seqs {
		parts[i] = strconv.FormatInt(s, 10)
	}
	return strings.Join(parts, ",")
}
