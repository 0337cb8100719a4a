package bench

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/accordgo/accord/relay"
)

// idleSettleReads is the number of reads every relay must have made before
// the idle window starts: the first read at start and one more (a poll, or
// the read after LISTEN), so that start-up work is over.
const idleSettleReads = 2

// idleSettleMax bounds the wait for idleSettleReads (a relay polls every
// PollInterval, 1 s by default, when idle).
const idleSettleMax = 5 * time.Second

// idleOutcome is what the idle phase measured.
type idleOutcome struct {
	cpu    time.Duration // CPU time of the process over the window
	window time.Duration // wall time of the window
	ok     bool          // false when this platform cannot measure CPU time
}

// percent returns cpu / window in percent of one core.
func (o idleOutcome) percent() float64 {
	if o.window <= 0 {
		return 0
	}
	return 100 * o.cpu.Seconds() / o.window.Seconds()
}

// readCounter is a relay Observer that closes settled once the relay made
// idleSettleReads reads.
type readCounter struct {
	relay.ObserverDefaults
	reads   atomic.Int64
	settled chan struct{}
	once    sync.Once
}

func (c *readCounter) Read(context.Context, int, bool, time.Duration) {
	if c.reads.Add(1) >= idleSettleReads {
		c.once.Do(func() { close(c.settled) })
	}
}

// idle runs Options.Relays relays on an empty outbox with the given table
// prefix, writes nothing, and measures the CPU time of the whole process
// (user + system, getrusage) over IdleDuration once the relays settled.
// Nothing else in the process works during the window.
func (r *runner) idle(ctx context.Context, prefix string) (out idleOutcome, err error) {
	if err := r.migrateUp(ctx, prefix); err != nil {
		return out, err
	}
	defer func() {
		if derr := r.migrateDown(ctx, prefix); derr != nil && err == nil {
			err = derr
		}
	}()
	// Nothing is published: no subscription, only the relays' publishers.
	d, err := r.newDestination(ctx, "idle", 0, false)
	if err != nil {
		return out, err
	}
	defer func() {
		if cerr := d.close(ctx); cerr != nil && err == nil {
			err = cerr
		}
	}()
	counters := make([]*readCounter, r.opts.Relays)
	for i := range counters {
		counters[i] = &readCounter{settled: make(chan struct{})}
	}
	rs, err := r.newRelays(ctx, prefix, d, func(i int) relay.Observer { return counters[i] })
	if err != nil {
		return out, err
	}
	defer func() { _ = rs.stop() }()
	rs.run(ctx)
	if err := rs.waitRunning(ctx); err != nil {
		return out, fmt.Errorf("accord bench: idle: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, idleSettleMax)
	defer cancel()
	for i, c := range counters {
		select {
		case <-c.settled:
		case <-rs.bgs[i].done:
			return out, fmt.Errorf("accord bench: idle: relay %d stopped: %v", i+1, rs.bgs[i].err)
		case <-sctx.Done():
			if err := ctx.Err(); err != nil {
				return out, err
			}
			select {
			case <-c.settled:
			default:
				r.logf("idle: relay %d made %d reads in %s; measuring anyway", i+1, c.reads.Load(), idleSettleMax)
			}
		}
	}
	// The garbage of the earlier phases is not the idle relays' work.
	runtime.GC()

	r.logf("idle: %s on an empty outbox for %s", plural(r.opts.Relays, "relay"), r.opts.IdleDuration)
	cpu0, ok := processCPUTime()
	t0 := time.Now()
	window := time.NewTimer(r.opts.IdleDuration)
	defer window.Stop()
	select {
	case <-window.C:
	case <-ctx.Done():
		return out, ctx.Err()
	}
	cpu1, _ := processCPUTime()
	out.window = time.Since(t0)
	if bg := rs.stopped(); bg != nil {
		return out, fmt.Errorf("accord bench: idle: relay stopped: %v", bg.err)
	}
	if err := rs.stop(); err != nil {
		return out, fmt.Errorf("accord bench: idle: %w", err)
	}
	if !ok {
		r.logf("idle: cannot measure CPU time on %s", runtime.GOOS)
		return out, nil
	}
	out.ok = true
	out.cpu = cpu1 - cpu0
	var reads int64
	for _, c := range counters {
		reads += c.reads.Load()
	}
	r.logf("idle: %.3f s CPU in %.3f s = %.2f%% of one core (%d reads in all)", out.cpu.Seconds(), out.window.Seconds(), out.percent(), reads)
	return out, nil
}

// plural returns "1 relay", "2 relays".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
