package inbox

import (
	"context"
	"time"

	"github.com/accordgo/accord/internal/sqlstore"
)

// Cleanup deletes the consumer's inbox rows received more than Retention
// ago, at most CleanupBatchMax per statement (each its own transaction, so
// no statement holds many locks), and the failed-attempt rows of messages
// that were applied or parked since, or that last failed more than
// Retention ago. It returns the number of inbox rows deleted. Dead letters
// are kept: they wait for an operator.
//
// A message redelivered after its inbox row is gone is applied again:
// Retention must exceed the broker's redelivery window (see
// Config.Retention).
func (i *Inbox) Cleanup(ctx context.Context) (int64, error) {
	if i.db == nil {
		return 0, errNoDB
	}
	c := sqlstore.InboxSQL(i.db)
	cutoff := i.cfg.Now().Add(-i.cfg.Retention)
	batches := func(del func() (int64, error)) (int64, error) {
		var total int64
		for {
			n, err := del()
			total += n
			if err != nil || n < int64(i.cleanupBatch) {
				return total, err
			}
		}
	}
	deleted, err := batches(func() (int64, error) {
		return i.names.InboxCleanup(ctx, c, i.cfg.Consumer, cutoff, i.cleanupBatch)
	})
	if err != nil {
		return deleted, i.dbErr("clean up the inbox", nil, err)
	}
	attempts, err := batches(func() (int64, error) {
		return i.names.InboxAttemptCleanup(ctx, c, i.cfg.Consumer, cutoff, i.cleanupBatch)
	})
	if err != nil {
		return deleted, i.dbErr("clean up failed attempts", nil, err)
	}
	done, err := batches(func() (int64, error) {
		return i.names.InboxAttemptCleanupApplied(ctx, c, i.cfg.Consumer, i.cleanupBatch)
	})
	if err != nil {
		return deleted, i.dbErr("clean up failed attempts", nil, err)
	}
	if deleted+attempts+done > 0 {
		i.log.InfoContext(ctx, "inbox cleaned up", "inbox_rows", deleted, "attempt_rows", attempts+done,
			"received_before", cutoff)
	}
	return deleted, nil
}

// RunCleanup calls [Inbox.Cleanup] at once and then every interval
// (CleanupIntervalDefault when interval is 0) until ctx is cancelled, then
// returns nil. Failures are logged and tried again at the next tick. Every
// instance of a consumer may run it; concurrent cleanups only delete the
// same rows.
func (i *Inbox) RunCleanup(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = CleanupIntervalDefault
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := i.Cleanup(ctx); err != nil && ctx.Err() == nil {
			i.log.ErrorContext(ctx, "inbox cleanup failed; trying again at the next interval", "error", err, "interval", interval)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
