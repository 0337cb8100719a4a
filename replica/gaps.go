package replica

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ResyncFunc asks the application to bring one key of a BySequence replica
// up to date after a gap that did not fill: typically it fetches a
// snapshot of the entity from its producer (through the feed or an API) and
// calls [Replica.Resync] with the snapshot's sequence number. position is
// the key's position when the gap was found. It runs outside any
// transaction, and is called again on every [Replica.CheckGaps] while the
// gap stays open.
type ResyncFunc func(ctx context.Context, key string, position int64) error

// SnapshotFunc writes a snapshot of one entity to the replica's tables
// through tx (see [Replica.ResyncTx]). It must not commit or roll back tx.
type SnapshotFunc func(ctx context.Context, tx *sql.Tx) error

// GapInfo describes a key whose gap did not fill within GapTimeout.
type GapInfo struct {
	// Key is the entity key.
	Key string
	// Position is the sequence number the key is at.
	Position int64
	// FirstParked is the lowest parked sequence number: Position+1 to
	// FirstParked-1 are missing.
	FirstParked int64
	// Parked is the number of parked changes of the key.
	Parked int
	// Since is when the oldest parked change of the key was parked.
	Since time.Time
}

// checkGapsLimit bounds the keys one CheckGaps call reports.
const checkGapsLimit = 1000

// CheckGaps finds the keys of a BySequence replica whose oldest parked
// change was parked more than GapTimeout ago (oldest first, at most 1,000
// per call), reports each (a warning log and Observer.Gap) and calls
// Config.Resync for it, if set. It returns the gaps found and the errors of
// the Resync calls, joined; a failing key does not stop the others. Other
// modes park nothing: CheckGaps returns nothing for them.
func (r *Replica) CheckGaps(ctx context.Context) ([]GapInfo, error) {
	if r.cfg.Mode != BySequence {
		return nil, nil
	}
	cutoff := r.cfg.Now().Add(-r.cfg.GapTimeout)
	rows, err := r.names.ReplicaGaps(ctx, r.db, r.cfg.Name, cutoff, checkGapsLimit)
	if err != nil {
		return nil, r.dbErr("look for gaps", err)
	}
	var gaps []GapInfo
	var errs []error
	for _, g := range rows {
		pos, err := r.names.ReplicaReadPosition(ctx, r.db, r.cfg.Name, g.Key)
		if err != nil {
			return gaps, errors.Join(append(errs, r.dbErr("read the position of key "+quote(g.Key), err))...)
		}
		info := GapInfo{Key: g.Key, Position: pos.Version, FirstParked: g.FirstVersion, Parked: g.Parked, Since: g.OldestParked}
		gaps = append(gaps, info)
		r.report(ctx, notices{{kindGap, Observation{
			Replica: r.cfg.Name, Key: g.Key, Mode: r.cfg.Mode, Outcome: Parked,
			Version: g.FirstVersion, Position: pos.Version, Parked: g.Parked, Since: g.OldestParked,
		}}})
		if r.cfg.Resync == nil {
			continue
		}
		if err := r.cfg.Resync(ctx, g.Key, pos.Version); err != nil {
			r.log.ErrorContext(ctx, "resync failed", "key", g.Key, "position", pos.Version, "error", err)
			errs = append(errs, fmt.Errorf("accord replica %s: resync key %q: %w", r.cfg.Name, g.Key, err))
		}
		if ctx.Err() != nil {
			break
		}
	}
	return gaps, errors.Join(errs...)
}

// RunGapChecker calls [Replica.CheckGaps] now and then every interval until
// ctx is cancelled, then returns nil. Errors are logged, not returned: the
// next round tries again. A reasonable interval is a fraction of
// GapTimeout.
func (r *Replica) RunGapChecker(ctx context.Context, every time.Duration) error {
	if every <= 0 {
		return fmt.Errorf("accord replica %s: RunGapChecker interval %s: must be positive", r.cfg.Name, every)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if _, err := r.CheckGaps(ctx); err != nil && ctx.Err() == nil {
			r.log.ErrorContext(ctx, "gap check failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// ResyncTx moves key to a snapshot, in tx, the caller's transaction: if
// version is above the key's position, it calls snapshot to write the
// entity's state as of version (nil if the caller wrote it already), sets
// the position to version, drops the parked changes the snapshot contains
// (version and below) and applies, in order, the parked changes that follow
// it without a gap. The position's timestamp and origin are cleared (a
// snapshot has neither) until the next change. It returns Applied, or Stale
// (and does nothing) when the replica is already at version or beyond: a
// replica never moves back.
//
// ByVersion and BySequence replicas only; a ByTimestamp replica takes a
// snapshot as an ordinary change with the snapshot's timestamp.
func (r *Replica) ResyncTx(ctx context.Context, tx *sql.Tx, key string, version int64, snapshot SnapshotFunc) (Outcome, error) {
	var ns notices
	o, err := r.resyncTx(ctx, tx, key, version, snapshot, false, &ns)
	if err == nil {
		r.report(ctx, ns)
	}
	return o, err
}

// RepairTx is [Replica.ResyncTx] for a snapshot re-emitted by
// reconciliation (package reconcile): the source of truth wins, so the
// snapshot is applied even when the replica's position is already at or
// beyond version (a row edited behind the replica's back, or a replica
// ahead of a restored source), and the position is set to version. It
// always returns Applied (or an error).
func (r *Replica) RepairTx(ctx context.Context, tx *sql.Tx, key string, version int64, snapshot SnapshotFunc) (Outcome, error) {
	var ns notices
	o, err := r.resyncTx(ctx, tx, key, version, snapshot, true, &ns)
	if err == nil {
		r.report(ctx, ns)
	}
	return o, err
}

// Resync is [Replica.ResyncTx] in a transaction of its own, committed
// before it returns; the Observer hears of it after the commit.
func (r *Replica) Resync(ctx context.Context, key string, version int64, snapshot SnapshotFunc) (Outcome, error) {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("accord replica %s: begin: %w", r.cfg.Name, err)
	}
	var ns notices
	o, err := r.resyncTx(ctx, tx, key, version, snapshot, false, &ns)
	if err != nil {
		_ = tx.Rollback()
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("accord replica %s: commit resync of key %q: %w", r.cfg.Name, key, err)
	}
	r.report(ctx, ns)
	return o, nil
}

func (r *Replica) resyncTx(ctx context.Context, tx *sql.Tx, key string, version int64, snapshot SnapshotFunc, force bool, ns *notices) (Outcome, error) {
	if r.cfg.Mode == ByTimestamp {
		return 0, fmt.Errorf("accord replica %s: Resync: %w for a ByTimestamp replica (apply the snapshot as a change with its timestamp)",
			r.cfg.Name, errors.ErrUnsupported)
	}
	if tx == nil {
		return 0, fmt.Errorf("accord replica %s: tx is nil", r.cfg.Name)
	}
	if err := (Change{Key: key, Version: version}).check(ByVersion); err != nil {
		return 0, fmt.Errorf("resync: %w", err)
	}
	pos, err := r.names.ReplicaLockPosition(ctx, tx, r.cfg.Name, key, r.cfg.Now())
	if err != nil {
		return 0, r.dbErr("lock the position of key "+quote(key), err)
	}
	if version <= pos.Version && !force {
		r.log.InfoContext(ctx, "snapshot not newer than the replica; ignored", "key", key, "version", version, "position", pos.Version)
		return Stale, nil
	}
	if force && version != pos.Version {
		r.log.WarnContext(ctx, "repair moves the replica to the source's version", "key", key, "version", version, "position", pos.Version)
	}
	if snapshot != nil {
		if err := snapshot(ctx, tx); err != nil {
			return 0, fmt.Errorf("accord replica %s: apply snapshot of key %q at version %d: %w", r.cfg.Name, key, version, err)
		}
	}
	dropped, err := r.names.ReplicaDeleteParked(ctx, tx, r.cfg.Name, key, 0, version)
	if err != nil {
		return 0, r.dbErr("drop the parked changes of key "+quote(key), err)
	}
	ns.add(kindResync, Observation{
		Replica: r.cfg.Name, Key: key, Mode: r.cfg.Mode, Outcome: Applied,
		Version: version, Position: pos.Version, Dropped: int(dropped),
	})
	next, err := r.drain(ctx, tx, key, positionOf(Change{Key: key, Version: version}), ns)
	if err != nil {
		return 0, err
	}
	if err := r.setPosition(ctx, tx, key, next); err != nil {
		return 0, err
	}
	return Applied, nil
}
