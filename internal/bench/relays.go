package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/relay"
)

// relaySet is the Options.Relays relay instances of one phase. Each has its
// own connection pool and its own publisher into the phase's destination,
// and all run the same Config on the same outbox, as separate relay
// processes would. (They share the outbox's work only once the relay
// coordinates instances; before that, several relays publish rows twice.)
type relaySet struct {
	relays []*relay.Relay
	dbs    []*sql.DB
	bgs    []*background

	stopOnce sync.Once
	stopErr  error
}

// newRelays opens the pools and publishers of Options.Relays relays on the
// outbox with prefix and creates the relays, without running them.
// observer, when not nil, gives relay i its Observer.
func (r *runner) newRelays(ctx context.Context, prefix string, d *destination, observer func(i int) relay.Observer) (_ *relaySet, err error) {
	rs := &relaySet{}
	defer func() {
		if err != nil {
			_ = rs.stop()
		}
	}()
	for i := range r.opts.Relays {
		db, _, err := accord.OpenDB(r.opts.DatabaseURL)
		if err != nil {
			return nil, fmt.Errorf("accord bench: %w", err)
		}
		// Enough idle connections that the relay's reader and acker never
		// reconnect; database/sql keeps only 2 idle by default.
		db.SetMaxOpenConns(64)
		db.SetMaxIdleConns(64)
		rs.dbs = append(rs.dbs, db)
		if err := db.PingContext(ctx); err != nil {
			return nil, fmt.Errorf("accord bench: relay %d: %w", i+1, err)
		}
		pub, err := d.publisher(ctx)
		if err != nil {
			return nil, err
		}
		cfg := r.relayConfig(prefix)
		if r.opts.Relays > 1 {
			cfg.Logger = cfg.Logger.With("relay", i+1)
		}
		if observer != nil {
			cfg.Observer = observer(i)
		}
		rl, err := relay.New(db, pub, cfg)
		if err != nil {
			return nil, err
		}
		rs.relays = append(rs.relays, rl)
	}
	return rs, nil
}

// run starts every relay.
func (rs *relaySet) run(ctx context.Context) {
	for _, rl := range rs.relays {
		rs.bgs = append(rs.bgs, goBackground(func() error { return rl.Run(ctx) }))
	}
}

// waitRunning waits until every relay is running. It fails when a relay
// returns first.
func (rs *relaySet) waitRunning(ctx context.Context) error {
	for i, rl := range rs.relays {
		select {
		case <-rl.Running():
		case <-rs.bgs[i].done:
			return fmt.Errorf("relay %d stopped: %v", i+1, rs.bgs[i].err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// balanced reports whether the relays hold every lease slot between them,
// each its share (within one slot).
func (rs *relaySet) balanced() bool {
	total, lo, hi := 0, relay.Slots, 0
	for _, rl := range rs.relays {
		n := rl.Leases()
		total += n
		lo, hi = min(lo, n), max(hi, n)
	}
	return total == relay.Slots && hi-lo <= 1
}

// deleted returns the rows deleted by all relays together.
func (rs *relaySet) deleted() int64 {
	var n int64
	for _, rl := range rs.relays {
		n += rl.Stats().Deleted
	}
	return n
}

// stopped returns the first relay that returned, or nil while all run.
func (rs *relaySet) stopped() *background {
	for _, bg := range rs.bgs {
		select {
		case <-bg.done:
			return bg
		default:
		}
	}
	return nil
}

// stop closes every relay, waits for them to return and closes their
// pools. It returns the relays' errors joined; later calls return the same.
func (rs *relaySet) stop() error {
	rs.stopOnce.Do(func() {
		for _, rl := range rs.relays {
			_ = rl.Close()
		}
		var errs []error
		for i, bg := range rs.bgs {
			<-bg.done
			if bg.err != nil {
				errs = append(errs, fmt.Errorf("relay %d: %w", i+1, bg.err))
			}
		}
		for _, db := range rs.dbs {
			_ = db.Close()
		}
		rs.stopErr = errors.Join(errs...)
	})
	return rs.stopErr
}
