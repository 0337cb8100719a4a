package relay_test

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/internal/testproc"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// scaleLeaseTTL is the lease TTL of the scale-out tests' relay processes:
// short, so that takeovers happen within seconds.
const scaleLeaseTTL = 2 * time.Second

// Three relay processes share one outbox while writers commit; one is
// killed with SIGKILL, a fourth joins later. The survivors take over the
// dead one's slots once its leases expire, the newcomer gets its share
// without duplicates, nothing is lost, each key's events first arrive in
// order, and every duplicate is an event the killed process had published.
func TestScaleOutKillOneOfThree(t *testing.T) {
	t.Parallel()
	processDialects(t, testScaleOutKillOneOfThree)
}

func testScaleOutKillOneOfThree(t *testing.T, env dbtest.Env) {
	spec, w := startScaleOut(t, env)
	children := map[string]*testproc.Child{}
	for _, name := range []string{"A", "B", "C"} {
		s := spec
		s.InstanceID = name
		children[name] = startRelayChild(t, s)
	}
	waitBalanced(t, env, "A", "B", "C")
	waitPublishedBy(t, spec.Sink, 300, "A", "B", "C")

	children["A"].Kill(t)
	killedAt := time.Now()
	waitBalanced(t, env, "B", "C")
	t.Logf("B and C hold every slot %s after A was killed", time.Since(killedAt).Round(time.Millisecond))

	s := spec
	s.InstanceID = "D"
	children["D"] = startRelayChild(t, s)
	waitBalanced(t, env, "B", "C", "D")
	waitPublishedBy(t, spec.Sink, 300, "D")

	sent := w.stop(t)
	waitFor(t, 120*time.Second, "every event published and the outbox empty", func() bool {
		lines, _ := readSink(t, spec.Sink)
		return distinctIDs(lines) >= len(sent) && pending(t, env) == 0
	})
	for _, name := range []string{"B", "C", "D"} {
		stopRelayChild(t, children[name], spec.ShutdownTimeout)
	}

	lines, partial := readSink(t, spec.Sink)
	require.Zero(t, partial, "torn line")
	dups := checkKeyedReceipts(t, sent, lines)
	checkFencing(t, lines, nil)
	byA := map[string]bool{}
	for _, l := range lines {
		if l.Instance == "A" {
			byA[l.ID] = true
		}
	}
	first := map[string]int{}
	for i, l := range lines {
		if j, ok := first[l.ID]; ok {
			p := lines[j]
			require.True(t, byA[l.ID], "event %s (key %s #%d) published twice, never by the killed relay (a duplicate in steady state): line %d by %s lease %s began %s, line %d by %s lease %s began %s",
				l.ID, l.Key, l.N, j, p.Instance, p.Lease, p.Entered.Format(time.RFC3339Nano), i, l.Instance, l.Lease, l.Entered.Format(time.RFC3339Nano))
			continue
		}
		first[l.ID] = i
	}
	t.Logf("%d events, %d duplicates (all first published by the killed relay; MaxInFlight %d)", len(sent), dups, spec.MaxInFlight)
	require.LessOrEqual(t, dups, spec.MaxInFlight)
	require.Zero(t, pending(t, env))
}

// Two relay processes share one outbox; one is frozen with SIGSTOP for
// longer than its lease, so the other takes all its slots, then thawed with
// SIGCONT. The thawed process publishes nothing under the leases it lost
// (its publish calls that began before the freeze may still land: the
// duplicates a crash can cause), rejoins, and gets its share back. Nothing
// is lost and each key's events first arrive in order.
func TestScaleOutPausedRelayIsFenced(t *testing.T) {
	t.Parallel()
	processDialects(t, testScaleOutPausedRelayIsFenced)
}

func testScaleOutPausedRelayIsFenced(t *testing.T, env dbtest.Env) {
	spec, w := startScaleOut(t, env)
	a, b := spec, spec
	a.InstanceID, b.InstanceID = "A", "B"
	childA, childB := startRelayChild(t, a), startRelayChild(t, b)
	waitBalanced(t, env, "A", "B")
	waitPublishedBy(t, spec.Sink, 300, "A", "B")

	slotsA := leaseSlotsOf(t, env, "A")
	require.NotEmpty(t, slotsA)
	stoppedAt := childA.Pause(t)
	waitBalanced(t, env, "B")
	t.Logf("B holds every slot %s after A was stopped", time.Since(stoppedAt).Round(time.Millisecond))
	// B publishes rows of A's former slots under its new epochs.
	waitFor(t, 60*time.Second, "B to publish events of slots A held", func() bool {
		lines, _ := readSink(t, spec.Sink)
		n := 0
		for _, l := range lines {
			if l.Instance == "B" && l.Entered.After(stoppedAt) && slotsA[leaseSlot(t, l.Lease)] {
				n++
			}
		}
		return n >= 100
	})
	resumedAt := childA.Resume(t)
	t.Logf("A was stopped for %s", resumedAt.Sub(stoppedAt).Round(time.Millisecond))
	waitBalanced(t, env, "A", "B")
	waitFor(t, 60*time.Second, "A to publish again after it rejoined", func() bool {
		lines, _ := readSink(t, spec.Sink)
		for _, l := range lines {
			if l.Instance == "A" && l.Entered.After(resumedAt) {
				return true
			}
		}
		return false
	})

	sent := w.stop(t)
	waitFor(t, 120*time.Second, "every event published and the outbox empty", func() bool {
		lines, _ := readSink(t, spec.Sink)
		return distinctIDs(lines) >= len(sent) && pending(t, env) == 0
	})
	stopRelayChild(t, childA, spec.ShutdownTimeout)
	stopRelayChild(t, childB, spec.ShutdownTimeout)

	lines, partial := readSink(t, spec.Sink)
	require.Zero(t, partial, "torn line")
	dups := checkKeyedReceipts(t, sent, lines)
	late := checkFencing(t, lines, map[string]time.Time{"A": stoppedAt})
	t.Logf("%d events, %d duplicates, %d publishes of A that began before the freeze and landed after B took over", len(sent), dups, late)
	require.LessOrEqual(t, dups, spec.MaxInFlight)
	require.Zero(t, pending(t, env))
}

// startScaleOut starts paced writers on env's outbox and returns the relay
// process spec the scale-out tests share (without InstanceID).
func startScaleOut(t *testing.T, env dbtest.Env) (relayChildSpec, *keyedWriters) {
	t.Helper()
	spec := relayChildSpec{
		Dialect: env.Dialect, URL: env.URL, Schema: env.Schema, Sink: filepath.Join(t.TempDir(), "sink.log"),
		BatchSize: 200, Lanes: 8, MaxInFlight: 800, ShutdownTimeout: 10 * time.Second,
		PerMessageDelay: 100 * time.Microsecond, LeaseTTL: scaleLeaseTTL,
	}
	return spec, startKeyedWriters(t, env, newOutbox(t, env), crashKeys(60), 6)
}

// checkFencing checks the fencing tokens in the order the destination
// received the messages: per slot, a message never carries an older epoch
// than one received before it, except messages of an instance in frozen
// whose publish call began before it was frozen. It returns how many such
// late messages there were.
func checkFencing(t *testing.T, lines []keyedReceipt, frozen map[string]time.Time) int {
	t.Helper()
	maxEpoch := map[int]int64{}
	late := 0
	for i, l := range lines {
		slot, epoch := leaseToken(t, l.Lease)
		if epoch < maxEpoch[slot] {
			at, ok := frozen[l.Instance]
			require.True(t, ok && l.Entered.Before(at),
				"line %d: %s published event %s (key %s) under lease %s after epoch %d of slot %d had been published: a fenced instance published",
				i, l.Instance, l.ID, l.Key, l.Lease, maxEpoch[slot], slot)
			late++
			continue
		}
		maxEpoch[slot] = epoch
	}
	return late
}

func leaseToken(t *testing.T, s string) (slot int, epoch int64) {
	t.Helper()
	a, b, ok := strings.Cut(s, ":")
	require.True(t, ok, "lease token %q", s)
	slot, err := strconv.Atoi(a)
	require.NoError(t, err, "lease token %q", s)
	epoch, err = strconv.ParseInt(b, 10, 64)
	require.NoError(t, err, "lease token %q", s)
	require.True(t, slot >= 0 && slot < relay.Slots && epoch > 0, "lease token %q", s)
	return slot, epoch
}

func leaseSlot(t *testing.T, s string) int {
	slot, _ := leaseToken(t, s)
	return slot
}

// leaseOwners returns, per instance name (the owner id up to its random
// suffix), the number of unexpired leases it holds.
func leaseOwners(t *testing.T, env dbtest.Env) map[string]int {
	t.Helper()
	now := "(extract(epoch from clock_timestamp()) * 1000)::bigint"
	if env.Dialect == accord.MySQL {
		now = "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000 AS SIGNED)"
	}
	rows, err := env.DB.Query(`SELECT owner, count(*) FROM ` + table(env, "relay_lease") +
		` WHERE owner <> '' AND expires_at_ms > ` + now + ` GROUP BY owner`)
	require.NoError(t, err)
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var owner string
		var n int
		require.NoError(t, rows.Scan(&owner, &n))
		name := owner[:strings.LastIndexByte(owner, '-')]
		out[name] += n
	}
	require.NoError(t, rows.Err())
	return out
}

func leaseSlotsOf(t *testing.T, env dbtest.Env, name string) map[int]bool {
	t.Helper()
	rows, err := env.DB.Query(`SELECT slot FROM ` + table(env, "relay_lease") + ` WHERE owner LIKE '` + name + `-%'`)
	require.NoError(t, err)
	defer rows.Close()
	out := map[int]bool{}
	for rows.Next() {
		var s int
		require.NoError(t, rows.Scan(&s))
		out[s] = true
	}
	require.NoError(t, rows.Err())
	return out
}

// waitBalanced waits until exactly the named instances hold every slot,
// each its share (64 / n rounded down or up).
func waitBalanced(t *testing.T, env dbtest.Env, names ...string) {
	t.Helper()
	share := relay.Slots / len(names)
	waitFor(t, 60*time.Second, "leases balanced over "+strings.Join(names, ", "), func() bool {
		owners := leaseOwners(t, env)
		total := 0
		for _, name := range names {
			if owners[name] < share || owners[name] > share+1 {
				return false
			}
			total += owners[name]
		}
		return total == relay.Slots && len(owners) == len(names)
	})
}

// waitPublishedBy waits until each named instance published at least n
// events into the sink file.
func waitPublishedBy(t *testing.T, sink string, n int, names ...string) {
	t.Helper()
	waitFor(t, 60*time.Second, "events published by "+strings.Join(names, ", "), func() bool {
		lines, _ := readSink(t, sink)
		count := map[string]int{}
		for _, l := range lines {
			count[l.Instance]++
		}
		for _, name := range names {
			if count[name] < n {
				return false
			}
		}
		return true
	})
}

// keyedWriters commit events of their own keys, one transaction at a time,
// until stopped.
type keyedWriters struct {
	stopCh chan struct{}
	wg     sync.WaitGroup
	sent   []map[string]keyedEvent
	errs   []error
	n      atomic.Int64
	once   sync.Once
}

// startKeyedWriters starts n writers over keys (each owns every n-th key,
// so each key's events are committed in order); they stop at the end of
// the test at the latest.
func startKeyedWriters(t *testing.T, env dbtest.Env, ob *outbox.Outbox, keys []string, n int) *keyedWriters {
	t.Helper()
	w := &keyedWriters{stopCh: make(chan struct{}), sent: make([]map[string]keyedEvent, n), errs: make([]error, n)}
	ctx := context.Background()
	for i := range n {
		var own []string
		for k := i; k < len(keys); k += n {
			own = append(own, keys[k])
		}
		next := map[string]int64{}
		w.sent[i] = map[string]keyedEvent{}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			// Paced (about 10 transactions of 2 events per key a second per
			// writer), so the relays keep up and the test's load is steady.
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-w.stopCh:
					return
				case <-tick.C:
				}
				before := len(w.sent[i])
				if err := writeKeyed(ctx, env.DB, ob, crashTopic, own, 2, next, w.sent[i]); err != nil {
					w.errs[i] = err
					return
				}
				w.n.Add(int64(len(w.sent[i]) - before))
			}
		}()
	}
	t.Cleanup(func() { w.once.Do(func() { close(w.stopCh) }); w.wg.Wait() })
	return w
}

// stop stops the writers and returns every event they committed.
func (w *keyedWriters) stop(t *testing.T) map[string]keyedEvent {
	t.Helper()
	w.once.Do(func() { close(w.stopCh) })
	w.wg.Wait()
	all := map[string]keyedEvent{}
	for i, m := range w.sent {
		require.NoError(t, w.errs[i], "writer %d", i)
		for id, ev := range m {
			all[id] = ev
		}
	}
	return all
}
