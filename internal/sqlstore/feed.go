package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/accordgo/accord"
)

// This file holds the SQL of package feed: the producer's change feed
// (table feed) and the consumer's cursors (table feed_cursor).
//
// Positions are assigned by one writer at a time: a writer takes the feed
// lock (FeedLock) in its transaction, reads the head (FeedHeadLocked) and
// inserts rows at head+1, head+2, ... The lock is held until commit, so
// positions grow in commit order and a reader never sees position N+1
// before N.
//
// On MySQL the lock is a sentinel row at position 0 (FeedEnsureLockRow),
// locked with SELECT ... FOR UPDATE. Every read of the feed is for
// positions > 0, so the sentinel is never served, counted or pruned.

// FeedRow is one row of the feed table.
type FeedRow struct {
	Position  int64
	ID        string
	Topic     string
	Key       string
	Version   sql.NullInt64
	Payload   []byte
	Metadata  []byte // JSON object of string values
	CreatedAt time.Time
}

// FeedTx is what a *sql.Tx offers that the feed writer needs.
type FeedTx interface {
	Execer
	Querier
	RowQuerier
}

// Feed is the quoted feed table.
func (n Names) Feed() string { return n.Table("feed") }

// FeedCursor is the quoted feed_cursor table.
func (n Names) FeedCursor() string { return n.Table("feed_cursor") }

// FeedEnsureLockRow inserts the MySQL sentinel row at position 0 if it is
// missing. ex must not be the writer's transaction (use the pool, so the
// insert commits on its own). It does nothing on other dialects.
func (n Names) FeedEnsureLockRow(ctx context.Context, ex Execer) error {
	if n.Dialect != accord.MySQL {
		return nil
	}
	_, err := ex.ExecContext(ctx, "INSERT IGNORE INTO "+n.Feed()+
		" (position, id, topic, partition_key, version, payload, metadata, created_at) VALUES (0, '', '', '', NULL, '', '{}', 0)")
	return err
}

// FeedLock takes the feed writers' lock until the end of tx:
//
//   - PostgreSQL: pg_advisory_xact_lock on a key hashed from the schema
//     (current_schema() when Schema is empty) and the table name.
//   - MySQL: SELECT ... FOR UPDATE on the sentinel row at position 0. It
//     reports found=false when the row is missing (see FeedEnsureLockRow).
//   - SQLite: a write statement that matches nothing, which takes the
//     database's single write lock.
func (n Names) FeedLock(ctx context.Context, tx FeedTx) (found bool, err error) {
	switch n.Dialect {
	case accord.Postgres:
		_, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('accord.feed:' || COALESCE(NULLIF($1, ''), current_schema()) || '.' || $2, 0))`,
			n.Schema, n.Prefix+"feed")
		return err == nil, err
	case accord.MySQL:
		rows, err := tx.QueryContext(ctx, "SELECT position FROM "+n.Feed()+" WHERE position = 0 FOR UPDATE")
		if err != nil {
			return false, err
		}
		defer rows.Close()
		found := rows.Next()
		return found, rows.Err()
	case accord.SQLite:
		_, err := tx.ExecContext(ctx, "DELETE FROM "+n.Feed()+" WHERE position < 0")
		return err == nil, err
	}
	return false, n.Dialect.Validate()
}

// FeedHeadLocked returns the largest position (0 for an empty feed) as the
// lock holder sees it: on MySQL with a locking read, which sees the latest
// committed rows whatever the transaction's snapshot.
func (n Names) FeedHeadLocked(ctx context.Context, tx RowQuerier) (int64, error) {
	var head int64
	var err error
	if n.Dialect == accord.MySQL {
		err = tx.QueryRowContext(ctx, "SELECT position FROM "+n.Feed()+" ORDER BY position DESC LIMIT 1 LOCK IN SHARE MODE").Scan(&head)
		if err == sql.ErrNoRows {
			return 0, nil
		}
	} else {
		err = tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(position), 0) FROM "+n.Feed()).Scan(&head)
	}
	return head, err
}

// FeedPosID is a position and the id of the event stored there.
type FeedPosID struct {
	Position int64
	ID       string
}

// FeedIDsAfter returns the ids of the rows with a position > after, in
// position order (a locking read on MySQL, like FeedHeadLocked).
func (n Names) FeedIDsAfter(ctx context.Context, q Querier, after int64) ([]FeedPosID, error) {
	lock := ""
	if n.Dialect == accord.MySQL {
		lock = " LOCK IN SHARE MODE"
	}
	rows, err := q.QueryContext(ctx, "SELECT position, id FROM "+n.Feed()+" WHERE position > "+Placeholders(n.Dialect)(1)+" ORDER BY position"+lock, max(after, 0))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []FeedPosID
	for rows.Next() {
		var r FeedPosID
		if err := rows.Scan(&r.Position, &r.ID); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// FeedInsert writes rows (their positions already assigned) with one
// statement on PostgreSQL and one per 1,000 rows elsewhere.
func (n Names) FeedInsert(ctx context.Context, ex Execer, rows []FeedRow) error {
	if len(rows) == 0 {
		return nil
	}
	switch n.Dialect {
	case accord.Postgres:
		pos := make([]int64, len(rows))
		ids := make([]string, len(rows))
		topics := make([]string, len(rows))
		keys := make([]string, len(rows))
		vers := make([]*int64, len(rows))
		payloads := make([][]byte, len(rows))
		mds := make([]string, len(rows))
		ts := make([]time.Time, len(rows))
		for i, r := range rows {
			pos[i], ids[i], topics[i], keys[i] = r.Position, r.ID, r.Topic, r.Key
			if r.Version.Valid {
				v := r.Version.Int64
				vers[i] = &v
			}
			payloads[i], mds[i], ts[i] = nonNil(r.Payload), string(r.Metadata), r.CreatedAt
		}
		_, err := ex.ExecContext(ctx, `INSERT INTO `+n.Feed()+` (position, id, topic, partition_key, version, payload, metadata, created_at)
SELECT u.pos, u.id, u.topic, u.key, u.ver, u.payload, u.md::jsonb, u.ts
FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::bytea[], $7::text[], $8::timestamptz[])
  AS u(pos, id, topic, key, ver, payload, md, ts)`, pos, ids, topics, keys, vers, payloads, mds, ts)
		return err
	case accord.MySQL, accord.SQLite:
		for start := 0; start < len(rows); start += sqliteChunk {
			chunk := rows[start:min(start+sqliteChunk, len(rows))]
			var b strings.Builder
			b.WriteString("INSERT INTO " + n.Feed() + " (position, id, topic, partition_key, version, payload, metadata, created_at) VALUES ")
			args := make([]any, 0, len(chunk)*8)
			for i, r := range chunk {
				if i > 0 {
					b.WriteString(", ")
				}
				b.WriteString("(?, ?, ?, ?, ?, ?, ?, ?)")
				var ver any
				if r.Version.Valid {
					ver = r.Version.Int64
				}
				args = append(args, r.Position, r.ID, r.Topic, r.Key, ver, nonNil(r.Payload), string(r.Metadata), r.CreatedAt.UnixMicro())
			}
			if _, err := ex.ExecContext(ctx, b.String(), args...); err != nil {
				return err
			}
		}
		return nil
	}
	return n.Dialect.Validate()
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// FeedRead returns up to limit rows with a position > after, in position
// order. It never returns the MySQL sentinel row.
func (n Names) FeedRead(ctx context.Context, q Querier, after int64, limit int) ([]FeedRow, error) {
	cols := "position, id, topic, partition_key, version, payload, metadata, created_at"
	if n.Dialect == accord.Postgres {
		cols = "position, id, topic, partition_key, version, payload, metadata::text, created_at"
	}
	ph := Placeholders(n.Dialect)
	rs, err := q.QueryContext(ctx, "SELECT "+cols+" FROM "+n.Feed()+" WHERE position > "+ph(1)+" ORDER BY position LIMIT "+ph(2), max(after, 0), limit)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []FeedRow
	for rs.Next() {
		var r FeedRow
		var created any
		if err := rs.Scan(&r.Position, &r.ID, &r.Topic, &r.Key, &r.Version, &r.Payload, &r.Metadata, &created); err != nil {
			return nil, err
		}
		r.CreatedAt = scanTime(created)
		out = append(out, r)
	}
	return out, rs.Err()
}

func scanTime(v any) time.Time {
	switch c := v.(type) {
	case time.Time:
		return c.UTC()
	case int64:
		return time.UnixMicro(c).UTC()
	}
	return time.Time{}
}

// FeedBounds returns the smallest and largest positions in the feed (0, 0
// when it is empty), with two index seeks (a MIN and a MAX with a WHERE
// clause in one SELECT scan the table on SQLite).
func (n Names) FeedBounds(ctx context.Context, q RowQuerier) (oldest, head int64, err error) {
	err = q.QueryRowContext(ctx, "SELECT COALESCE((SELECT position FROM "+n.Feed()+" WHERE position > 0 ORDER BY position LIMIT 1), 0),"+
		" COALESCE((SELECT position FROM "+n.Feed()+" ORDER BY position DESC LIMIT 1), 0)").Scan(&oldest, &head)
	return oldest, head, err
}

// FeedPosTime is a position and its row's created_at.
type FeedPosTime struct {
	Position  int64
	CreatedAt time.Time
}

// FeedOldest returns the positions and creation times of the limit oldest
// rows.
func (n Names) FeedOldest(ctx context.Context, q Querier, limit int) ([]FeedPosTime, error) {
	rs, err := q.QueryContext(ctx, "SELECT position, created_at FROM "+n.Feed()+" WHERE position > 0 ORDER BY position LIMIT "+Placeholders(n.Dialect)(1), limit)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []FeedPosTime
	for rs.Next() {
		var r FeedPosTime
		var created any
		if err := rs.Scan(&r.Position, &created); err != nil {
			return nil, err
		}
		r.CreatedAt = scanTime(created)
		out = append(out, r)
	}
	return out, rs.Err()
}

// FeedDeleteRange deletes the rows with from <= position <= to (from is at
// least 1: the MySQL sentinel row is never deleted).
func (n Names) FeedDeleteRange(ctx context.Context, ex Execer, from, to int64) (int64, error) {
	ph := Placeholders(n.Dialect)
	res, err := ex.ExecContext(ctx, "DELETE FROM "+n.Feed()+" WHERE position >= "+ph(1)+" AND position <= "+ph(2), max(from, 1), to)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// FeedCursorGet returns a consumer's stored cursor for a feed, and whether
// one is stored.
func (n Names) FeedCursorGet(ctx context.Context, q RowQuerier, consumer, feed string) (string, bool, error) {
	ph := Placeholders(n.Dialect)
	var v string
	err := q.QueryRowContext(ctx, "SELECT cursor_value FROM "+n.FeedCursor()+" WHERE consumer = "+ph(1)+" AND feed = "+ph(2), consumer, feed).Scan(&v)
	if err == sql.ErrNoRows {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return v, true, nil
}

// FeedCursorSwap stores next as a consumer's cursor if the stored cursor is
// still old ("" meaning no cursor stored yet), and reports whether it did.
// It locks the cursor row until the end of the transaction ex, so two
// pullers of one consumer never both advance from the same cursor.
func (n Names) FeedCursorSwap(ctx context.Context, ex Execer, consumer, feed, old, next string, now time.Time) (bool, error) {
	ph := Placeholders(n.Dialect)
	var ts any = now.UTC()
	if n.Dialect != accord.Postgres {
		ts = now.UnixMicro()
	}
	var q string
	var args []any
	if old == "" {
		switch n.Dialect {
		case accord.MySQL:
			q = "INSERT IGNORE INTO " + n.FeedCursor() + " (consumer, feed, cursor_value, updated_at) VALUES (?, ?, ?, ?)"
		case accord.Postgres, accord.SQLite:
			q = "INSERT INTO " + n.FeedCursor() + " (consumer, feed, cursor_value, updated_at) VALUES (" +
				ph(1) + ", " + ph(2) + ", " + ph(3) + ", " + ph(4) + ") ON CONFLICT (consumer, feed) DO NOTHING"
		default:
			return false, n.Dialect.Validate()
		}
		args = []any{consumer, feed, next, ts}
	} else {
		q = "UPDATE " + n.FeedCursor() + " SET cursor_value = " + ph(1) + ", updated_at = " + ph(2) +
			" WHERE consumer = " + ph(3) + " AND feed = " + ph(4) + " AND cursor_value = " + ph(5)
		args = []any{next, ts, consumer, feed, old}
	}
	res, err := ex.ExecContext(ctx, q, args...)
	if err != nil {
		return false, err
	}
	nrows, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("rows affected: %w", err)
	}
	return nrows == 1, nil
}

// FeedCursorSet stores a consumer's cursor unconditionally.
func (n Names) FeedCursorSet(ctx context.Context, ex Execer, consumer, feed, value string, now time.Time) error {
	ph := Placeholders(n.Dialect)
	var q string
	var ts any = now.UTC()
	if n.Dialect != accord.Postgres {
		ts = now.UnixMicro()
	}
	switch n.Dialect {
	case accord.MySQL:
		q = "INSERT INTO " + n.FeedCursor() + " (consumer, feed, cursor_value, updated_at) VALUES (?, ?, ?, ?)" +
			" ON DUPLICATE KEY UPDATE cursor_value = VALUES(cursor_value), updated_at = VALUES(updated_at)"
	case accord.Postgres, accord.SQLite:
		q = "INSERT INTO " + n.FeedCursor() + " (consumer, feed, cursor_value, updated_at) VALUES (" +
			ph(1) + ", " + ph(2) + ", " + ph(3) + ", " + ph(4) + ") ON CONFLICT (consumer, feed) DO UPDATE SET cursor_value = excluded.cursor_value, updated_at = excluded.updated_at"
	default:
		return n.Dialect.Validate()
	}
	_, err := ex.ExecContext(ctx, q, consumer, feed, value, ts)
	return err
}

// FeedCursorDelete removes a consumer's stored cursor.
func (n Names) FeedCursorDelete(ctx context.Context, ex Execer, consumer, feed string) error {
	ph := Placeholders(n.Dialect)
	_, err := ex.ExecContext(ctx, "DELETE FROM "+n.FeedCursor()+" WHERE consumer = "+ph(1)+" AND feed = "+ph(2), consumer, feed)
	return err
}
