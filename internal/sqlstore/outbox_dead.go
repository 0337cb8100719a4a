package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/accordgo/accord"
)

// ErrDeadLetterNotFound is returned for a dead letter seq that does not
// exist.
var ErrDeadLetterNotFound = errors.New("dead letter not found")

// Dead is the quoted outbox dead-letter table.
func (n Names) Dead() string { return n.Table("outbox_dead") }

func (n Names) nowValue(now time.Time) any {
	if n.Dialect == accord.Postgres {
		return now
	}
	return now.UnixMicro()
}

func (n Names) boolValue(b bool) any {
	if n.Dialect == accord.SQLite {
		if b {
			return 1
		}
		return 0
	}
	return b
}

// BeginTxer is what *sql.DB and *sql.Conn share for transactions.
type BeginTxer interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// MoveToDead moves one outbox row to the dead-letter table in one
// transaction, with its attempt count and last error; parked holds back the
// key's later rows.
// It returns false when the row was gone already, or (owner not "") when
// owner no longer holds the row's lease slot.
func (n Names) MoveToDead(ctx context.Context, db BeginTxer, seq int64, lastErr string, parked bool, now time.Time, owner string) (bool, error) {
	ph := Placeholders(n.Dialect)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback() }()
	args := []any{StorableText(lastErr, MaxErrorLength), n.boolValue(parked), n.nowValue(now), seq}
	fence := ""
	if owner != "" {
		fence = " AND " + n.heldBy("", ph(5))
		args = append(args, owner)
	}
	res, err := tx.ExecContext(ctx, "INSERT INTO "+n.Dead()+
		" (seq, id, topic, partition_key, shard, aggregate_version, payload, metadata, created_at, attempts, last_error, parked, dead_at)"+
		" SELECT seq, id, topic, partition_key, shard, aggregate_version, payload, metadata, created_at, attempts, "+ph(1)+", "+ph(2)+", "+ph(3)+
		" FROM "+n.Outbox()+" WHERE seq = "+ph(4)+fence,
		args...)
	if err != nil {
		return false, err
	}
	if moved, _ := res.RowsAffected(); moved == 0 {
		return false, nil
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM "+n.Outbox()+" WHERE seq = "+ph(1), seq); err != nil {
		return false, err
	}
	return true, tx.Commit()
}

// HasParked reports whether any dead letter holds its key back.
func (n Names) HasParked(ctx context.Context, q Querier) (bool, error) {
	rows, err := q.QueryContext(ctx, "SELECT 1 FROM "+n.Dead()+" WHERE parked = "+n.trueLiteral()+" LIMIT 1")
	if err != nil {
		return false, err
	}
	defer rows.Close()
	found := rows.Next()
	return found, rows.Err()
}

func (n Names) trueLiteral() string {
	if n.Dialect == accord.SQLite {
		return "1"
	}
	return "TRUE"
}

// selectSQLAliased selects the columns scan reads, and extra (", expr" or
// ""), from the outbox aliased o.
func (n Names) selectSQLAliased(extra, where string) string {
	cols := "o.seq, o.id, o.topic, o.partition_key, o.shard, o.aggregate_version, o.payload, o.metadata, o.created_at, o.attempts"
	if n.Dialect == accord.Postgres {
		cols = "o.seq, o.id::text, o.topic, o.partition_key, o.shard, o.aggregate_version, o.payload, o.metadata::text, o.created_at, o.attempts"
	}
	return "SELECT " + cols + extra + " FROM " + n.Outbox() + " " + where
}

// DeadRow is a dead letter.
type DeadRow struct {
	Row
	LastError string
	Parked    bool
	DeadAt    time.Time
}

// ListDead returns up to limit dead letters with seq > after, oldest first.
func (n Names) ListDead(ctx context.Context, q Querier, after int64, limit int) ([]DeadRow, error) {
	ph := Placeholders(n.Dialect)
	cols := "seq, id, topic, partition_key, shard, aggregate_version, payload, metadata, created_at, attempts, last_error, parked, dead_at"
	if n.Dialect == accord.Postgres {
		cols = "seq, id::text, topic, partition_key, shard, aggregate_version, payload, metadata::text, created_at, attempts, last_error, parked, dead_at"
	}
	rs, err := q.QueryContext(ctx, "SELECT "+cols+" FROM "+n.Dead()+" WHERE seq > "+ph(1)+" ORDER BY seq LIMIT "+ph(2), after, limit)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []DeadRow
	for rs.Next() {
		var d DeadRow
		var created, deadAt any
		var parked any
		if err := rs.Scan(&d.Seq, &d.ID, &d.Topic, &d.Key, &d.Shard, &d.Version, &d.Payload, &d.Metadata, &created,
			&d.Attempts, &d.LastError, &parked, &deadAt); err != nil {
			return nil, err
		}
		d.CreatedAt, d.DeadAt = anyTime(created), anyTime(deadAt)
		switch p := parked.(type) {
		case bool:
			d.Parked = p
		case int64:
			d.Parked = p != 0
		case []byte:
			d.Parked = string(p) == "1"
		}
		out = append(out, d)
	}
	return out, rs.Err()
}

func anyTime(v any) time.Time {
	switch c := v.(type) {
	case time.Time:
		return c
	case int64:
		return time.UnixMicro(c).UTC()
	}
	return time.Time{}
}

// RequeueDead moves a dead letter back into the outbox with its original
// seq (so it goes out before the rows of its key that were held back) and
// fresh attempts.
func (n Names) RequeueDead(ctx context.Context, db BeginTxer, seq int64) error {
	ph := Placeholders(n.Dialect)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	overriding := ""
	if n.Dialect == accord.Postgres {
		overriding = " OVERRIDING SYSTEM VALUE"
	}
	res, err := tx.ExecContext(ctx, "INSERT INTO "+n.Outbox()+
		" (seq, id, topic, partition_key, shard, aggregate_version, payload, metadata, created_at)"+overriding+
		" SELECT seq, id, topic, partition_key, shard, aggregate_version, payload, metadata, created_at FROM "+n.Dead()+
		" WHERE seq = "+ph(1), seq)
	if err != nil {
		return err
	}
	if moved, _ := res.RowsAffected(); moved == 0 {
		return fmt.Errorf("%w: seq %d", ErrDeadLetterNotFound, seq)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM "+n.Dead()+" WHERE seq = "+ph(1), seq); err != nil {
		return err
	}
	return tx.Commit()
}

// DropDead deletes a dead letter for good; its key is no longer held back.
func (n Names) DropDead(ctx context.Context, ex Execer, seq int64) error {
	res, err := ex.ExecContext(ctx, "DELETE FROM "+n.Dead()+" WHERE seq = "+Placeholders(n.Dialect)(1), seq)
	if err != nil {
		return err
	}
	if gone, _ := res.RowsAffected(); gone == 0 {
		return fmt.Errorf("%w: seq %d", ErrDeadLetterNotFound, seq)
	}
	return nil
}
