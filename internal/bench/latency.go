package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/outbox"
)

// latencyOutcome is what the latency phase measured.
type latencyOutcome struct {
	events       int
	achievedRate float64
	late         int64   // writes that started more than 10 ms after their scheduled time
	commits      []int64 // sorted COMMIT durations (ns) of the writers
	afterCommit  []int64 // sorted times (ns) from COMMIT returning to arrival
	check        check
	openXID      string // Options.OpenTransaction: the id held open elsewhere
	heldXmin     bool   // ... and the benchmark's database saw xmin held back
}

// latencyWriters returns the number of writer goroutines for rate events/s:
// one per 100 events/s, at least 2, at most 64, so that a writer has 10 ms
// per transaction and a slow fsync does not put the schedule behind.
func latencyWriters(rate int) int { return max(2, min(64, rate/100)) }

// latency runs Options.Relays relays on an empty outbox with the given table prefix while
// writers commit Rate events per second for LatencyDuration, one event per
// transaction, and measures commit-to-destination latency.
func (r *runner) latency(ctx context.Context, prefix string) (out latencyOutcome, err error) {
	if err := r.migrateUp(ctx, prefix); err != nil {
		return out, err
	}
	defer func() {
		if derr := r.migrateDown(ctx, prefix); derr != nil && err == nil {
			err = derr
		}
	}()
	ob, err := outbox.New(&outbox.Config{Dialect: accord.Postgres, Schema: r.schema, TablePrefix: prefix})
	if err != nil {
		return out, err
	}
	rate := r.opts.Rate
	n := max(1, int(int64(rate)*int64(r.opts.LatencyDuration)/int64(time.Second)))
	out.events = n

	// Subscribed before the relays start.
	d, err := r.newDestination(ctx, "latency", n, true)
	if err != nil {
		return out, err
	}
	defer func() {
		if cerr := d.close(ctx); cerr != nil && err == nil {
			err = cerr
		}
	}()
	rs, err := r.newRelays(ctx, prefix, d, nil)
	if err != nil {
		return out, err
	}
	defer func() { _ = rs.stop() }() // before d.close: the relays stop publishing first
	rs.run(ctx)
	if err := rs.waitRunning(ctx); err != nil {
		return out, fmt.Errorf("accord bench: latency: %w", err)
	}
	// Let the relays settle (LISTEN, first empty read) before the clock runs.
	time.Sleep(200 * time.Millisecond)
	if r.opts.OpenTransaction {
		release, xid, err := r.openTransactionElsewhere(ctx)
		if err != nil {
			return out, fmt.Errorf("accord bench: latency: %w", err)
		}
		defer release()
		out.openXID = xid
		out.heldXmin, err = r.xminAtMost(ctx, xid)
		if err != nil {
			return out, fmt.Errorf("accord bench: latency: %w", err)
		}
	}

	writers := latencyWriters(rate)
	r.logf("latency (Accord): %d events/s for %s (%d events, one per transaction, %d writers)", rate, r.opts.LatencyDuration, n, writers)
	ids := make([]string, n)
	committedAt := make([]int64, n) // ns since r.base, just before COMMIT
	commitDur := make([]int64, n)
	commitEnd := make([]int64, n)
	var late atomic.Int64
	var lastCommit atomic.Int64
	wctx, cancelWriters := context.WithCancel(ctx)
	defer cancelWriters()
	var wg sync.WaitGroup
	errs := make([]error, writers)
	start := time.Now()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += writers {
				due := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
				if wait := time.Until(due); wait > 0 {
					select {
					case <-time.After(wait):
					case <-wctx.Done():
						return
					}
				} else if -wait > 10*time.Millisecond {
					late.Add(1)
				}
				key, msg := newEvent(i)
				ids[i] = msg.UUID
				tx, err := r.db.BeginTx(wctx, nil)
				if err != nil {
					errs[w] = err
					cancelWriters()
					return
				}
				if err := ob.WriteTx(wctx, tx, outbox.Event{Topic: d.topic, Key: key, Message: msg}); err != nil {
					_ = tx.Rollback()
					errs[w] = err
					cancelWriters()
					return
				}
				committedAt[i] = r.since()
				if err := tx.Commit(); err != nil {
					errs[w] = err
					cancelWriters()
					return
				}
				now := r.since()
				commitDur[i] = now - committedAt[i]
				commitEnd[i] = now
				for {
					prev := lastCommit.Load()
					if now <= prev || lastCommit.CompareAndSwap(prev, now) {
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return out, fmt.Errorf("accord bench: latency: writer: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return out, err
	}
	written := time.Duration(lastCommit.Load() - int64(start.Sub(r.base)))
	out.achievedRate = float64(n) / written.Seconds()
	out.late = late.Load()
	sortInt64s(commitDur)
	out.commits = commitDur
	if err := r.waitSink(ctx, d.sink, "latency (Accord)", slices.Concat(rs.bgs, d.stops())...); err != nil {
		return out, err
	}
	if err := rs.stop(); err != nil {
		return out, fmt.Errorf("accord bench: latency: %w", err)
	}
	recs := d.sink.receipts()
	out.check = verify(recs, ids, committedAt)
	out.afterCommit = verify(recs, ids, commitEnd).Latencies
	sortInt64s(out.afterCommit)
	lat := append([]int64(nil), out.check.Latencies...)
	sortInt64s(lat)
	r.logf("latency (Accord): achieved %.1f events/s (%d writes started >10 ms late, COMMIT p50 %.2f ms p99 %.2f ms); p50 %.2f ms, p99 %.2f ms, max %.2f ms; from COMMIT returning: p50 %.2f ms, p99 %.2f ms (lost %d, duplicates %d, order violations %d, unexpected %d)",
		out.achievedRate, out.late, ms(percentile(out.commits, 50)), ms(percentile(out.commits, 99)),
		ms(percentile(lat, 50)), ms(percentile(lat, 99)), ms(percentile(lat, 100)),
		ms(percentile(out.afterCommit, 50)), ms(percentile(out.afterCommit, 99)),
		out.check.Lost, out.check.Duplicates, out.check.OrderViolations, out.check.Unexpected)
	return out, nil
}

// openTransactionElsewhere begins a transaction in another database of the
// cluster and assigns it a transaction id, which holds back the cluster's
// xmin horizon until release rolls it back.
func (r *runner) openTransactionElsewhere(ctx context.Context) (release func(), xid string, err error) {
	cfg, err := pgx.ParseConfig(r.opts.DatabaseURL)
	if err != nil {
		return nil, "", err
	}
	other := "postgres"
	if cfg.Database == other {
		other = "template1"
	}
	cfg.Database = other
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, "", fmt.Errorf("open a transaction in database %q: %w", other, err)
	}
	tx, err := conn.Begin(ctx)
	if err == nil {
		err = tx.QueryRow(ctx, "SELECT pg_current_xact_id()::text").Scan(&xid)
	}
	if err != nil {
		_ = conn.Close(ctx)
		return nil, "", fmt.Errorf("open a transaction in database %q: %w", other, err)
	}
	r.logf("latency (Accord): transaction %s held open in database %q for the whole phase", xid, other)
	return func() {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		_ = conn.Close(context.WithoutCancel(ctx))
	}, xid, nil
}

// xminAtMost reports whether the benchmark's database sees its xmin horizon
// at or below xid (the open transaction holds it back).
func (r *runner) xminAtMost(ctx context.Context, xid string) (bool, error) {
	var held bool
	err := r.db.QueryRowContext(ctx, "SELECT pg_snapshot_xmin(pg_current_snapshot()) <= $1::xid8", xid).Scan(&held)
	return held, err
}
