package relay

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/trace"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/service"
	"github.com/accordgo/accord/internal/sqlstore"
	"github.com/accordgo/accord/outbox"
)

var (
	// ErrNotMigrated is returned by Run when a table it needs (the outbox,
	// or the lease tables unless DisableLeases is set) does not exist.
	ErrNotMigrated = errors.New("accord relay: table does not exist (outbox not migrated)")
	// ErrAlreadyRunning is returned by Run when the relay is already running
	// or has run: a Relay runs once.
	ErrAlreadyRunning = errors.New("accord relay: Run called more than once")
	// ErrMalformedRow is the cause recorded for an outbox row that cannot be
	// turned into a message (for example metadata that is not a JSON object
	// of strings). Such a row is retried with backoff, re-read from the
	// database on each attempt so that a repaired row goes out, and never
	// dropped.
	ErrMalformedRow = errors.New("accord relay: malformed outbox row")
)

// Stats are counters of a running relay.
type Stats struct {
	// Published counts rows the broker accepted.
	Published int64
	// Deleted counts published rows removed from the outbox.
	Deleted int64
	// Failures counts failed publish attempts (each retried).
	Failures int64
	// InFlight is the number of rows read but not yet deleted.
	InFlight int64
	// DeadLettered counts rows moved to the dead letters.
	DeadLettered int64
	// Fenced counts rows read but given back unpublished (or not moved to
	// the dead letters) because this instance's lease on them ran out.
	Fenced int64
}

// Relay publishes committed outbox rows through a watermill Publisher and
// deletes them once the publisher accepted them. See the package doc for the
// guarantees.
type Relay struct {
	db     *sql.DB
	pub    message.Publisher
	cfg    *Config
	names  sqlstore.Names
	log    *slog.Logger
	obs    Observer
	tracer trace.Tracer

	life *service.Lifecycle

	// leases is nil when Config.DisableLeases is set.
	leases *leaser

	mu sync.Mutex
	// inflight maps the rows read but not yet deleted (or given back) to
	// their lease slot; slotBusy counts them per slot.
	inflight map[int64]int32
	slotBusy [Slots]int
	released chan struct{} // signalled when in-flight rows are released
	// reads counts reads started; tombstones maps rows deleted by the acker
	// to the value of reads when the delete finished, so that a read that
	// started before the delete committed does not publish them again.
	reads      int64
	tombstones map[int64]int64
	// readsDone is the number of the last read whose rows are in inflight.
	readsDone int64
	// parkedHint is set when a lane parks a key, so that the next read
	// filters parked keys without asking the database first.
	parkedHint bool

	wake chan struct{}

	published, deleted, failures, deadLettered, fenced atomic.Int64
}

// New returns a relay that reads the outbox in db and publishes through pub.
// It validates cfg (errors wrap ErrInvalidConfig) and does not touch the
// database until Run.
func New(db *sql.DB, pub message.Publisher, cfg *Config) (*Relay, error) {
	cfg = cfg.WithDefaults()
	var errs []error
	if db == nil {
		errs = append(errs, errors.New("db is nil"))
	}
	if pub == nil {
		errs = append(errs, errors.New("publisher is nil"))
	}
	if err := cfg.validate(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		err := errors.Join(errs...)
		if !errors.Is(err, ErrInvalidConfig) {
			err = fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		return nil, err
	}
	names, _ := sqlstore.NewNames(cfg.Dialect, cfg.Schema, cfg.TablePrefix)
	r := &Relay{
		db:         db,
		pub:        pub,
		cfg:        cfg,
		names:      names,
		log:        cfg.Logger.With("component", "accord.relay", "table", names.Outbox()),
		obs:        cfg.Observer,
		tracer:     cfg.TracerProvider.Tracer(tracerName),
		life:       service.New(),
		inflight:   map[int64]int32{},
		tombstones: map[int64]int64{},
		released:   make(chan struct{}, 1),
		wake:       make(chan struct{}, 1),
	}
	if !cfg.DisableLeases {
		r.leases = newLeaser(r)
		r.log = r.log.With("instance", r.leases.owner)
	}
	return r, nil
}

// InstanceID returns the name this relay holds its leases under: Config's
// InstanceID and a random suffix, unique to this Relay. It is "" when
// leases are disabled.
func (r *Relay) InstanceID() string {
	if r.leases == nil {
		return ""
	}
	return r.leases.owner
}

// Leases returns the number of lease slots (of [Slots]) this relay holds;
// [Slots] when leases are disabled.
func (r *Relay) Leases() int {
	if r.leases == nil {
		return Slots
	}
	return r.leases.heldCount()
}

// readState returns the number of rows in flight per slot, the number of
// reads started and the number of the last read whose rows are counted.
func (r *Relay) readState() (busy [Slots]int, reads, readsDone int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.slotBusy, r.reads, r.readsDone
}

// Running is closed once Run has started its workers.
func (r *Relay) Running() chan struct{} { return r.life.Running() }

// Wake tells the relay that rows were committed, so that it reads now
// instead of at the next poll. Useful on SQLite, where there is no
// LISTEN/NOTIFY: call it after committing a transaction that wrote events.
func (r *Relay) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Backlog is the state of the outbox table.
type Backlog struct {
	// Pending is the number of rows not yet published (and deleted).
	Pending int64
	// OldestAge is the age of the oldest pending row (zero when empty).
	OldestAge time.Duration
}

// Backlog counts the outbox rows still to be published. It runs one
// aggregate query; call it from a metrics scrape or a health check, not in a
// hot loop.
func (r *Relay) Backlog(ctx context.Context) (Backlog, error) {
	st, err := r.names.Stats(ctx, r.db)
	if err != nil {
		return Backlog{}, fmt.Errorf("accord relay: backlog: %w", err)
	}
	b := Backlog{Pending: st.Pending}
	if !st.Oldest.IsZero() {
		b.OldestAge = max(time.Since(st.Oldest), 0)
	}
	return b, nil
}

// Stats returns the relay's counters.
func (r *Relay) Stats() Stats {
	r.mu.Lock()
	n := len(r.inflight)
	r.mu.Unlock()
	return Stats{Published: r.published.Load(), Deleted: r.deleted.Load(), Failures: r.failures.Load(), InFlight: int64(n),
		DeadLettered: r.deadLettered.Load(), Fenced: r.fenced.Load()}
}

// Close stops a running relay as if Run's context had been cancelled and
// waits for Run to return. It is idempotent and safe before Run.
func (r *Relay) Close() error {
	r.life.Close()
	return nil
}

// warmPool opens, before the relay reports Running, the pool connections
// the reader and the ackers use at once, so that the first reads and
// deletes of a backlog do not each wait for a connection to start. They go
// back to the pool (kept if its idle limit allows; see accord.OpenDB).
func (r *Relay) warmPool(ctx context.Context) {
	if r.cfg.Dialect == accord.SQLite {
		return // one connection
	}
	conns := make([]*sql.Conn, 0, 1+ackers(r.cfg.Dialect))
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range cap(conns) {
		c, err := r.db.Conn(ctx)
		if err != nil {
			return // the reads report it
		}
		conns = append(conns, c)
	}
}

// abandonGrace is how long Run still waits, after ShutdownTimeout, for lanes
// to leave a Publish call before it returns without them.
const abandonGrace = time.Second

// lightSweepMin is the number of rows in flight from which a sweep reads
// the sequence numbers first and fetches only the rows not in flight,
// rather than reading every row in flight again with its payload.
const lightSweepMin = 256

// firstReadSize is the size of the first read after the relay caught up
// (at most BatchSize); each full read doubles the next, up to BatchSize.
const firstReadSize = 128

// item is one row on its way to the broker.
type item struct {
	row sqlstore.Row
	// readNo is the number of the read that returned the row.
	readNo int64
	// slot is the row's lease slot and epoch the epoch of the lease held
	// when it was read (0 without leases).
	slot  int
	epoch int64
	// lastErr is the last publish error, for the dead letter.
	lastErr string
}

// Run reads and publishes until ctx is cancelled or Close is called, then
// keeps publishing the rows it already read for at most ShutdownTimeout,
// deletes what was published and returns nil. It returns an error at once if
// a table it needs does not exist (ErrNotMigrated) or Run was called before.
func (r *Relay) Run(ctx context.Context) error {
	ctx, finish, ok, err := r.life.Start(ctx, ErrAlreadyRunning)
	if !ok {
		return err
	}
	defer finish()

	if err := r.checkTable(ctx); err != nil {
		return err
	}
	r.warmPool(ctx)

	// The leases outlive the reads: they are renewed until the lanes and
	// the acker are done, then given up.
	leaseCtx, leaseCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer leaseCancel()
	leaseDone := make(chan struct{})
	if r.leases != nil {
		ready := make(chan struct{})
		go func() {
			defer close(leaseDone)
			r.leases.run(leaseCtx, ready)
		}()
		select {
		case <-ready:
		case <-ctx.Done():
		}
	} else {
		close(leaseDone)
	}

	// hardStop ends retries once the shutdown timeout is over.
	hardCtx, hardCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hardCancel()

	acks := make(chan []int64, r.cfg.Lanes*4)
	lanes := make([]chan []item, r.cfg.Lanes)
	var lanesWG sync.WaitGroup
	for i := range lanes {
		lanes[i] = make(chan []item, 64)
		lanesWG.Add(1)
		go func(lane int, in chan []item) {
			defer lanesWG.Done()
			r.runLane(hardCtx, lane, in, acks)
		}(i, lanes[i])
	}
	// Deletes run on two connections (one on SQLite, which has a single
	// writer), so that a slow statement does not hold back the next.
	ackerDone, stopAcker := make(chan struct{}), make(chan struct{})
	var ackersWG sync.WaitGroup
	for range ackers(r.cfg.Dialect) {
		ackersWG.Go(func() { r.runAcker(hardCtx, acks, stopAcker) })
	}
	go func() { ackersWG.Wait(); close(ackerDone) }()
	var listenWG sync.WaitGroup
	if r.cfg.Dialect == accord.Postgres && !r.cfg.DisableNotify {
		listenWG.Add(1)
		go func() {
			defer listenWG.Done()
			r.listen(ctx)
		}()
	}
	r.log.InfoContext(ctx, "relay started", "lanes", r.cfg.Lanes, "batch_size", r.cfg.BatchSize,
		"poll_interval", r.cfg.PollInterval, "notify", r.cfg.Dialect == accord.Postgres && !r.cfg.DisableNotify)
	r.life.MarkRunning()

	r.readLoop(ctx, lanes)

	// Graceful shutdown: let lanes drain what was read, bounded.
	for _, l := range lanes {
		close(l)
	}
	lanesDone := make(chan struct{})
	go func() { lanesWG.Wait(); close(lanesDone) }()
	deadline := time.NewTimer(r.cfg.ShutdownTimeout)
	defer deadline.Stop()
	expired := false
	select {
	case <-lanesDone:
	case <-deadline.C:
		expired = true
		r.log.Warn("relay shutdown timeout: unpublished rows stay in the outbox for the next run",
			"timeout", r.cfg.ShutdownTimeout, "in_flight", r.Stats().InFlight)
		hardCancel()
		// A Publish call cannot be interrupted (watermill's Publish takes no
		// context): a lane blocked in a hung broker is left behind, and its
		// rows stay in the outbox.
		select {
		case <-lanesDone:
		case <-time.After(abandonGrace):
			r.log.Warn("relay gave up waiting for a publish call blocked in the broker")
		}
	}
	close(stopAcker)
	if expired {
		<-ackerDone
	} else {
		select {
		case <-ackerDone:
		case <-deadline.C:
			hardCancel()
			<-ackerDone
		}
	}
	listenWG.Wait()
	leaseCancel()
	<-leaseDone
	if r.leases != nil {
		r.leases.releaseAll(ctx)
	}
	st := r.Stats()
	r.log.Info("relay stopped", "published", st.Published, "deleted", st.Deleted, "failures", st.Failures)
	return nil
}

func (r *Relay) checkTable(ctx context.Context) error {
	tables := []string{"outbox"}
	if r.leases != nil {
		tables = append(tables, "relay_lease", "relay_instance")
	}
	for attempt := 0; ; attempt++ {
		var err error
		for _, t := range tables {
			var exists bool
			if exists, err = sqlstore.TableExists(ctx, r.db, r.names, t); err != nil {
				break
			}
			if !exists {
				return fmt.Errorf("%w: %s; run `accord migrate up` with the same schema and table prefix", ErrNotMigrated, r.names.Table(t))
			}
		}
		if err == nil && r.cfg.VisibilityDelay > 0 {
			// MySQL: the visibility delay reads the column migration 008 adds.
			var exists bool
			if exists, err = sqlstore.ColumnExists(ctx, r.db, r.names, "outbox", "inserted_at"); err == nil && !exists {
				return fmt.Errorf("%w: %s has no inserted_at column (migration 008), which VisibilityDelay needs; run `accord migrate up` with the same schema and table prefix",
					ErrNotMigrated, r.names.Table("outbox"))
			}
		}
		if err == nil {
			return nil
		}
		r.log.ErrorContext(ctx, "relay cannot reach the database; retrying", "error", err, "attempt", attempt+1)
		if !service.Sleep(ctx, r.backoff(attempt)) {
			return ctx.Err()
		}
	}
}

// readLoop reads rows and hands them to lanes until ctx is done.
func (r *Relay) readLoop(ctx context.Context, lanes []chan []item) {
	var leaseGen int64
	var lastSweep time.Time
	var fw forward
	var hasParked bool
	caughtUp := true
	readSize := min(r.cfg.BatchSize, firstReadSize)
	dbFailures := 0
	for ctx.Err() == nil {
		if !r.waitCapacity(ctx) {
			return
		}
		r.mu.Lock()
		nInflight := len(r.inflight)
		r.mu.Unlock()
		// The read's number is taken before the leases are looked at, so
		// that a lease cycle that marks a slot for release after this point
		// waits for this read (readsDone) before it gives the slot up.
		r.mu.Lock()
		r.reads++
		readNo := r.reads
		r.mu.Unlock()
		var opts sqlstore.ReadOpts
		var epochs [Slots]int64
		if r.leases != nil {
			var gen int64
			opts.Slots, epochs, gen = r.leases.readable()
			if len(opts.Slots) == 0 {
				// No lease (yet): wait for the lease loop.
				r.readDone(readNo)
				r.waitLeases(ctx)
				continue
			}
			if gen != leaseGen {
				// New slots: their rows below the floor were never read.
				leaseGen = gen
				fw.reset()
			}
			if len(opts.Slots) == Slots {
				opts.Slots = nil // every slot: no filter
			}
		}

		if opts.Slots != nil {
			// Only some slots: a number missing from a read may be a row
			// another instance deleted as well as a hole, so the floor
			// cannot be kept and every read is a sweep from the start of
			// the table (order per key needs it; the cost is reading this
			// instance's rows in flight again).
			fw.reset()
		}
		// Never read more new rows than MaxInFlight leaves room for. After
		// the relay caught up, reads start small and double while they
		// come back full: the first rows of a backlog are on their way
		// while the next, larger read runs.
		room := min(readSize, r.cfg.MaxInFlight-nInflight)
		sweep := caughtUp || !fw.ready() || time.Since(lastSweep) >= r.cfg.SweepInterval
		after, limit := fw.floor-1, room
		if fw.holes() {
			// Rows above a hole are read again (and skipped) until it is
			// filled or given up.
			limit = room + nInflight
		}
		if sweep {
			// Read everything still in the table, so rows committed behind
			// the floor are found; skip the ones already on their way.
			after, limit = 0, room+nInflight
		}
		readStart := time.Now()
		var rows []sqlstore.Row
		var err error
		// Whether any key is parked is asked on sweeps (at least every
		// SweepInterval, and after every lease change, since new slots
		// start with a sweep); forward reads between them use the answer.
		// Only this instance parks the keys of its slots, and it sets
		// parkedHint (under mu, before a later read takes its number), so
		// a cached "none" is never stale for a key parked here; a stale
		// "some" only costs the filter until the next sweep.
		if sweep {
			hasParked, err = r.names.HasParked(ctx, r.db)
		}
		r.mu.Lock()
		if r.parkedHint {
			hasParked, r.parkedHint = true, false
		}
		r.mu.Unlock()
		if err == nil {
			opts.Settle = max(r.cfg.VisibilityDelay, 0)
			opts.Unparked = hasParked
			// Parked keys' rows come back thin (numbers only), so that the
			// floor does not take them for holes.
			opts.Thin = opts.Slots == nil
			if opts.Slots != nil || (sweep && nInflight >= lightSweepMin) {
				// Sweeps re-read the rows in flight: read the numbers
				// first, then only the rows not on their way.
				rows, err = r.readSkipping(ctx, readNo, after, limit, opts)
			} else {
				rows, err = r.names.Read(ctx, r.db, after, limit, opts)
			}
		}
		if err == nil && r.obs != nil {
			r.obs.Read(ctx, len(rows), sweep, time.Since(readStart))
		}
		if err != nil {
			r.readDone(readNo)
			if ctx.Err() != nil {
				return
			}
			r.log.ErrorContext(ctx, "relay read failed; retrying", "error", err, "attempt", dbFailures+1)
			if !service.Sleep(ctx, r.backoff(dbFailures)) {
				return
			}
			dbFailures++
			continue
		}
		dbFailures = 0
		if sweep {
			lastSweep = time.Now()
		}
		caughtUp = len(rows) < limit
		// MySQL: rows from the first one younger than VisibilityDelay on
		// are left for a read once it is old enough (not observed, so the
		// floor stops there), as a commit that released its locks just
		// before it was inserted may not be visible yet.
		var settle time.Duration
		for i, row := range rows {
			if row.Settling > 0 {
				settle, rows = row.Settling, rows[:i]
				break
			}
		}
		if caughtUp {
			readSize = min(r.cfg.BatchSize, firstReadSize)
		} else {
			readSize = min(r.cfg.BatchSize, 2*readSize)
		}

		perLane := make([][]item, len(lanes))
		r.mu.Lock()
		// Take at most room new rows (MaxInFlight is a hard bound): the
		// rest of the read is left for the next one, and not observed.
		taken := 0
		for i, row := range rows {
			if row.Thin {
				continue
			}
			if _, busy := r.inflight[row.Seq]; !busy {
				if taken++; taken > room {
					rows = rows[:i]
					caughtUp = false
					break
				}
			}
		}
		fw.observe(rows, time.Now())
		for _, row := range rows {
			if row.Thin {
				continue // another instance's, or a parked key's
			}
			if _, busy := r.inflight[row.Seq]; busy {
				continue
			}
			// Deleted while this read ran: the read may have seen the row
			// before the delete. (A row deleted before the read started and
			// seen anyway was put back: requeued from the dead letters.)
			if at, gone := r.tombstones[row.Seq]; gone && at >= readNo {
				continue
			}
			slot := slotOf(row.Shard)
			r.inflight[row.Seq] = int32(slot)
			r.slotBusy[slot]++
			l := int(row.Shard) % len(lanes)
			perLane[l] = append(perLane[l], item{row: row, readNo: readNo, slot: slot, epoch: epochs[slot]})
		}
		r.readsDone = readNo
		// Rows deleted before this read started cannot show up in any later
		// read: forget them.
		for seq, at := range r.tombstones {
			if at < readNo {
				delete(r.tombstones, seq)
			}
		}
		r.mu.Unlock()
		for l, items := range perLane {
			if len(items) == 0 {
				continue
			}
			select {
			case lanes[l] <- items:
			case <-ctx.Done():
				// Not handed over: forget them, the next run reads them again.
				r.release(seqsOf(items))
			}
		}
		switch {
		case settle > 0:
			r.waitWakeFor(ctx, min(settle, r.cfg.PollInterval))
		case caughtUp:
			r.waitWake(ctx)
		}
	}
}

func seqsOf(items []item) []int64 {
	out := make([]int64, len(items))
	for i, it := range items {
		out[i] = it.row.Seq
	}
	return out
}

func (r *Relay) waitCapacity(ctx context.Context) bool {
	for {
		r.mu.Lock()
		n := len(r.inflight)
		r.mu.Unlock()
		if n < r.cfg.MaxInFlight {
			return true
		}
		select {
		case <-r.released:
		case <-ctx.Done():
			return false
		}
	}
}

func (r *Relay) waitWake(ctx context.Context) { r.waitWakeFor(ctx, r.cfg.PollInterval) }

// waitWakeFor waits until Wake is called (or a notification arrives), d
// passed or ctx ended.
func (r *Relay) waitWakeFor(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.wake:
	case <-t.C:
	case <-ctx.Done():
	}
}

// readSkipping reads like Read, in two statements: the sequence numbers,
// then the rows that are neither in flight nor deleted while this read ran
// (the others come back as thin rows).
//
// Whether a row's key is parked is decided by the first statement alone:
// reading all slots (opts.Thin), parked keys' numbers come back marked thin,
// so that the floor does not take them for holes; reading some slots, they
// are left out (there is no floor, and a parked key with as many rows as the
// limit would otherwise fill every sweep). Either way the second statement
// fetches no row of a key that was parked at the first: had a dead letter
// been requeued in between, its key's later rows would otherwise go out
// before it (it is back under its old number, which the first statement did
// not return).
func (r *Relay) readSkipping(ctx context.Context, readNo, after int64, limit int, opts sqlstore.ReadOpts) ([]sqlstore.Row, error) {
	marks, err := r.names.ReadSeqs(ctx, r.db, after, limit, opts)
	if err != nil || len(marks) == 0 {
		return nil, err
	}
	var want []int64
	r.mu.Lock()
	for _, m := range marks {
		if m.Thin {
			continue
		}
		if _, busy := r.inflight[m.Seq]; busy {
			continue
		}
		if at, gone := r.tombstones[m.Seq]; gone && at >= readNo {
			continue
		}
		want = append(want, m.Seq)
	}
	r.mu.Unlock()
	full, err := r.names.ReadSeqRows(ctx, r.db, want, opts)
	if err != nil {
		return nil, err
	}
	rows := make([]sqlstore.Row, 0, len(marks))
	j := 0
	for _, m := range marks {
		if j < len(full) && full[j].Seq == m.Seq {
			rows = append(rows, full[j])
			j++
			continue
		}
		rows = append(rows, sqlstore.Row{Seq: m.Seq, Thin: true})
	}
	return rows, nil
}

// readDone records that read readNo handed its rows over (or had none).
func (r *Relay) readDone(readNo int64) {
	r.mu.Lock()
	r.readsDone = readNo
	r.mu.Unlock()
}

// waitLeases waits until the lease loop acquired slots, or the poll
// interval passed.
func (r *Relay) waitLeases(ctx context.Context) {
	t := time.NewTimer(r.cfg.PollInterval)
	defer t.Stop()
	select {
	case <-r.leases.changed:
	case <-t.C:
	case <-ctx.Done():
	}
}

func (r *Relay) release(seqs []int64) {
	r.mu.Lock()
	for _, s := range seqs {
		if slot, ok := r.inflight[s]; ok {
			delete(r.inflight, s)
			r.slotBusy[slot]--
		}
	}
	r.mu.Unlock()
	select {
	case r.released <- struct{}{}:
	default:
	}
}

// runLane publishes the batches of one lane in order. Consecutive rows with
// the same topic go out in one Publish call.
func (r *Relay) runLane(ctx context.Context, lane int, in chan []item, acks chan<- []int64) {
	// parked maps a key this lane dead-lettered with the ParkKey policy to
	// the read count at that moment: rows of the key read before then are
	// held back (left in the outbox); later reads exclude them in SQL.
	parked := map[string]int64{}
	for items := range in {
		// Take whatever else is queued for this lane: under a slow broker,
		// one call carries it all instead of one call per read.
		closed := false
	merge:
		for len(items) < maxLaneCall {
			select {
			case more, ok := <-in:
				if !ok {
					closed = true
					break merge
				}
				items = append(items, more...)
			default:
				break merge
			}
		}
		if len(parked) > 0 {
			items = r.dropParked(items, parked)
		}
		for start := 0; start < len(items); {
			end := start + 1
			for end < len(items) && items[end].row.Topic == items[start].row.Topic {
				end++
			}
			group := r.fence(items[start:end])
			rest := items[end:]
			start = end
			if len(group) == 0 {
				continue
			}
			if !r.deliver(ctx, lane, group, parked, acks) {
				// Hard stop: leave the rest of the lane for the next run.
				r.release(seqsOf(group))
				r.release(seqsOf(rest))
				for rest := range in {
					r.release(seqsOf(rest))
				}
				return
			}
		}
		if closed {
			return
		}
	}
}

// maxLaneCall bounds the rows a lane gathers for one publish call from
// the batches queued for it.
const maxLaneCall = BatchSizeMax

// dropParked releases, without publishing, the items of keys parked after
// the items were read.
func (r *Relay) dropParked(items []item, parked map[string]int64) []item {
	kept := items[:0:0]
	var held []int64
	for _, it := range items {
		if at, ok := parked[it.row.Key]; ok && it.readNo <= at {
			held = append(held, it.row.Seq)
			continue
		}
		kept = append(kept, it)
	}
	if len(held) > 0 {
		r.release(held)
	}
	return kept
}

// deliver publishes one group and hands its rows to the acker. A group
// that keeps failing is split into single rows when dead-lettering is on,
// so that only the row that fails goes to the dead letters. It returns
// false on a hard stop.
func (r *Relay) deliver(ctx context.Context, lane int, group []item, parked map[string]int64, acks chan<- []int64) bool {
	switch r.publishGroup(ctx, lane, group) {
	case publishStopped:
		return false
	case publishFenced:
		if group = r.fence(group); len(group) == 0 {
			return true
		}
		return r.deliver(ctx, lane, group, parked, acks)
	case publishSplit:
		for i := range group {
			single := group[i : i+1]
			if len(parked) > 0 {
				if single = r.dropParked(single, parked); len(single) == 0 {
					continue
				}
			}
			switch r.publishGroup(ctx, lane, single) {
			case publishStopped:
				r.release(seqsOf(group[i+1:]))
				return false
			case publishFenced:
				r.fence(single)
				continue
			case publishDead:
				r.deadLetter(ctx, lane, single[0], parked)
				continue
			}
			if !r.ack(ctx, acks, single) {
				return false
			}
		}
		return true
	case publishDead:
		r.deadLetter(ctx, lane, group[0], parked)
		return true
	}
	return r.ack(ctx, acks, group)
}

func (r *Relay) ack(ctx context.Context, acks chan<- []int64, group []item) bool {
	select {
	case acks <- seqsOf(group):
		return true
	case <-ctx.Done():
		// Hard stop: published but not deleted; the next run publishes
		// these rows again (at least once).
		return false
	}
}

// deadLetter moves a row that failed DeadLetterAfter times to the dead
// letters, parking its key when the policy says so.
func (r *Relay) deadLetter(ctx context.Context, lane int, it item, parked map[string]int64) {
	park := r.cfg.DeadLetterPolicy == ParkKey
	for attempt := 0; ; attempt++ {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		moved, err := r.names.MoveToDead(dctx, r.db, it.row.Seq, it.lastErr, park, time.Now(), r.InstanceID())
		cancel()
		if err == nil && !moved && r.leases != nil && !r.leases.valid(it.slot, it.epoch) {
			// Fenced: the slot's new owner has the row.
			r.release([]int64{it.row.Seq})
			r.fenced.Add(1)
			return
		}
		if err == nil {
			r.mu.Lock()
			r.tombstones[it.row.Seq] = r.reads
			if park {
				parked[it.row.Key] = r.reads
				r.parkedHint = true
			}
			r.mu.Unlock()
			r.release([]int64{it.row.Seq})
			if moved {
				r.deadLettered.Add(1)
				r.log.Error("relay moved a row to the dead letters", "seq", it.row.Seq, "id", it.row.ID, "topic", it.row.Topic,
					"key", it.row.Key, "error", it.lastErr, "key_parked", park,
					"hint", "accord outbox dead list | requeue SEQ | drop SEQ")
				if r.obs != nil {
					r.obs.DeadLettered(ctx, Publication{Topic: it.row.Topic, Lane: lane, Messages: 1,
						CreatedAt: []time.Time{it.row.CreatedAt}, Attempt: r.cfg.DeadLetterAfter, Err: errors.New(it.lastErr)})
				}
			}
			return
		}
		r.log.Error("relay could not move a row to the dead letters; retrying", "seq", it.row.Seq, "error", err)
		if !service.Sleep(ctx, r.backoff(attempt)) {
			r.release([]int64{it.row.Seq})
			return
		}
	}
}

// publishResult is how publishGroup ended.
type publishResult int

const (
	publishDone    publishResult = iota // the publisher accepted the group
	publishStopped                      // hard stop: nothing more to do
	publishSplit                        // failed DeadLetterAfter times: publish row by row
	publishDead                         // a single row failed DeadLetterAfter times
	publishFenced                       // a lease of the group's rows ran out: nothing published
)

// errLeaseLost stops a publish call whose rows' lease ran out.
var errLeaseLost = errors.New("accord relay: lease lost")

// fence gives back, unpublished, the items whose lease this instance no
// longer holds, and returns the others. Every item of a lost lease goes:
// none of its epoch is published after one was set aside, so order per key
// holds.
func (r *Relay) fence(items []item) []item {
	if r.leases == nil {
		return items
	}
	if r.leasesValid(items) {
		return items
	}
	kept := items[:0:0]
	var dropped []int64
	for _, it := range items {
		if r.leases.valid(it.slot, it.epoch) {
			kept = append(kept, it)
		} else {
			dropped = append(dropped, it.row.Seq)
		}
	}
	r.release(dropped)
	r.fenced.Add(int64(len(dropped)))
	return kept
}

// leasesValid reports whether this instance still holds the lease of every
// item (checking each slot once).
func (r *Relay) leasesValid(items []item) bool {
	lastSlot, lastEpoch := -1, int64(-1)
	for _, it := range items {
		if it.slot == lastSlot && it.epoch == lastEpoch {
			continue
		}
		if !r.leases.valid(it.slot, it.epoch) {
			return false
		}
		lastSlot, lastEpoch = it.slot, it.epoch
	}
	return true
}

// publishGroup publishes rows of one topic, retrying with backoff until the
// publisher accepts them, ctx ends, or (with DeadLetterAfter) the attempts
// run out.
func (r *Relay) publishGroup(ctx context.Context, lane int, group []item) publishResult {
	var created []time.Time
	if r.obs != nil {
		created = make([]time.Time, len(group))
		for i, it := range group {
			created[i] = it.row.CreatedAt
		}
	}
	for attempt := 0; ; attempt++ {
		start := time.Now()
		spanCtx, span := r.startPublishSpan(ctx, group, attempt)
		err := r.publishOnce(spanCtx, group)
		endSpan(span, err)
		if errors.Is(err, errLeaseLost) {
			return publishFenced
		}
		if r.obs != nil {
			p := Publication{Topic: group[0].row.Topic, Lane: lane, Messages: len(group), CreatedAt: created,
				Attempt: attempt + 1, Duration: time.Since(start), Err: err}
			if err == nil {
				r.obs.Published(ctx, p)
			} else {
				p.RetryIn = r.backoff(attempt)
				r.obs.PublishFailed(ctx, p)
			}
		}
		if err == nil {
			r.published.Add(int64(len(group)))
			if attempt > 0 {
				r.log.Info("relay publish recovered", "topic", group[0].row.Topic, "rows", len(group), "attempts", attempt+1)
			}
			return publishDone
		}
		r.failures.Add(1)
		r.recordFailure(ctx, group, err)
		if n := r.cfg.DeadLetterAfter; n > 0 && attempt+1 >= n {
			if len(group) > 1 {
				return publishSplit
			}
			group[0].lastErr = err.Error()
			return publishDead
		}
		wait := r.backoff(attempt)
		first := group[0].row
		r.log.Error("relay publish failed; retrying", "error", err, "topic", first.Topic,
			"first_seq", first.Seq, "first_id", first.ID, "rows", len(group), "attempt", attempt+1, "retry_in", wait)
		if !service.Sleep(ctx, wait) {
			return publishStopped
		}
	}
}

func (r *Relay) publishOnce(ctx context.Context, group []item) error {
	msgs := make([]*message.Message, 0, len(group))
	for i := range group {
		msg, err := toMessage(&group[i].row)
		if err != nil {
			// Re-read the row: an operator may have repaired (or removed) it.
			fresh, ferr := r.names.ReadOne(ctx, r.db, group[i].row.Seq)
			if ferr == nil && fresh != nil {
				group[i].row = *fresh
				msg, err = toMessage(fresh)
			}
			if err != nil {
				return err
			}
		}
		if r.leases != nil {
			msg.Metadata[outbox.MetadataLease] = strconv.Itoa(group[i].slot) + ":" + strconv.FormatInt(group[i].epoch, 10)
		}
		msgs = append(msgs, msg)
	}
	// The fence, checked as late as possible: no publish call starts
	// after this instance's lease ran out.
	if r.leases != nil && !r.leasesValid(group) {
		return errLeaseLost
	}
	return r.pub.Publish(group[0].row.Topic, msgs...)
}

func (r *Relay) recordFailure(ctx context.Context, group []item, cause error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, it := range group {
		if err := r.names.MarkFailed(ctx, r.db, it.row.Seq, cause, r.InstanceID()); err != nil {
			r.log.Warn("relay could not record a failed attempt", "seq", it.row.Seq, "error", err)
			return
		}
	}
}

// toMessage turns a row into the watermill message the relay publishes.
func toMessage(row *sqlstore.Row) (*message.Message, error) {
	md := message.Metadata{}
	if len(row.Metadata) > 0 {
		if err := json.Unmarshal(row.Metadata, &md); err != nil {
			return nil, fmt.Errorf("%w: seq %d id %s: metadata is not a JSON object of strings: %v", ErrMalformedRow, row.Seq, row.ID, err)
		}
	}
	if md == nil {
		md = message.Metadata{}
	}
	md[outbox.MetadataKey] = row.Key
	if row.Version.Valid {
		md[outbox.MetadataVersion] = strconv.FormatInt(row.Version.Int64, 10)
	}
	md[outbox.MetadataCreatedAt] = row.CreatedAt.UTC().Format(time.RFC3339Nano)
	msg := message.NewMessage(row.ID, row.Payload)
	msg.Metadata = md
	return msg, nil
}

// ackers is the number of goroutines that delete published rows.
func ackers(d accord.Dialect) int {
	if d == accord.SQLite {
		return 1
	}
	return 2
}

// runAcker deletes published rows, many per statement, until stop is
// closed; then it deletes what is left in acks and returns.
func (r *Relay) runAcker(ctx context.Context, acks <-chan []int64, stop <-chan struct{}) {
	for {
		var seqs []int64
		stopping := false
		select {
		case seqs = <-acks:
		case <-stop:
			stopping = true
		}
		// Take whatever else is ready, to delete with one statement.
	more:
		for len(seqs) < 10*r.cfg.BatchSize || stopping {
			select {
			case s := <-acks:
				seqs = append(seqs, s...)
			default:
				break more
			}
		}
		if len(seqs) > 0 {
			r.deleteWithRetry(ctx, seqs)
		}
		if stopping {
			return
		}
	}
}

func (r *Relay) deleteWithRetry(ctx context.Context, seqs []int64) {
	for attempt := 0; ; attempt++ {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		start := time.Now()
		n, err := r.names.DeleteFenced(dctx, r.db, seqs, r.InstanceID())
		took := time.Since(start)
		cancel()
		if err == nil {
			if n < int64(len(seqs)) && r.leases != nil {
				r.log.Warn("relay published rows it could not delete: their lease ran out; the slot's new owner publishes them again (duplicates)",
					"rows", int64(len(seqs))-n)
			}
			r.mu.Lock()
			for _, s := range seqs {
				r.tombstones[s] = r.reads
			}
			r.mu.Unlock()
			r.release(seqs)
			// Counted and observed after the release, so that the deleted
			// count never runs ahead of InFlight.
			r.deleted.Add(n)
			if r.obs != nil {
				r.obs.Deleted(ctx, int(n), took)
			}
			return
		}
		r.log.Error("relay could not delete published rows; retrying (they would be published again after a restart)",
			"error", err, "rows", len(seqs), "attempt", attempt+1)
		if !service.Sleep(ctx, r.backoff(attempt)) {
			r.release(seqs)
			return
		}
	}
}

// backoff returns the wait before retry number attempt (0-based).
func (r *Relay) backoff(attempt int) time.Duration {
	return service.Backoff(attempt, r.cfg.RetryBackoffMin, r.cfg.RetryBackoffMax)
}
