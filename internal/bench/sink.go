package bench

import (
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Metadata keys every benchmark event carries, so that the sink can check
// what it received without a lookup table.
const (
	mdIndex = "bench_idx" // 0-based index of the event in its phase
	mdKey   = "bench_key" // partition key
	mdSeq   = "bench_seq" // 0-based sequence number of the event within its key
)

// receipt is one message the sink received.
type receipt struct {
	id  string
	key string
	idx int64 // -1 if the metadata was missing or malformed
	seq int64
	at  int64 // nanoseconds since the sink's clock base (monotonic)
}

// sink records what the destination received. With the in-process
// destination it is the message.Publisher itself: the relays (all lanes at
// once) and the watermill forwarder publish into it and it returns at once.
// With a broker destination the benchmark subscribes to the phase's topic
// and passes every message it receives to record. Metadata is parsed before
// the lock is taken, so the critical section is one append and one map
// insert per message.
type sink struct {
	base   time.Time // clock base shared with the writers of the latency phase
	target int64
	delay  time.Duration // slept in every Publish call (Options.PublishLatency)

	mu       sync.Mutex
	recs     []receipt
	distinct map[string]struct{} // UUIDs received

	n      atomic.Int64 // messages received, duplicates included
	unique atomic.Int64 // distinct UUIDs received
	done   chan struct{}
	doneAt atomic.Int64 // receive time (ns since base) of the receipt that reached target
	once   sync.Once
}

var _ message.Publisher = (*sink)(nil)

func newSink(base time.Time, target int) *sink {
	return &sink{base: base, target: int64(target), recs: make([]receipt, 0, target),
		distinct: make(map[string]struct{}, target), done: make(chan struct{})}
}

// Publish records msgs with the time of the call (the in-process
// destination), after sleeping the injected publish latency.
func (s *sink) Publish(_ string, msgs ...*message.Message) error {
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	s.record(int64(time.Since(s.base)), msgs...)
	return nil
}

// record records msgs as received at at (ns since base). done is closed
// once target distinct messages (by UUID) arrived, so that duplicates do not
// end a phase early.
func (s *sink) record(at int64, msgs ...*message.Message) {
	var one [1]receipt
	local := one[:0]
	if len(msgs) > 1 {
		local = make([]receipt, 0, len(msgs))
	}
	for _, m := range msgs {
		r := receipt{id: m.UUID, key: m.Metadata.Get(mdKey), idx: -1, seq: -1, at: at}
		if v, err := strconv.ParseInt(m.Metadata.Get(mdIndex), 10, 64); err == nil {
			r.idx = v
		}
		if v, err := strconv.ParseInt(m.Metadata.Get(mdSeq), 10, 64); err == nil {
			r.seq = v
		}
		local = append(local, r)
	}
	added := int64(0)
	s.mu.Lock()
	s.recs = append(s.recs, local...)
	for _, r := range local {
		if _, ok := s.distinct[r.id]; !ok {
			s.distinct[r.id] = struct{}{}
			added++
		}
	}
	s.mu.Unlock()
	s.n.Add(int64(len(msgs)))
	if u := s.unique.Add(added); added > 0 && u >= s.target {
		s.once.Do(func() {
			s.doneAt.Store(at)
			close(s.done)
		})
	}
}

// Close is a no-op: the sink stays readable after the relay closes it.
func (s *sink) Close() error { return nil }

// Received returns the number of distinct messages received so far.
func (s *sink) Received() int64 { return s.unique.Load() }

// receipts returns a copy of what was received, in receive order.
func (s *sink) receipts() []receipt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]receipt(nil), s.recs...)
}

// check is what the verification of one phase found.
type check struct {
	Received        int64
	Lost            int64 // expected events never received
	Duplicates      int64 // receipts beyond the first of an event
	OrderViolations int64 // first receipts whose per-key sequence is lower than one already received for that key
	Unexpected      int64 // receipts that match no expected event (unknown index or wrong UUID)
	// Latencies (ns) of the first receipt of each event, when the writers'
	// commit times were given.
	Latencies []int64
}

// verify compares the receipts with the expected events. ids[i] is the UUID
// of event i. committedAt, when not nil, holds for each event the time (ns
// since the sink's base) just before its transaction committed; events with
// a zero entry are excluded from latencies.
func verify(recs []receipt, ids []string, committedAt []int64) check {
	c := check{Received: int64(len(recs))}
	seen := make([]bool, len(ids))
	maxSeq := map[string]int64{}
	for _, r := range recs {
		if r.idx < 0 || r.idx >= int64(len(ids)) || ids[r.idx] != r.id {
			c.Unexpected++
			continue
		}
		if seen[r.idx] {
			c.Duplicates++
			continue
		}
		seen[r.idx] = true
		if last, ok := maxSeq[r.key]; ok && r.seq < last {
			c.OrderViolations++
		} else {
			maxSeq[r.key] = r.seq
		}
		if committedAt != nil && committedAt[r.idx] != 0 {
			c.Latencies = append(c.Latencies, r.at-committedAt[r.idx])
		}
	}
	for _, ok := range seen {
		if !ok {
			c.Lost++
		}
	}
	return c
}

// percentile returns the p-th percentile (0 < p ≤ 100, nearest rank) of
// sorted values.
func percentile(sorted []int64, p float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(float64(len(sorted))*p/100)) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

func sortInt64s(v []int64) { slices.Sort(v) }
