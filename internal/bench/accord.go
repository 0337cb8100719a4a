package bench

import (
	"context"
	"fmt"
	"runtime/pprof"
	"slices"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// seedBatch is the number of events written per statement and transaction
// when seeding a backlog.
const seedBatch = 5000

// newEvent returns event i of a phase: key i mod Keys, sequence i div Keys
// within its key, a small JSON payload (valid JSON, as watermill-sql's
// default payload column requires) and its index, key and sequence in
// metadata.
func newEvent(i int) (key string, msg *message.Message) {
	k, seq := i%Keys, i/Keys
	key = "order-" + strconv.Itoa(k)
	payload := fmt.Appendf(nil, `{"type":"order.updated","order_id":%q,"seq":%d,"amount_cents":%d}`, key, seq, (i*7919)%100000)
	msg = message.NewMessage(outbox.NewID(), payload)
	msg.Metadata.Set(mdIndex, strconv.Itoa(i))
	msg.Metadata.Set(mdKey, key)
	msg.Metadata.Set(mdSeq, strconv.Itoa(seq))
	return key, msg
}

// phaseOutcome is what a drain phase measured.
type phaseOutcome struct {
	backlog int64
	seed    time.Duration
	elapsed time.Duration
	// relaysElapsed is the time until the relays deleted every row (Accord
	// drain only).
	relaysElapsed time.Duration
	// balancedAfter is when the relays first held their shares of the
	// lease slots, and afterBalance the rows deleted from then on (Accord
	// drain only).
	balancedAfter time.Duration
	afterBalance  int64
	check         check
}

// accordDrain writes n events into a fresh outbox with the given table
// prefix, then times Options.Relays relays draining them into the
// destination: until the destination received every event and the relays
// together deleted every row.
func (r *runner) accordDrain(ctx context.Context, prefix string, n int) (out phaseOutcome, err error) {
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
	// Subscribed before anything is written to the topic.
	d, err := r.newDestination(ctx, "drain", n, true)
	if err != nil {
		return out, err
	}
	defer func() {
		if cerr := d.close(ctx); cerr != nil && err == nil {
			err = cerr
		}
	}()

	r.logf("drain (Accord): writing %d events over %d keys into %s.%soutbox", n, min(n, Keys), r.schema, prefix)
	seedStart := time.Now()
	ids := make([]string, n)
	events := make([]outbox.Event, 0, seedBatch)
	for start := 0; start < n; start += seedBatch {
		events = events[:0]
		for i := start; i < min(start+seedBatch, n); i++ {
			key, msg := newEvent(i)
			ids[i] = msg.UUID
			events = append(events, outbox.Event{Topic: d.topic, Key: key, Message: msg})
		}
		tx, err := r.db.BeginTx(ctx, nil)
		if err != nil {
			return out, fmt.Errorf("accord bench: seed: %w", err)
		}
		if err := ob.WriteTx(ctx, tx, events...); err != nil {
			_ = tx.Rollback()
			return out, fmt.Errorf("accord bench: seed: %w", err)
		}
		if err := tx.Commit(); err != nil {
			return out, fmt.Errorf("accord bench: seed: %w", err)
		}
	}
	table := `"` + r.schema + `"."` + prefix + `outbox"`
	// Statistics as autovacuum would have them for a backlog that built up.
	if _, err := r.db.ExecContext(ctx, "ANALYZE "+table); err != nil {
		return out, fmt.Errorf("accord bench: analyze: %w", err)
	}
	if err := r.db.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&out.backlog); err != nil {
		return out, fmt.Errorf("accord bench: count backlog: %w", err)
	}
	out.seed = time.Since(seedStart)
	r.logf("drain (Accord): wrote %d events in %.2f s (%.0f events/s); starting %s", out.backlog, out.seed.Seconds(), float64(out.backlog)/out.seed.Seconds(), plural(r.opts.Relays, "relay"))

	// The relays say when they deleted rows, so that the end of the drain
	// is seen when it happens, not at the next look.
	deletes := make(chan struct{}, 1)
	rs, err := r.newRelays(ctx, prefix, d, func(int) relay.Observer { return deleteSignal{ch: deletes} })
	if err != nil {
		return out, err
	}
	defer func() { _ = rs.stop() }() // before d.close: the relays stop publishing first
	if r.opts.CPUProfile != nil {
		if err := pprof.StartCPUProfile(r.opts.CPUProfile); err != nil {
			r.logf("drain (Accord): no CPU profile: %v", err)
		} else {
			defer pprof.StopCPUProfile() // also on error; stopping twice is a no-op
		}
	}
	if r.timerStart != nil {
		r.timerStart()
	}
	rs.run(ctx)
	// Timed from the moment every relay runs (connected, table checked,
	// leases taken): what is measured is the drain, not the start-up.
	if err := rs.waitRunning(ctx); err != nil {
		return out, fmt.Errorf("accord bench: drain (Accord): %w", err)
	}
	start := time.Now()
	// Note when the relays together deleted every row: with a broker
	// destination that can be well before the benchmark's subscriber
	// received the last event.
	relaysDone := make(chan time.Time, 1)
	quit := make(chan struct{})
	defer close(quit)
	var balancedAt time.Time
	var deletedAtBalance int64
	go func() {
		tick := time.NewTicker(time.Millisecond) // for balanced
		defer tick.Stop()
		for rs.deleted() < out.backlog {
			if balancedAt.IsZero() && rs.balanced() {
				deletedAtBalance = rs.deleted()
				balancedAt = time.Now()
			}
			select {
			case <-deletes:
			case <-tick.C:
			case <-quit:
				return
			}
		}
		relaysDone <- time.Now()
	}()
	if err := r.waitSink(ctx, d.sink, "drain (Accord)", slices.Concat(rs.bgs, d.stops())...); err != nil {
		return out, err
	}
	received := r.base.Add(time.Duration(d.sink.doneAt.Load()))
	// Done when the relays also deleted every published row.
	var deleted time.Time
	look := time.NewTicker(10 * time.Millisecond)
	defer look.Stop()
	for deleted.IsZero() {
		select {
		case deleted = <-relaysDone:
		case <-look.C:
			if bg := rs.stopped(); bg != nil {
				return out, fmt.Errorf("accord bench: drain (Accord): relay stopped before deleting every row: %v", bg.err)
			}
		case <-ctx.Done():
			return out, ctx.Err()
		}
	}
	end := deleted
	if received.After(end) {
		end = received
	}
	out.relaysElapsed = deleted.Sub(start)
	if balancedAt.IsZero() {
		balancedAt = start
	}
	out.balancedAfter = balancedAt.Sub(start)
	out.afterBalance = out.backlog - deletedAtBalance
	if r.timerStop != nil {
		r.timerStop()
	}
	if r.opts.CPUProfile != nil {
		pprof.StopCPUProfile()
	}
	out.elapsed = end.Sub(start)
	if err := rs.stop(); err != nil {
		return out, fmt.Errorf("accord bench: drain (Accord): %w", err)
	}
	var left int64
	if err := r.db.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&left); err != nil {
		return out, fmt.Errorf("accord bench: count rows left: %w", err)
	}
	if left != 0 {
		return out, fmt.Errorf("accord bench: drain (Accord): %d rows left in the outbox after the relays reported every row deleted", left)
	}
	out.check = verify(d.sink.receipts(), ids, nil)
	r.logf("drain (Accord): %d events in %.3f s = %.0f events/s (lost %d, duplicates %d, order violations %d, unexpected %d)",
		out.backlog, out.elapsed.Seconds(), float64(out.backlog)/out.elapsed.Seconds(),
		out.check.Lost, out.check.Duplicates, out.check.OrderViolations, out.check.Unexpected)
	return out, nil
}

// deleteSignal is a relay.Observer that signals ch (without blocking) after
// every delete.
type deleteSignal struct {
	relay.ObserverDefaults
	ch chan struct{}
}

// Deleted signals.
func (s deleteSignal) Deleted(context.Context, int, time.Duration) {
	select {
	case s.ch <- struct{}{}:
	default:
	}
}
