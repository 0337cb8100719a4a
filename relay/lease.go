package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/accordgo/accord/internal/service"
	"github.com/accordgo/accord/internal/sqlstore"
)

// Slots is the number of lease slots: the outbox's rows are divided into
// Slots groups by partition key (slot = shard % Slots), and a relay instance
// publishes a slot's rows only while it holds the slot's lease. Several
// relay processes on one outbox share the slots, so at most Slots processes
// do useful work.
const Slots = sqlstore.LeaseSlots

// slotOf returns the lease slot of a shard.
func slotOf(shard int32) int { return int(shard) % Slots }

// heldSlot is a lease this instance holds.
type heldSlot struct {
	epoch int64
	// deadline is when this instance stops publishing the slot's rows
	// unless it renewed the lease: the start of the last successful
	// renewal plus LeaseTTL minus a safety margin, on the local monotonic
	// clock. The database lets another instance take the slot only after
	// that renewal plus LeaseTTL on its own clock, which is later.
	deadline time.Time
	// releasing: no more reads of the slot; the lease is given up once
	// its rows in flight are published and deleted, and every read that
	// may have included the slot (numbers up to drainReads) handed its rows
	// over.
	releasing  bool
	drainReads int64
}

// leaser takes, renews and gives up this instance's leases.
type leaser struct {
	r      *Relay
	owner  string
	ttl    time.Duration
	margin time.Duration

	mu   sync.Mutex
	held map[int]*heldSlot
	// gen grows when a slot is acquired: the reader then reads the whole
	// table again to find the slot's older rows.
	gen int64
	// changed is signalled when slots were acquired.
	changed chan struct{}
}

func newOwnerID(instance string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return instance + "-" + hex.EncodeToString(b[:])
}

// defaultInstanceID is the host name and process id.
func defaultInstanceID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "relay"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}

func newLeaser(r *Relay) *leaser {
	return &leaser{
		r:       r,
		owner:   newOwnerID(r.cfg.InstanceID),
		ttl:     r.cfg.LeaseTTL,
		margin:  r.cfg.LeaseTTL / 5,
		held:    map[int]*heldSlot{},
		changed: make(chan struct{}, 1),
	}
}

// readable returns the slots the reader may read now and the epoch of
// each (by slot).
func (l *leaser) readable() (slots []int, epochs [Slots]int64, gen int64) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for s, h := range l.held {
		if !l.checkLocked(s, h, now) {
			continue
		}
		if !h.releasing {
			slots = append(slots, s)
			epochs[s] = h.epoch
		}
	}
	sort.Ints(slots)
	return slots, epochs, l.gen
}

// valid reports whether this instance still holds slot at epoch, by its
// local deadline.
func (l *leaser) valid(slot int, epoch int64) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	h, ok := l.held[slot]
	return ok && h.epoch == epoch && l.checkLocked(slot, h, now)
}

// checkLocked reports whether h has not passed its deadline. A lease past
// its deadline is dropped for good, even if a late renewal would still
// succeed: rows of its epoch may have been set aside already, so none of
// them may be published after (order per key). The cycle gives the slot
// up in the database and may take it again later with a new epoch.
func (l *leaser) checkLocked(slot int, h *heldSlot, now time.Time) bool {
	if now.Before(h.deadline) {
		return true
	}
	delete(l.held, slot)
	l.r.log.Warn("relay lease ran out before it was renewed (the process was paused or the database unreachable); this instance stops publishing the slot",
		"slot", slot, "epoch", h.epoch, "late_by", now.Sub(h.deadline).Round(time.Millisecond), "lease_ttl", l.ttl)
	return false
}

// heldCount returns the number of slots held.
func (l *leaser) heldCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.held)
}

// run renews and rebalances the leases until ctx ends. ready is closed
// after the first cycle, successful or not.
func (l *leaser) run(ctx context.Context, ready chan<- struct{}) {
	failures := 0
	first := true
	for {
		next, err := l.cycle(ctx)
		if first {
			close(ready)
			first = false
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			l.r.log.ErrorContext(ctx, "relay could not renew its leases; retrying", "error", err, "attempt", failures+1,
				"held", l.heldCount())
			next = min(l.r.backoff(failures), l.margin)
			failures++
		} else {
			failures = 0
		}
		if !service.Sleep(ctx, next) {
			return
		}
	}
}

// cycle sends a heartbeat, renews the held leases, gives up slots over
// this instance's share and takes free slots up to it. It returns when to
// run the next cycle. Every step is one statement, whatever the number of
// slots, so a cycle stays short next to the lease TTL.
func (l *leaser) cycle(ctx context.Context) (time.Duration, error) {
	r := l.r
	ctx, cancel := context.WithTimeout(ctx, l.ttl)
	defer cancel()
	ttlMS := l.ttl.Milliseconds()
	live, err := r.names.Heartbeat(ctx, r.db, l.owner, ttlMS)
	if err != nil {
		return 0, fmt.Errorf("heartbeat: %w", err)
	}
	// The database extends the leases from its clock at the UPDATE, which
	// is after start: the local deadline never outlasts the lease.
	start := time.Now()
	if err := r.names.RenewLeases(ctx, r.db, l.owner, ttlMS); err != nil {
		return 0, fmt.Errorf("renew: %w", err)
	}
	state, nowMS, err := r.names.LeaseState(ctx, r.db)
	if err != nil {
		return 0, fmt.Errorf("read leases: %w", err)
	}
	if len(state) != Slots {
		return 0, fmt.Errorf("lease table %s has %d rows, want %d: re-run `accord migrate up`", r.names.Lease(), len(state), Slots)
	}
	target := shareOf(live, l.owner)

	l.mu.Lock()
	// Renewal: keep what the database still says is ours.
	var lost []int
	for s, h := range l.held {
		st := state[s]
		if st.Owner == l.owner && st.Epoch == h.epoch && st.ExpiresAtMS > nowMS {
			h.deadline = start.Add(l.ttl - l.margin)
			continue
		}
		delete(l.held, s)
		lost = append(lost, s)
	}
	keep := 0
	var keepers []int
	for s, h := range l.held {
		if !h.releasing {
			keep++
			keepers = append(keepers, s)
		}
	}
	// Over the share: stop reading the highest slots and give them up once
	// their rows in flight are done (no duplicates on a rebalance).
	var marked []int
	if keep > target {
		sort.Sort(sort.Reverse(sort.IntSlice(keepers)))
		marked = keepers[:keep-target]
		for _, s := range marked {
			l.held[s].releasing = true
		}
		keep = target
	}
	l.mu.Unlock()
	// Reads that started before the mark may include the marked slots;
	// their numbers are at most reads, taken after the mark.
	busy, reads, readsDone := r.readState()
	l.mu.Lock()
	for _, s := range marked {
		if h, ok := l.held[s]; ok {
			h.drainReads = reads
		}
	}
	var release []int
	pendingRelease := 0
	for s, h := range l.held {
		if !h.releasing {
			continue
		}
		if h.drainReads > 0 && readsDone >= h.drainReads && busy[s] == 0 {
			release = append(release, s)
			// Not ours from here on: a row of the slot still on its way is
			// fenced, before the new owner can take it.
			delete(l.held, s)
		} else {
			pendingRelease++
		}
	}
	// Leases the database still gives this instance but it dropped (past
	// their local deadline): give them up once their rows are settled.
	for _, st := range state {
		if _, mine := l.held[st.Slot]; mine || st.Owner != l.owner || st.ExpiresAtMS <= nowMS || slices.Contains(release, st.Slot) {
			continue
		}
		if busy[st.Slot] == 0 {
			release = append(release, st.Slot)
		} else {
			pendingRelease++
		}
	}
	l.mu.Unlock()
	if len(lost) > 0 {
		sort.Ints(lost)
		r.log.WarnContext(ctx, "relay lost leases it did not give up (paused or cut off from the database longer than the lease TTL); their rows in flight will not be published or deleted by this instance",
			"slots", lost, "lease_ttl", l.ttl)
	}
	// On error the released leases stay in the database, as orphans that
	// the next cycle gives up.
	if err := r.names.ReleaseLeases(ctx, r.db, release, l.owner); err != nil {
		return 0, fmt.Errorf("release slots: %w", err)
	}

	// Under the share: take free or expired slots whose rows this
	// instance no longer has in flight.
	need := target - keep
	perOwner := map[string]int{}
	var free []int
	for _, st := range state {
		if st.Owner != "" && st.Owner != l.owner && st.ExpiresAtMS > nowMS {
			perOwner[st.Owner]++
		}
		if st.ExpiresAtMS <= nowMS && busy[st.Slot] == 0 && !slices.Contains(release, st.Slot) {
			free = append(free, st.Slot)
		}
	}
	othersOver := false
	for _, n := range perOwner {
		othersOver = othersOver || n > target
	}
	acquired := 0
	if need > 0 && len(free) > 0 {
		t0 := time.Now()
		n, err := r.names.AcquireLeases(ctx, r.db, free[:min(need, len(free))], l.owner, ttlMS)
		if err != nil {
			return 0, fmt.Errorf("acquire slots: %w", err)
		}
		if n > 0 {
			after, _, err := r.names.LeaseState(ctx, r.db)
			if err != nil {
				// The acquired leases are orphans until the next cycle.
				return 0, fmt.Errorf("read leases: %w", err)
			}
			l.mu.Lock()
			for _, st := range after {
				if _, mine := l.held[st.Slot]; !mine && st.Owner == l.owner && st.Epoch != state[st.Slot].Epoch {
					l.held[st.Slot] = &heldSlot{epoch: st.Epoch, deadline: t0.Add(l.ttl - l.margin)}
					acquired++
				}
			}
			l.gen++
			l.mu.Unlock()
			need -= acquired
		}
	}
	if acquired > 0 {
		select {
		case l.changed <- struct{}{}:
		default:
		}
		r.Wake()
	}
	held := l.heldCount()
	if acquired > 0 || len(release) > 0 || len(lost) > 0 {
		r.log.InfoContext(ctx, "relay leases changed", "held", held, "acquired", acquired, "released", len(release),
			"lost", len(lost), "live_instances", len(live), "share", target)
	}
	if r.obs != nil {
		r.obs.Leases(ctx, held, len(live))
	}
	// Renewals need one cycle per margin; rebalancing (an instance joined
	// or left) is noticed within a second.
	next := min(l.margin, time.Second)
	if pendingRelease > 0 || (need > 0 && othersOver) {
		next = min(next, 100*time.Millisecond)
	}
	return next, nil
}

// shareOf returns owner's share of the slots among the live instances
// (sorted ids): Slots / n each, and one more for the first Slots % n, so
// that the shares add up to Slots exactly.
func shareOf(live []string, owner string) int {
	n := len(live)
	idx := sort.SearchStrings(live, owner)
	if n == 0 || idx == n || live[idx] != owner {
		return (Slots + n) / (n + 1) // not listed: count it in, round up
	}
	share := Slots / n
	if idx < Slots%n {
		share++
	}
	return share
}

// releaseAll gives up every lease and removes the heartbeat, at shutdown.
func (l *leaser) releaseAll(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := l.r.names.ReleaseAll(ctx, l.r.db, l.owner); err != nil {
		l.r.log.Warn("relay could not give up its leases; other instances take them when they expire", "error", err, "lease_ttl", l.ttl)
	}
	if err := l.r.names.RemoveInstance(ctx, l.r.db, l.owner); err != nil {
		l.r.log.Warn("relay could not remove its heartbeat", "error", err)
	}
	l.mu.Lock()
	l.held = map[int]*heldSlot{}
	l.mu.Unlock()
}
