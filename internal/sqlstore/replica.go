package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/accordgo/accord"
)

// ReplicaPosition is one row of replica_position: how far a replica has
// moved for one entity key.
type ReplicaPosition struct {
	Version  int64
	TSMicros int64
	Origin   string
}

// ReplicaParkedRow is one row of replica_parked: a change held back until
// the gap before it fills.
type ReplicaParkedRow struct {
	Version   int64
	MessageID string
	Payload   []byte
	Metadata  []byte // JSON object
	ParkedAt  time.Time
}

// ReplicaGapRow summarizes the parked changes of one key.
type ReplicaGapRow struct {
	Key          string
	FirstVersion int64
	Parked       int
	OldestParked time.Time
}

// replicaTime renders t for a time column: TIMESTAMPTZ on PostgreSQL,
// BIGINT Unix microseconds elsewhere.
func (n Names) replicaTime(t time.Time) any {
	if n.Dialect == accord.Postgres {
		return t.UTC()
	}
	return t.UnixMicro()
}

// replicaScanTime converts a scanned time column (see replicaTime).
func replicaScanTime(v any) time.Time {
	switch c := v.(type) {
	case time.Time:
		return c.UTC()
	case int64:
		return time.UnixMicro(c).UTC()
	case []byte: // MySQL may return aggregates as text
		var t int64
		for _, b := range c {
			if b < '0' || b > '9' {
				return time.Time{}
			}
			t = t*10 + int64(b-'0')
		}
		return time.UnixMicro(t).UTC()
	}
	return time.Time{}
}

// ReplicaLockPosition returns the position of (replica, key) and locks it
// until the end of tx (SELECT ... FOR UPDATE on PostgreSQL and MySQL; SQLite
// serializes writers, and the statement that makes sure the row exists takes
// the write lock first). A missing row is created at version 0, so that
// concurrent transactions on a new key queue on the same row lock.
func (n Names) ReplicaLockPosition(ctx context.Context, tx *sql.Tx, replica, key string, now time.Time) (ReplicaPosition, error) {
	t := n.Table("replica_position")
	ph := Placeholders(n.Dialect)
	sel := "SELECT version, ts_micros, origin FROM " + t + " WHERE replica = " + ph(1) + " AND entity_key = " + ph(2)
	if n.Dialect != accord.SQLite {
		sel += " FOR UPDATE"
	}
	read := func() (ReplicaPosition, bool, error) {
		var p ReplicaPosition
		err := tx.QueryRowContext(ctx, sel, replica, key).Scan(&p.Version, &p.TSMicros, &p.Origin)
		if errors.Is(err, sql.ErrNoRows) {
			return p, false, nil
		}
		return p, err == nil, err
	}
	ensure := func() error {
		var q string
		switch n.Dialect {
		case accord.MySQL:
			// A locking read of a missing key takes a gap lock on MySQL,
			// and two transactions holding it deadlock on insert: upsert
			// first, which locks the row whether it existed or not.
			q = "INSERT INTO " + t + " (replica, entity_key, version, ts_micros, origin, updated_at) VALUES (?, ?, 0, 0, '', ?) ON DUPLICATE KEY UPDATE version = version"
		default:
			q = "INSERT INTO " + t + " (replica, entity_key, version, ts_micros, origin, updated_at) VALUES (" +
				ph(1) + ", " + ph(2) + ", 0, 0, '', " + ph(3) + ") ON CONFLICT (replica, entity_key) DO NOTHING"
		}
		_, err := tx.ExecContext(ctx, q, replica, key, n.replicaTime(now))
		return err
	}
	if n.Dialect == accord.Postgres {
		// No gap locks on PostgreSQL: read first, create only if missing.
		if p, ok, err := read(); err != nil || ok {
			return p, err
		}
	}
	if err := ensure(); err != nil {
		return ReplicaPosition{}, err
	}
	p, ok, err := read()
	if err == nil && !ok {
		err = errors.New("replica position row vanished after insert")
	}
	return p, err
}

// ReplicaReadPosition reads the position of (replica, key) without locking.
// A key never applied reads as the zero position.
func (n Names) ReplicaReadPosition(ctx context.Context, q RowQuerier, replica, key string) (ReplicaPosition, error) {
	ph := Placeholders(n.Dialect)
	var p ReplicaPosition
	err := q.QueryRowContext(ctx, "SELECT version, ts_micros, origin FROM "+n.Table("replica_position")+
		" WHERE replica = "+ph(1)+" AND entity_key = "+ph(2), replica, key).Scan(&p.Version, &p.TSMicros, &p.Origin)
	if errors.Is(err, sql.ErrNoRows) {
		return ReplicaPosition{}, nil
	}
	return p, err
}

// ReplicaSetPosition writes the position of (replica, key); the row must
// exist (ReplicaLockPosition creates it).
func (n Names) ReplicaSetPosition(ctx context.Context, ex Execer, replica, key string, p ReplicaPosition, now time.Time) error {
	ph := Placeholders(n.Dialect)
	_, err := ex.ExecContext(ctx, "UPDATE "+n.Table("replica_position")+" SET version = "+ph(1)+", ts_micros = "+ph(2)+
		", origin = "+ph(3)+", updated_at = "+ph(4)+" WHERE replica = "+ph(5)+" AND entity_key = "+ph(6),
		p.Version, p.TSMicros, p.Origin, n.replicaTime(now), replica, key)
	return err
}

// ReplicaPark stores a change that arrived ahead of a gap. It reports false
// if a change with that version is parked already (and leaves it alone).
// The caller holds the key's position lock (ReplicaLockPosition), so no
// other transaction parks for the key at the same time.
func (n Names) ReplicaPark(ctx context.Context, tx *sql.Tx, replica, key string, r ReplicaParkedRow) (bool, error) {
	ph := Placeholders(n.Dialect)
	t := n.Table("replica_parked")
	var one int
	err := tx.QueryRowContext(ctx, "SELECT 1 FROM "+t+" WHERE replica = "+ph(1)+" AND entity_key = "+ph(2)+" AND version = "+ph(3),
		replica, key, r.Version).Scan(&one)
	switch {
	case err == nil:
		return false, nil
	case !errors.Is(err, sql.ErrNoRows):
		return false, err
	}
	mdArg := ph(6)
	if n.Dialect == accord.Postgres {
		mdArg += "::jsonb"
	}
	payload := r.Payload
	if payload == nil {
		payload = []byte{}
	}
	metadata := string(r.Metadata)
	if metadata == "" {
		metadata = "{}"
	}
	_, err = tx.ExecContext(ctx, "INSERT INTO "+t+" (replica, entity_key, version, message_id, payload, metadata, parked_at) VALUES ("+
		ph(1)+", "+ph(2)+", "+ph(3)+", "+ph(4)+", "+ph(5)+", "+mdArg+", "+ph(7)+")",
		replica, key, r.Version, r.MessageID, payload, metadata, n.replicaTime(r.ParkedAt))
	return err == nil, err
}

// ReplicaParked returns up to limit parked changes of (replica, key) with a
// version above after, in version order.
func (n Names) ReplicaParked(ctx context.Context, q Querier, replica, key string, after int64, limit int) ([]ReplicaParkedRow, error) {
	ph := Placeholders(n.Dialect)
	md := "metadata"
	if n.Dialect == accord.Postgres {
		md = "metadata::text"
	}
	rows, err := q.QueryContext(ctx, "SELECT version, message_id, payload, "+md+", parked_at FROM "+n.Table("replica_parked")+
		" WHERE replica = "+ph(1)+" AND entity_key = "+ph(2)+" AND version > "+ph(3)+" ORDER BY version LIMIT "+ph(4),
		replica, key, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ReplicaParkedRow
	for rows.Next() {
		var r ReplicaParkedRow
		var parked any
		if err := rows.Scan(&r.Version, &r.MessageID, &r.Payload, &r.Metadata, &parked); err != nil {
			return nil, err
		}
		r.ParkedAt = replicaScanTime(parked)
		out = append(out, r)
	}
	return out, rows.Err()
}

// ReplicaDeleteParked removes the parked changes of (replica, key) with
// from <= version <= to and returns how many it removed.
func (n Names) ReplicaDeleteParked(ctx context.Context, ex Execer, replica, key string, from, to int64) (int64, error) {
	ph := Placeholders(n.Dialect)
	res, err := ex.ExecContext(ctx, "DELETE FROM "+n.Table("replica_parked")+" WHERE replica = "+ph(1)+
		" AND entity_key = "+ph(2)+" AND version >= "+ph(3)+" AND version <= "+ph(4), replica, key, from, to)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// ReplicaGaps returns, oldest first and at most limit, the keys of replica
// whose oldest parked change was parked before cutoff.
func (n Names) ReplicaGaps(ctx context.Context, q Querier, replica string, cutoff time.Time, limit int) ([]ReplicaGapRow, error) {
	ph := Placeholders(n.Dialect)
	rows, err := q.QueryContext(ctx, "SELECT entity_key, MIN(version), COUNT(*), MIN(parked_at) FROM "+n.Table("replica_parked")+
		" WHERE replica = "+ph(1)+" GROUP BY entity_key HAVING MIN(parked_at) < "+ph(2)+
		" ORDER BY MIN(parked_at), entity_key LIMIT "+ph(3), replica, n.replicaTime(cutoff), limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ReplicaGapRow
	for rows.Next() {
		var g ReplicaGapRow
		var oldest any
		if err := rows.Scan(&g.Key, &g.FirstVersion, &g.Parked, &oldest); err != nil {
			return nil, err
		}
		g.OldestParked = replicaScanTime(oldest)
		out = append(out, g)
	}
	return out, rows.Err()
}
