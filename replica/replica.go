package replica

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/accordgo/accord/internal/sqlstore"
)

// Outcome is what a [Replica] did with a change.
type Outcome int

const (
	// Applied means the change was applied and the key's position moved to
	// it (BySequence: and the parked changes that followed it were applied
	// too).
	Applied Outcome = iota + 1
	// Stale means the change was skipped: the replica already holds it or
	// something newer (or, BySequence, holds it parked). Nothing changed.
	Stale
	// Gap means the change was applied although versions before it are
	// missing (ByVersion with ApplyAndReport); the missing ones will be
	// Stale if they arrive.
	Gap
	// Rejected means the change was not applied because versions before it
	// are missing (ByVersion with Reject); the error wraps [ErrGap].
	Rejected
	// Parked means the change arrived ahead of a gap and was stored, not
	// applied (BySequence); it is applied when the gap fills.
	Parked
)

// String returns "applied", "stale", "gap", "rejected" or "parked".
func (o Outcome) String() string {
	switch o {
	case Applied:
		return "applied"
	case Stale:
		return "stale"
	case Gap:
		return "gap"
	case Rejected:
		return "rejected"
	case Parked:
		return "parked"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// ApplyFunc applies one change to the replica's own tables through tx, the
// transaction that also moves the key's position, so that both commit
// together. It must not commit or roll back tx; an error rolls the change
// back (ApplyTx returns it, wrapped).
//
// It is called once per change, in order per key: several times in one
// ApplyTx when parked changes follow the one applied (BySequence), and once
// more when [Replica.Apply] retries after a deadlock, in a new transaction.
type ApplyFunc func(ctx context.Context, tx *sql.Tx, c Change) error

// Replica applies changes to a local replica only if they are newer than
// what it holds, by its Mode, keeping a position per key in the
// replica_position table. It holds no state besides its configuration: one
// Replica serves every goroutine, and several processes may apply to the
// same replica concurrently (the position row is locked per key).
type Replica struct {
	db    *sql.DB
	cfg   *Config
	names sqlstore.Names
	apply ApplyFunc
	log   *slog.Logger
}

// New validates cfg and returns a Replica on db, the replica's database,
// that applies changes with apply. Errors wrap ErrInvalidConfig and name
// each problem.
func New(db *sql.DB, cfg *Config, apply ApplyFunc) (*Replica, error) {
	cfg = cfg.WithDefaults()
	err := cfg.validate()
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	if db == nil {
		errs = append(errs, fmt.Errorf("%w: db is nil", ErrInvalidConfig))
	}
	if apply == nil {
		errs = append(errs, fmt.Errorf("%w: apply (the ApplyFunc) is nil", ErrInvalidConfig))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	names, _ := sqlstore.NewNames(cfg.Dialect, cfg.Schema, cfg.TablePrefix)
	return &Replica{
		db:    db,
		cfg:   cfg,
		names: names,
		apply: apply,
		log:   cfg.Logger.With("component", "accord.replica", "replica", cfg.Name, "mode", cfg.Mode.String()),
	}, nil
}

// Name returns Config.Name.
func (r *Replica) Name() string { return r.cfg.Name }

// Mode returns Config.Mode.
func (r *Replica) Mode() Mode { return r.cfg.Mode }

// ApplyTx applies c in tx, the caller's transaction, if it is newer than
// what the replica holds for c.Key, and returns what it did. It composes
// with the inbox: call it from an inbox handler, so that the inbox row, the
// replica's tables and its position commit together.
//
// It locks the key's position row until tx ends (SELECT ... FOR UPDATE on
// PostgreSQL and MySQL; SQLite serializes writers), so concurrent appliers
// of one key take turns, and decides by Mode:
//
//   - Applied: calls the ApplyFunc and moves the position to c. In
//     BySequence mode it then applies, in order and in tx, the parked
//     changes that now follow without a gap, and deletes them.
//   - Stale: the replica holds c or something newer; nothing is applied.
//   - Gap (ByVersion, ApplyAndReport): versions are missing before c; c is
//     applied as with Applied and the gap is reported.
//   - Rejected (ByVersion, Reject): versions are missing before c; nothing
//     is applied and the error wraps [ErrGap]: roll back and let the change
//     be redelivered.
//   - Parked (BySequence): sequence numbers are missing before c; c is
//     stored in replica_parked, nothing is applied.
//
// Under REPEATABLE READ or SERIALIZABLE on PostgreSQL, a key changed by a
// transaction that committed after tx began fails tx with a serialization
// error: run it again (the default READ COMMITTED waits for the lock).
//
// A change that cannot be applied as given returns an error for which
// [IsInvalidChange] is true, before anything is written. An error from the
// ApplyFunc or the database is returned wrapped; tx must then be rolled
// back. Decisions are logged and reported to the Observer before ApplyTx
// returns, unless it returns an error other than a rejection (see
// [Observer] about rollbacks).
func (r *Replica) ApplyTx(ctx context.Context, tx *sql.Tx, c Change) (Outcome, error) {
	var ns notices
	o, err := r.applyTx(ctx, tx, c, &ns)
	if err == nil || errors.Is(err, ErrGap) {
		r.report(ctx, ns)
	}
	return o, err
}

// applyAttempts bounds how often Apply runs a change whose transaction
// failed on a deadlock or serialization failure.
const applyAttempts = 5

// Apply is [Replica.ApplyTx] in a transaction of its own on the Replica's
// database, committed before it returns. A transaction that fails on a
// deadlock, a serialization failure or a busy SQLite database is retried
// (up to 5 times, with a short pause); the ApplyFunc then runs again. The
// Observer hears of the outcome after the commit.
func (r *Replica) Apply(ctx context.Context, c Change) (Outcome, error) {
	if err := c.check(r.cfg.Mode); err != nil {
		return 0, err
	}
	for attempt := 1; ; attempt++ {
		o, ns, err := r.applyOnce(ctx, c)
		if err == nil || errors.Is(err, ErrGap) {
			r.report(ctx, ns)
			return o, err
		}
		if attempt == applyAttempts || !isTransient(err) || ctx.Err() != nil {
			return 0, err
		}
		r.log.DebugContext(ctx, "retrying change after a transient database error",
			"key", c.Key, "version", c.Version, "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
			return 0, err
		case <-time.After(time.Duration(attempt*attempt) * 5 * time.Millisecond):
		}
	}
}

func (r *Replica) applyOnce(ctx context.Context, c Change) (Outcome, notices, error) {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("accord replica %s: begin: %w", r.cfg.Name, err)
	}
	var ns notices
	o, err := r.applyTx(ctx, tx, c, &ns)
	if err != nil {
		_ = tx.Rollback()
		return o, ns, err
	}
	if err := tx.Commit(); err != nil {
		return 0, nil, fmt.Errorf("accord replica %s: commit %s: %w", r.cfg.Name, c.describe(), err)
	}
	return o, ns, nil
}

// Position returns how far the replica has moved for key: the version or
// sequence number of the last change applied (ByTimestamp: the Version the
// winning change carried, if any), its timestamp and its origin. A key never
// applied returns zeros and no error.
func (r *Replica) Position(ctx context.Context, key string) (version int64, ts time.Time, origin string, err error) {
	p, err := r.names.ReplicaReadPosition(ctx, r.db, r.cfg.Name, key)
	if err != nil {
		return 0, time.Time{}, "", fmt.Errorf("accord replica %s: read position of key %q: %w", r.cfg.Name, key, err)
	}
	origin, _ = decodeOrigin(p.Origin)
	return p.Version, microsTime(p.TSMicros), origin, nil
}

// PositionTx is [Replica.Position] read through tx, the caller's
// transaction (on SQLite, whose pool has one connection, reading through
// the pool inside a transaction would wait for that transaction).
func (r *Replica) PositionTx(ctx context.Context, tx *sql.Tx, key string) (version int64, ts time.Time, origin string, err error) {
	p, err := r.names.ReplicaReadPosition(ctx, tx, r.cfg.Name, key)
	if err != nil {
		return 0, time.Time{}, "", fmt.Errorf("accord replica %s: read position of key %q: %w", r.cfg.Name, key, err)
	}
	origin, _ = decodeOrigin(p.Origin)
	return p.Version, microsTime(p.TSMicros), origin, nil
}

// applyTx is ApplyTx, collecting what to report in ns.
func (r *Replica) applyTx(ctx context.Context, tx *sql.Tx, c Change, ns *notices) (Outcome, error) {
	if tx == nil {
		return 0, fmt.Errorf("accord replica %s: tx is nil", r.cfg.Name)
	}
	if err := c.check(r.cfg.Mode); err != nil {
		return 0, err
	}
	now := r.cfg.Now()
	pos, err := r.names.ReplicaLockPosition(ctx, tx, r.cfg.Name, c.Key, now)
	if err != nil {
		return 0, r.dbErr("lock the position of key "+quote(c.Key), err)
	}
	ob := r.observation(c, pos)
	switch r.cfg.Mode {
	case ByVersion:
		return r.byVersion(ctx, tx, c, pos, ob, ns)
	case BySequence:
		return r.bySequence(ctx, tx, c, pos, ob, ns)
	default:
		return r.byTimestamp(ctx, tx, c, pos, ob, ns)
	}
}

func (r *Replica) byVersion(ctx context.Context, tx *sql.Tx, c Change, pos sqlstore.ReplicaPosition, ob Observation, ns *notices) (Outcome, error) {
	switch {
	case c.Version <= pos.Version:
		ob.Outcome = Stale
		ns.add(kindStale, ob)
		return Stale, nil
	case c.Version == pos.Version+1:
		if err := r.applyAndMove(ctx, tx, c); err != nil {
			return 0, err
		}
		ob.Outcome = Applied
		ns.add(kindApplied, ob)
		return Applied, nil
	}
	if r.cfg.GapPolicy == Reject {
		ob.Outcome = Rejected
		ns.add(kindGap, ob)
		return Rejected, fmt.Errorf("%w: %s: version %d, the replica %s is at %d (versions %d to %d missing)",
			ErrGap, c.describe(), c.Version, r.cfg.Name, pos.Version, pos.Version+1, c.Version-1)
	}
	if err := r.applyAndMove(ctx, tx, c); err != nil {
		return 0, err
	}
	ob.Outcome = Gap
	ns.add(kindApplied, ob)
	ns.add(kindGap, ob)
	return Gap, nil
}

func (r *Replica) bySequence(ctx context.Context, tx *sql.Tx, c Change, pos sqlstore.ReplicaPosition, ob Observation, ns *notices) (Outcome, error) {
	switch {
	case c.Version <= pos.Version:
		ob.Outcome = Stale
		ns.add(kindStale, ob)
		return Stale, nil
	case c.Version > pos.Version+1:
		row, err := c.parkedRow(r.cfg.Now())
		if err != nil {
			return 0, err
		}
		inserted, err := r.names.ReplicaPark(ctx, tx, r.cfg.Name, c.Key, row)
		if err != nil {
			return 0, r.dbErr("park "+c.describe(), err)
		}
		if !inserted {
			ob.Outcome = Stale
			ns.add(kindStale, ob)
			return Stale, nil
		}
		ob.Outcome = Parked
		ns.add(kindParked, ob)
		return Parked, nil
	}
	if err := r.callApply(ctx, tx, c); err != nil {
		return 0, err
	}
	ob.Outcome = Applied
	ns.add(kindApplied, ob)
	next, err := r.drain(ctx, tx, c.Key, positionOf(c), ns)
	if err != nil {
		return 0, err
	}
	if err := r.setPosition(ctx, tx, c.Key, next); err != nil {
		return 0, err
	}
	return Applied, nil
}

func (r *Replica) byTimestamp(ctx context.Context, tx *sql.Tx, c Change, pos sqlstore.ReplicaPosition, ob Observation, ns *notices) (Outcome, error) {
	if pos.TSMicros != 0 || pos.Origin != "" {
		curOrigin, curID := decodeOrigin(pos.Origin)
		if compareLWW(c.micros(), c.Origin, c.messageID(), pos.TSMicros, curOrigin, curID) <= 0 {
			ob.Outcome = Stale
			ns.add(kindStale, ob)
			return Stale, nil
		}
	}
	if err := r.applyAndMove(ctx, tx, c); err != nil {
		return 0, err
	}
	ob.Outcome = Applied
	ns.add(kindApplied, ob)
	return Applied, nil
}

// compareLWW orders two writes by (timestamp, origin, message id),
// comparing strings byte by byte, so that the order does not depend on the
// database's collation.
func compareLWW(ts int64, origin, id string, curTS int64, curOrigin, curID string) int {
	switch {
	case ts != curTS:
		if ts < curTS {
			return -1
		}
		return 1
	case origin != curOrigin:
		return strings.Compare(origin, curOrigin)
	}
	return strings.Compare(id, curID)
}

// drain applies, in order, the parked changes of key that follow pos
// without a gap, deletes them (and any parked change pos already covers),
// and returns the new position.
func (r *Replica) drain(ctx context.Context, tx *sql.Tx, key string, pos sqlstore.ReplicaPosition, ns *notices) (sqlstore.ReplicaPosition, error) {
	for {
		rows, err := r.names.ReplicaParked(ctx, tx, r.cfg.Name, key, 0, drainBatch)
		if err != nil {
			return pos, r.dbErr("read the parked changes of key "+quote(key), err)
		}
		if len(rows) == 0 {
			return pos, nil
		}
		done := -1 // index of the last row applied or covered
		for i, row := range rows {
			if row.Version > pos.Version+1 {
				break
			}
			done = i
			if row.Version <= pos.Version {
				continue // covered by a resync or applied already
			}
			c, err := changeFromParked(key, row)
			if err != nil {
				return pos, fmt.Errorf("accord replica %s: %w", r.cfg.Name, err)
			}
			ob := r.observation(c, pos)
			if err := r.callApply(ctx, tx, c); err != nil {
				return pos, err
			}
			ob.Outcome, ob.Drained = Applied, true
			ns.add(kindApplied, ob)
			pos = positionOf(c)
		}
		if done < 0 {
			return pos, nil
		}
		if _, err := r.names.ReplicaDeleteParked(ctx, tx, r.cfg.Name, key, rows[0].Version, rows[done].Version); err != nil {
			return pos, r.dbErr("delete the parked changes of key "+quote(key), err)
		}
		if done < len(rows)-1 || len(rows) < drainBatch {
			return pos, nil
		}
	}
}

// drainBatch is how many parked changes drain reads at a time.
const drainBatch = 100

func positionOf(c Change) sqlstore.ReplicaPosition {
	return sqlstore.ReplicaPosition{Version: c.Version, TSMicros: c.micros(), Origin: encodeOrigin(c.Origin, c.messageID())}
}

func (r *Replica) applyAndMove(ctx context.Context, tx *sql.Tx, c Change) error {
	if err := r.callApply(ctx, tx, c); err != nil {
		return err
	}
	return r.setPosition(ctx, tx, c.Key, positionOf(c))
}

func (r *Replica) callApply(ctx context.Context, tx *sql.Tx, c Change) error {
	if err := r.apply(ctx, tx, c); err != nil {
		return fmt.Errorf("accord replica %s: apply %s, version %d: %w", r.cfg.Name, c.describe(), c.Version, err)
	}
	return nil
}

func (r *Replica) setPosition(ctx context.Context, tx *sql.Tx, key string, p sqlstore.ReplicaPosition) error {
	if err := r.names.ReplicaSetPosition(ctx, tx, r.cfg.Name, key, p, r.cfg.Now()); err != nil {
		return r.dbErr("move the position of key "+quote(key), err)
	}
	return nil
}

func (r *Replica) dbErr(what string, err error) error {
	return fmt.Errorf("accord replica %s: %s: %w", r.cfg.Name, what, err)
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

func (r *Replica) observation(c Change, pos sqlstore.ReplicaPosition) Observation {
	origin, _ := decodeOrigin(pos.Origin)
	return Observation{
		Replica:           r.cfg.Name,
		Key:               c.Key,
		Mode:              r.cfg.Mode,
		Version:           c.Version,
		Position:          pos.Version,
		Timestamp:         c.Timestamp,
		Origin:            c.Origin,
		MessageID:         c.messageID(),
		PositionTimestamp: microsTime(pos.TSMicros),
		PositionOrigin:    origin,
	}
}

// isTransient reports whether err is a deadlock, a serialization failure or
// a busy database: the transaction can succeed when run again.
func isTransient(err error) bool {
	var pg interface{ SQLState() string }
	if errors.As(err, &pg) {
		switch pg.SQLState() {
		case "40001", "40P01":
			return true
		}
	}
	var my *mysql.MySQLError
	if errors.As(err, &my) && (my.Number == 1213 || my.Number == 1205) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "SQLITE_BUSY") || strings.Contains(s, "database is locked")
}
