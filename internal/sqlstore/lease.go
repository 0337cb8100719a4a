package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/accordgo/accord"
)

// LeaseSlots is the number of lease slots the outbox's shards are grouped
// into: a row belongs to slot shard % LeaseSlots.
const LeaseSlots = 64

// Lease returns the quoted name of the relay lease table.
func (n Names) Lease() string { return n.Table("relay_lease") }

// Instance returns the quoted name of the relay instance (heartbeat) table.
func (n Names) Instance() string { return n.Table("relay_instance") }

// nowMS is the SQL expression of the database clock in Unix milliseconds.
func (n Names) nowMS() string {
	switch n.Dialect {
	case accord.Postgres:
		return "(extract(epoch from clock_timestamp()) * 1000)::bigint"
	case accord.MySQL:
		return "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000 AS SIGNED)"
	default:
		return "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
	}
}

// LeaseRow is one row of the lease table.
type LeaseRow struct {
	Slot        int
	Owner       string
	Epoch       int64
	ExpiresAtMS int64
}

// LeaseState returns every lease (by slot) and the database clock.
func (n Names) LeaseState(ctx context.Context, q Querier) ([]LeaseRow, int64, error) {
	rs, err := q.QueryContext(ctx, "SELECT slot, owner, epoch, expires_at_ms, "+n.nowMS()+" FROM "+n.Lease()+" ORDER BY slot")
	if err != nil {
		return nil, 0, err
	}
	defer rs.Close()
	var out []LeaseRow
	var now int64
	for rs.Next() {
		var l LeaseRow
		if err := rs.Scan(&l.Slot, &l.Owner, &l.Epoch, &l.ExpiresAtMS, &now); err != nil {
			return nil, 0, err
		}
		out = append(out, l)
	}
	return out, now, rs.Err()
}

// Heartbeat records that instance id is alive for ttlMS more milliseconds
// and returns the ids of the live instances (including id), sorted.
func (n Names) Heartbeat(ctx context.Context, db SQLHandle, id string, ttlMS int64) ([]string, error) {
	ph := Placeholders(n.Dialect)
	now := n.nowMS()
	var upsert string
	switch n.Dialect {
	case accord.MySQL:
		upsert = "INSERT INTO " + n.Instance() + " (id, started_at_ms, expires_at_ms) VALUES (" + ph(1) + ", " + now + ", " + now + " + " + ph(2) +
			") ON DUPLICATE KEY UPDATE expires_at_ms = VALUES(expires_at_ms)"
	default:
		upsert = "INSERT INTO " + n.Instance() + " (id, started_at_ms, expires_at_ms) VALUES (" + ph(1) + ", " + now + ", " + now + " + " + ph(2) +
			") ON CONFLICT (id) DO UPDATE SET expires_at_ms = excluded.expires_at_ms"
	}
	if _, err := db.ExecContext(ctx, upsert, id, ttlMS); err != nil {
		return nil, err
	}
	// Instances gone for a minute are forgotten.
	if _, err := db.ExecContext(ctx, "DELETE FROM "+n.Instance()+" WHERE expires_at_ms < "+now+" - 60000"); err != nil {
		return nil, err
	}
	return scanColumn[string](db.QueryContext(ctx, "SELECT id FROM "+n.Instance()+" WHERE expires_at_ms > "+now+" ORDER BY id"))
}

// scanColumn returns the values of a one-column result.
func scanColumn[T any](rs *sql.Rows, err error) ([]T, error) {
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []T
	for rs.Next() {
		var v T
		if err := rs.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rs.Err()
}

// RemoveInstance deletes instance id's heartbeat row.
func (n Names) RemoveInstance(ctx context.Context, ex Execer, id string) error {
	_, err := ex.ExecContext(ctx, "DELETE FROM "+n.Instance()+" WHERE id = "+Placeholders(n.Dialect)(1), id)
	return err
}

// RenewLeases extends every lease owner still holds (not expired) by ttlMS
// from now.
func (n Names) RenewLeases(ctx context.Context, ex Execer, owner string, ttlMS int64) error {
	ph := Placeholders(n.Dialect)
	now := n.nowMS()
	_, err := ex.ExecContext(ctx, "UPDATE "+n.Lease()+" SET expires_at_ms = "+now+" + "+ph(1)+
		" WHERE owner = "+ph(2)+" AND expires_at_ms > "+now, ttlMS, owner)
	return err
}

// AcquireLeases takes, for owner, those of slots that are free or expired
// (each at its epoch + 1) and returns how many it took; LeaseState tells
// which. The slots are integers rendered into the SQL text.
func (n Names) AcquireLeases(ctx context.Context, ex Execer, slots []int, owner string, ttlMS int64) (int64, error) {
	if len(slots) == 0 {
		return 0, nil
	}
	ph := Placeholders(n.Dialect)
	now := n.nowMS()
	res, err := ex.ExecContext(ctx, "UPDATE "+n.Lease()+" SET owner = "+ph(1)+", epoch = epoch + 1, expires_at_ms = "+now+" + "+ph(2)+
		" WHERE slot IN ("+intList(slots)+") AND expires_at_ms <= "+now, owner, ttlMS)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// ReleaseLeases frees those of slots that owner holds.
func (n Names) ReleaseLeases(ctx context.Context, ex Execer, slots []int, owner string) error {
	if len(slots) == 0 {
		return nil
	}
	_, err := ex.ExecContext(ctx, "UPDATE "+n.Lease()+" SET owner = '', expires_at_ms = 0 WHERE owner = "+Placeholders(n.Dialect)(1)+
		" AND slot IN ("+intList(slots)+")", owner)
	return err
}

func intList(v []int) string {
	parts := make([]string, len(v))
	for i, s := range v {
		parts[i] = strconv.Itoa(s)
	}
	return strings.Join(parts, ", ")
}

// ReleaseAll frees every slot owner holds.
func (n Names) ReleaseAll(ctx context.Context, ex Execer, owner string) error {
	_, err := ex.ExecContext(ctx, "UPDATE "+n.Lease()+" SET owner = '', expires_at_ms = 0 WHERE owner = "+Placeholders(n.Dialect)(1), owner)
	return err
}

// heldBy is the condition, on an outbox row aliased as alias (or unaliased
// when alias is ""), that its slot's lease is held by the owner bound at
// placeholder p and not expired by the database clock.
func (n Names) heldBy(alias, p string) string {
	col := "shard"
	if alias != "" {
		col = alias + ".shard"
	}
	held := "SELECT slot FROM " + n.Lease() + " WHERE owner = " + p + " AND expires_at_ms > " + n.nowMS()
	if n.Dialect == accord.Postgres {
		// An init plan evaluated once: the outbox is still read by its
		// primary key, whatever plan the prepared statement gets.
		return col + " % " + strconv.Itoa(LeaseSlots) + " = ANY(ARRAY(" + held + "))"
	}
	return col + " % " + strconv.Itoa(LeaseSlots) + " IN (" + held + ")"
}

// slotFilter is the condition that an outbox row (alias.shard) is in one of
// slots; "" when slots is nil (every slot). The slots are integers rendered
// into the SQL text: they never come from user input.
func slotFilter(alias string, slots []int) string {
	if slots == nil {
		return ""
	}
	col := "shard"
	if alias != "" {
		col = alias + ".shard"
	}
	if len(slots) == 0 {
		return " AND 1 = 0"
	}
	return " AND " + col + " % " + strconv.Itoa(LeaseSlots) + " IN (" + intList(slots) + ")"
}

// DeleteFenced removes the rows with the given seqs whose slot's lease
// owner still holds, and returns how many it removed. owner "" removes them
// unconditionally (a relay without leases).
func (n Names) DeleteFenced(ctx context.Context, ex Execer, seqs []int64, owner string) (int64, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	fence := func(p string) string {
		if owner == "" {
			return ""
		}
		return " AND " + n.heldBy("", p)
	}
	var total int64
	exec := func(q string, args ...any) error {
		if owner != "" {
			args = append(args, owner)
		}
		res, err := ex.ExecContext(ctx, q, args...)
		if err != nil {
			return err
		}
		k, err := res.RowsAffected()
		total += k
		return err
	}
	switch n.Dialect {
	case accord.Postgres:
		return total, exec("DELETE FROM "+n.Outbox()+" WHERE seq = ANY($1::int8[])"+fence("$2"), seqs)
	case accord.SQLite:
		js, _ := json.Marshal(seqs)
		return total, exec("DELETE FROM "+n.Outbox()+" WHERE seq IN (SELECT value FROM json_each(?))"+fence("?"), string(js))
	case accord.MySQL:
		for start := 0; start < len(seqs); start += sqliteChunk {
			in, args := seqIn(seqs[start:min(start+sqliteChunk, len(seqs))])
			q := "DELETE FROM " + n.Outbox() + " WHERE seq " + in + fence("?")
			if err := exec(q, args...); err != nil {
				return total, err
			}
		}
		return total, nil
	}
	return 0, n.Dialect.Validate()
}

// ReadOpts narrows a read of the outbox.
type ReadOpts struct {
	// Slots, when not nil, limits the read to rows of these lease slots.
	Slots []int
	// Unparked leaves out the rows of keys held back by a parked dead
	// letter.
	Unparked bool
	// Thin returns the rows Slots and Unparked leave out too, as thin rows
	// (Row.Thin: sequence number and shard only), so that the caller sees
	// every number the table shows. limit counts them.
	Thin bool
	// Settle (MySQL only, the outbox's inserted_at column) makes every row
	// report in Row.Settling how much longer it has to wait until it was
	// inserted Settle ago, on the database's clock. 0: no such column read.
	Settle time.Duration
}

// settleCol is the extra column a read with o returns ("" for none): the
// microseconds until the row is o.Settle old.
func (n Names) settleCol(o ReadOpts) string {
	if o.Settle <= 0 || n.Dialect != accord.MySQL {
		return ""
	}
	return ", GREATEST(0, " + strconv.FormatInt(o.Settle.Microseconds(), 10) +
		" - TIMESTAMPDIFF(MICROSECOND, o.inserted_at, UTC_TIMESTAMP(6)))"
}

// readCond is the condition, on an outbox row aliased o, that o (Slots
// and Unparked) keeps it; "" when it keeps every row.
func (n Names) readCond(o ReadOpts) string {
	var cond []string
	if o.Slots != nil {
		cond = append(cond, strings.TrimPrefix(slotFilter("o", o.Slots), " AND "))
	}
	if o.Unparked {
		cond = append(cond, "NOT EXISTS (SELECT 1 FROM "+n.Dead()+" d WHERE d.parked = "+n.trueLiteral()+
			" AND d.partition_key = o.partition_key)")
	}
	return strings.Join(cond, " AND ")
}

// Read returns up to limit rows with seq > after, in seq order, narrowed by
// o.
func (n Names) Read(ctx context.Context, q Querier, after int64, limit int, o ReadOpts) ([]Row, error) {
	ph := Placeholders(n.Dialect)
	tail := " ORDER BY o.seq LIMIT " + ph(2)
	mine := n.readCond(o)
	extra := n.settleCol(o)
	if mine == "" {
		return n.scan(q.QueryContext(ctx, n.selectSQLAliased(extra, "o WHERE o.seq > "+ph(1)+tail), after, limit))
	}
	if !o.Thin {
		return n.scan(q.QueryContext(ctx, n.selectSQLAliased(extra, "o WHERE o.seq > "+ph(1)+" AND "+mine+tail), after, limit))
	}
	// Thin rows: an empty topic (a real row's topic is never empty).
	thin := func(col, empty string) string {
		return "CASE WHEN " + mine + " THEN " + col + " ELSE " + empty + " END"
	}
	id, md, payload := "o.id", "o.metadata", "''"
	if n.Dialect == accord.Postgres {
		id, md, payload = "o.id::text", "o.metadata::text", "'\\x'::bytea"
	}
	cols := "o.seq, " + thin(id, "''") + ", " + thin("o.topic", "''") + ", " + thin("o.partition_key", "''") + ", o.shard, " +
		thin("o.aggregate_version", "NULL") + ", " + thin("o.payload", payload) + ", " + thin(md, "'{}'") + ", o.created_at, o.attempts" + extra
	rows, err := n.scan(q.QueryContext(ctx, "SELECT "+cols+" FROM "+n.Outbox()+" o WHERE o.seq > "+ph(1)+tail, after, limit))
	for i := range rows {
		rows[i].Thin = rows[i].Topic == ""
	}
	return rows, err
}

// ReadSeqs returns up to limit rows with seq > after, in seq order, as
// thin rows (sequence numbers only), narrowed by o like Read: a light first
// step for a reader that already holds many of the rows. With o.Thin, the
// rows o leaves out come back too, marked Row.Thin; the others have Thin
// false (fetch them with ReadSeqRows).
func (n Names) ReadSeqs(ctx context.Context, q Querier, after int64, limit int, o ReadOpts) ([]Row, error) {
	ph := Placeholders(n.Dialect)
	cond := n.readCond(o)
	left, where := "0", "o WHERE o.seq > "+ph(1)
	switch {
	case cond != "" && o.Thin:
		left = "CASE WHEN " + cond + " THEN 0 ELSE 1 END"
	case cond != "":
		where += " AND " + cond
	}
	rs, err := q.QueryContext(ctx, "SELECT o.seq, "+left+" FROM "+n.Outbox()+" "+where+" ORDER BY o.seq LIMIT "+ph(2), after, limit)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []Row
	for rs.Next() {
		var r Row
		var thin int
		if err := rs.Scan(&r.Seq, &thin); err != nil {
			return nil, err
		}
		r.Thin = thin != 0
		out = append(out, r)
	}
	return out, rs.Err()
}

// ReadSeqRows returns the rows with the given sequence numbers that still
// exist, in sequence order, with Row.Settling by o.Settle (o's other fields
// are ignored: the caller chose the numbers with ReadSeqs).
func (n Names) ReadSeqRows(ctx context.Context, q Querier, seqs []int64, o ReadOpts) ([]Row, error) {
	var out []Row
	extra := n.settleCol(o)
	for start := 0; start < len(seqs); start += sqliteChunk {
		chunk := seqs[start:min(start+sqliteChunk, len(seqs))]
		var rows []Row
		var err error
		if n.Dialect == accord.Postgres {
			rows, err = n.scan(q.QueryContext(ctx, n.selectSQLAliased(extra, "o WHERE o.seq = ANY($1::int8[]) ORDER BY o.seq"), chunk))
		} else {
			in, args := seqIn(chunk)
			rows, err = n.scan(q.QueryContext(ctx, n.selectSQLAliased(extra, "o WHERE o.seq "+in+" ORDER BY o.seq"), args...))
		}
		if err != nil {
			return nil, err
		}
		out = append(out, rows...)
	}
	return out, nil
}

// seqIn renders "IN (?, ...)" for seqs (MySQL, SQLite) and its arguments.
func seqIn(seqs []int64) (string, []any) {
	args := make([]any, len(seqs))
	for i, s := range seqs {
		args[i] = s
	}
	return "IN (?" + strings.Repeat(", ?", len(seqs)-1) + ")", args
}
