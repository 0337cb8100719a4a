package relay_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/internal/testproc"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// The relay process is killed with SIGKILL while it drains a backlog and
// writers keep committing; a second relay process takes over. Nothing is
// lost, each key's events first arrive in order, and the duplicates (rows
// published but not yet deleted at the kill) stay within MaxInFlight.
func TestKillDashNine(t *testing.T) {
	t.Parallel()
	processDialects(t, testKillDashNine)
}

func testKillDashNine(t *testing.T, env dbtest.Env) {
	ob := newOutbox(t, env)
	ctx := context.Background()
	keys := crashKeys(50)

	sent := map[string]keyedEvent{}
	next := map[string]int64{}
	for range 20 { // 20 transactions × 50 keys × 20 events = 20,000 events
		require.NoError(t, writeKeyed(ctx, env.DB, ob, crashTopic, keys, 20, next, sent))
	}
	seeded := len(sent)

	spec := relayChildSpec{
		Dialect: env.Dialect, URL: env.URL, Schema: env.Schema, Sink: filepath.Join(t.TempDir(), "sink.log"),
		BatchSize: 500, Lanes: 16, MaxInFlight: 2000, ShutdownTimeout: 10 * time.Second,
		PerMessageDelay: 50 * time.Microsecond,
		// The second relay takes over the killed one's leases when they
		// expire.
		LeaseTTL: 2 * time.Second,
	}
	first := startRelayChild(t, spec)

	// Writers keep committing while the first relay runs, so the kill lands
	// under load. Each writer owns every 5th key and commits one
	// transaction at a time, so each key's writes are serialized and its
	// sequence numbers are its commit order.
	const writers = 5
	stop := make(chan struct{})
	var written atomic.Int64
	var wg sync.WaitGroup
	writerSent := make([]map[string]keyedEvent, writers)
	writerErr := make([]error, writers)
	for w := range writers {
		var own []string
		for i := w; i < len(keys); i += writers {
			own = append(own, keys[i])
		}
		ownNext := map[string]int64{}
		for _, k := range own {
			ownNext[k] = next[k]
		}
		writerSent[w] = map[string]keyedEvent{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				before := len(writerSent[w])
				if err := writeKeyed(ctx, env.DB, ob, crashTopic, own, 2, ownNext, writerSent[w]); err != nil {
					writerErr[w] = err
					return
				}
				written.Add(int64(len(writerSent[w]) - before))
			}
		}()
	}
	stopWriters := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopWriters)

	waitFor(t, 60*time.Second, "2,000 published events and 200 concurrent writes", func() bool {
		return sinkLineCount(t, spec.Sink) >= 2000 && written.Load() >= 200
	})
	first.Kill(t)

	stopWriters()
	for w := range writers {
		require.NoError(t, writerErr[w], "writer %d", w)
		for id, ev := range writerSent[w] {
			sent[id] = ev
		}
	}
	atKill, partial := readSink(t, spec.Sink)
	require.Less(t, len(atKill), len(sent), "the first relay had published everything before the kill")
	t.Logf("killed the relay after %d of %d events were published (%d seeded, %d written concurrently); partial line: %d bytes",
		len(atKill), len(sent), seeded, len(sent)-seeded, partial)
	if partial > 0 {
		// The kill interrupted a write: that Publish never returned, so its
		// rows are still in the outbox. Drop the torn line, as a broker drops
		// an unacknowledged partial frame.
		fi, err := os.Stat(spec.Sink)
		require.NoError(t, err)
		require.NoError(t, os.Truncate(spec.Sink, fi.Size()-int64(partial)))
	}

	second := startRelayChild(t, spec)
	waitFor(t, 120*time.Second, "the second relay to publish every event and empty the outbox", func() bool {
		lines, _ := readSink(t, spec.Sink)
		return distinctIDs(lines) >= len(sent) && pending(t, env) == 0
	})
	stopRelayChild(t, second, spec.ShutdownTimeout)

	lines, partial := readSink(t, spec.Sink)
	require.Zero(t, partial, "torn line after a graceful stop")
	dups := checkKeyedReceipts(t, sent, lines)
	t.Logf("duplicates after kill -9: %d (MaxInFlight %d, BatchSize %d)", dups, spec.MaxInFlight, spec.BatchSize)
	require.LessOrEqual(t, dups, spec.MaxInFlight, "more duplicates than rows can be in flight")
	require.Zero(t, pending(t, env), "rows left in the outbox")
}

// SIGTERM in the middle of a backlog: the relay finishes the rows it already
// read, deletes every row it published and exits 0 within ShutdownTimeout.
// Nothing it published is left in the table, so a second relay publishes the
// rest without a single duplicate.
func TestGracefulShutdownSIGTERM(t *testing.T) {
	t.Parallel()
	processDialects(t, testGracefulShutdownSIGTERM)
}

func testGracefulShutdownSIGTERM(t *testing.T, env dbtest.Env) {
	ob := newOutbox(t, env)
	ctx := context.Background()
	keys := crashKeys(50)

	sent := map[string]keyedEvent{}
	next := map[string]int64{}
	for range 20 {
		require.NoError(t, writeKeyed(ctx, env.DB, ob, crashTopic, keys, 20, next, sent))
	}

	spec := relayChildSpec{
		Dialect: env.Dialect, URL: env.URL, Schema: env.Schema, Sink: filepath.Join(t.TempDir(), "sink.log"),
		BatchSize: 500, Lanes: 16, MaxInFlight: 2000, ShutdownTimeout: 10 * time.Second,
		// A broker that takes 200 µs per message: the backlog takes several
		// seconds, the at most 2,000 rows in flight at SIGTERM about one.
		PerMessageDelay: 200 * time.Microsecond,
	}
	first := startRelayChild(t, spec)
	waitFor(t, 60*time.Second, "2,000 published events", func() bool { return sinkLineCount(t, spec.Sink) >= 2000 })
	elapsed := stopRelayChild(t, first, spec.ShutdownTimeout)
	t.Logf("relay exited %s after SIGTERM", elapsed.Round(time.Millisecond))

	lines, partial := readSink(t, spec.Sink)
	require.Zero(t, partial, "torn line after a graceful stop")
	published := map[string]bool{}
	for _, l := range lines {
		_, ok := sent[l.ID]
		require.True(t, ok, "unknown event %s", l.ID)
		require.False(t, published[l.ID], "event %s published twice", l.ID)
		published[l.ID] = true
	}
	left := outboxIDs(t, env)
	require.NotEmpty(t, left, "the relay had drained the whole backlog before SIGTERM")
	for _, id := range left {
		require.False(t, published[id], "event %s was published but is still in the outbox", id)
	}
	require.Equal(t, len(sent), len(published)+len(left), "published + still in the outbox != written")
	t.Logf("published %d of %d before SIGTERM; %d left in the outbox", len(published), len(sent), len(left))

	spec.PerMessageDelay = 0
	second := startRelayChild(t, spec)
	waitFor(t, 120*time.Second, "the second relay to publish every event and empty the outbox", func() bool {
		return sinkLineCount(t, spec.Sink) >= len(sent) && pending(t, env) == 0
	})
	stopRelayChild(t, second, spec.ShutdownTimeout)

	lines, _ = readSink(t, spec.Sink)
	require.Zero(t, checkKeyedReceipts(t, sent, lines), "duplicates after a graceful shutdown")
	require.Len(t, lines, len(sent))
}

const crashTopic = "crash"

func crashKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%02d", i)
	}
	return keys
}

// keyedEvent is an event of the crash and destination tests. N is its place
// in its key's sequence, from 1; it travels as the aggregate version
// (accord_version) and as the payload.
type keyedEvent struct {
	Key string
	N   int64
}

// writeKeyed writes perKey events for each of keys in one transaction,
// numbered after next[key]. Once committed, it advances next and adds the
// events to out.
func writeKeyed(ctx context.Context, db *sql.DB, ob *outbox.Outbox, topic string, keys []string, perKey int,
	next map[string]int64, out map[string]keyedEvent) error {
	evs := make([]outbox.Event, 0, len(keys)*perKey)
	batch := map[string]keyedEvent{}
	for j := 1; j <= perKey; j++ {
		for _, k := range keys {
			n := next[k] + int64(j)
			m := outbox.NewMessage([]byte(strconv.FormatInt(n, 10)))
			evs = append(evs, outbox.Event{Topic: topic, Key: k, Version: n, Message: m})
			batch[m.UUID] = keyedEvent{Key: k, N: n}
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := ob.WriteTx(ctx, tx, evs...); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	for _, k := range keys {
		next[k] += int64(perKey)
	}
	for id, ev := range batch {
		out[id] = ev
	}
	return nil
}

// keyedReceipt is one message as a destination received it.
type keyedReceipt struct {
	ID      string
	Key     string
	N       int64
	Payload string
	// Lease, Instance and Entered are set by the relay child's file sink:
	// the fencing token, the publishing instance and when its Publish call
	// began.
	Lease    string
	Instance string
	Entered  time.Time
}

func receiptOf(t *testing.T, m *message.Message) keyedReceipt {
	t.Helper()
	n, err := strconv.ParseInt(m.Metadata.Get(outbox.MetadataVersion), 10, 64)
	require.NoError(t, err, "message %s: %s", m.UUID, outbox.MetadataVersion)
	return keyedReceipt{ID: m.UUID, Key: m.Metadata.Get(outbox.MetadataKey), N: n, Payload: string(m.Payload)}
}

// checkKeyedReceipts checks receipts, in the order the destination got them,
// against what was sent: each is a sent event with its key, number and
// payload; every sent event arrived; the first receipts of each key are in
// strictly increasing order. It returns the number of duplicates.
func checkKeyedReceipts(t *testing.T, sent map[string]keyedEvent, receipts []keyedReceipt) int {
	t.Helper()
	seen := make(map[string]bool, len(sent))
	last := map[string]int64{}
	lastAt := map[string]int{}
	dups := 0
	for i, r := range receipts {
		ev, ok := sent[r.ID]
		require.True(t, ok, "receipt %d: unknown event %s", i, r.ID)
		require.Equal(t, ev.Key, r.Key, "event %s: %s", r.ID, outbox.MetadataKey)
		require.Equal(t, ev.N, r.N, "event %s: %s", r.ID, outbox.MetadataVersion)
		require.Equal(t, strconv.FormatInt(ev.N, 10), r.Payload, "event %s: payload", r.ID)
		if seen[r.ID] {
			dups++
			continue
		}
		seen[r.ID] = true
		if r.N <= last[r.Key] {
			var hist []string
			for j, q := range receipts {
				if q.Key == r.Key && q.N >= r.N-5 && q.N <= last[r.Key]+5 {
					hist = append(hist, fmt.Sprintf("#%d %d %s %s %s", j, q.N, q.Instance, q.Lease, q.Entered.Format("15:04:05.000000")))
				}
			}
			t.Logf("receipts of key %s around the violation:\n%s", r.Key, strings.Join(hist, "\n"))
			p := receipts[lastAt[r.Key]]
			require.Failf(t, "order", "key %s: event %d first arrived (receipt %d: %s, lease %s, began %s) after event %d (receipt %d: %s, lease %s, began %s)",
				r.Key, r.N, i, r.Instance, r.Lease, r.Entered.Format(time.RFC3339Nano), last[r.Key], lastAt[r.Key], p.Instance, p.Lease, p.Entered.Format(time.RFC3339Nano))
		}
		last[r.Key] = r.N
		lastAt[r.Key] = i
	}
	missing := 0
	for id := range sent {
		if !seen[id] {
			missing++
		}
	}
	require.Zero(t, missing, "%d of %d events lost", missing, len(sent))
	return dups
}

func distinctIDs(rs []keyedReceipt) int {
	ids := make(map[string]struct{}, len(rs))
	for _, r := range rs {
		ids[r.ID] = struct{}{}
	}
	return len(ids)
}

func outboxIDs(t *testing.T, env dbtest.Env) []string {
	t.Helper()
	id := "id" // CHAR(36) on MySQL
	if env.Dialect == accord.Postgres {
		id = "id::text"
	}
	rows, err := env.DB.Query("SELECT " + id + " FROM " + table(env, "outbox"))
	require.NoError(t, err)
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		ids = append(ids, id)
	}
	require.NoError(t, rows.Err())
	return ids
}

// relayChildSpec configures a relay process (see TestMain).
type relayChildSpec struct {
	// Dialect and URL of the database (zero: PostgreSQL at
	// dbtest.PostgresURL()); Schema is the PostgreSQL schema or the MySQL
	// database of the outbox.
	Dialect         accord.Dialect
	URL             string
	Schema          string
	Sink            string // file the child's broker appends to
	BatchSize       int
	Lanes           int
	MaxInFlight     int
	ShutdownTimeout time.Duration
	// PerMessageDelay makes the child's broker slow: each Publish call
	// takes this long per message.
	PerMessageDelay time.Duration
	// LeaseTTL and InstanceID configure the child's leases (0 and "": the
	// relay's defaults).
	LeaseTTL   time.Duration
	InstanceID string
}

// processDialects runs f as a parallel subtest on PostgreSQL and on
// MySQL/MariaDB, the dialects whose relays run as several processes (an
// SQLite database has one writer process).
func processDialects(t *testing.T, f func(t *testing.T, env dbtest.Env)) {
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		f(t, dbtest.PostgresSchema(t))
	})
	t.Run("mysql", func(t *testing.T) {
		t.Parallel()
		f(t, dbtest.MySQLSchema(t))
	})
}

// runRelayChild is the main function of a relay process: it relays the
// outbox in spec.Schema into a fileSink until SIGTERM or SIGINT, and returns
// the exit code.
func runRelayChild(specJSON string) int {
	var spec relayChildSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "relay child: bad %s: %v\n", relayChildEnv, err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if spec.Dialect == "" {
		spec.Dialect, spec.URL = accord.Postgres, dbtest.PostgresURL()
	}
	db, _, err := accord.OpenDB(spec.URL)
	if err != nil {
		logger.Error("relay child: open database", "error", err)
		return 2
	}
	defer db.Close()
	sink, err := openFileSink(spec.Sink, spec.PerMessageDelay, spec.InstanceID)
	if err != nil {
		logger.Error("relay child: open sink", "error", err)
		return 2
	}
	defer sink.Close()
	r, err := relay.New(db, sink, &relay.Config{
		Dialect: spec.Dialect, Schema: spec.Schema, BatchSize: spec.BatchSize, Lanes: spec.Lanes,
		MaxInFlight: spec.MaxInFlight, ShutdownTimeout: spec.ShutdownTimeout, Logger: logger,
		LeaseTTL: spec.LeaseTTL, InstanceID: spec.InstanceID,
	})
	if err != nil {
		logger.Error("relay child: new relay", "error", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := r.Run(ctx); err != nil {
		logger.Error("relay child: run", "error", err)
		return 1
	}
	return 0
}

// fileSink is the relay child's broker: every Publish call appends one line
// per message to a file and fsyncs it before it returns, so what it
// accepted survives the child's death. A line is "uuid key version payload
// lease instance entered": the message's fencing token (accord_lease), the
// child's instance name and the wall-clock time (Unix ns) the Publish call
// began. Several children may share the file: each call is one write(2) in
// O_APPEND mode, so lines never interleave, and the file's order is the
// order the "broker" accepted them.
type fileSink struct {
	mu       sync.Mutex
	f        *os.File
	delay    time.Duration
	instance string
}

func openFileSink(path string, perMessage time.Duration, instance string) (*fileSink, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if instance == "" {
		instance = "-"
	}
	return &fileSink{f: f, delay: perMessage, instance: instance}, nil
}

func (s *fileSink) Publish(topic string, msgs ...*message.Message) error {
	entered := time.Now().UnixNano()
	var b bytes.Buffer
	for _, m := range msgs {
		lease := m.Metadata.Get(outbox.MetadataLease)
		if lease == "" {
			lease = "-"
		}
		fmt.Fprintf(&b, "%s %s %s %s %s %s %d\n", m.UUID, m.Metadata.Get(outbox.MetadataKey), m.Metadata.Get(outbox.MetadataVersion), m.Payload,
			lease, s.instance, entered)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.delay > 0 {
		time.Sleep(s.delay * time.Duration(len(msgs))) // a slow broker
	}
	if _, err := s.f.Write(b.Bytes()); err != nil {
		return err
	}
	return s.f.Sync()
}

func (s *fileSink) Close() error { return s.f.Close() }

// readSink parses the sink file. A torn last line (the child was killed in
// the middle of a write) is not returned; partial is its length in bytes.
func readSink(t *testing.T, path string) (lines []keyedReceipt, partial int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0
	}
	require.NoError(t, err)
	end := bytes.LastIndexByte(data, '\n') + 1
	partial = len(data) - end
	for _, line := range strings.Split(string(data[:end]), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		require.Len(t, f, 7, "sink line %q", line)
		n, err := strconv.ParseInt(f[2], 10, 64)
		require.NoError(t, err, "sink line %q", line)
		entered, err := strconv.ParseInt(f[6], 10, 64)
		require.NoError(t, err, "sink line %q", line)
		lines = append(lines, keyedReceipt{ID: f[0], Key: f[1], N: n, Payload: f[3], Lease: f[4], Instance: f[5],
			Entered: time.Unix(0, entered)})
	}
	return lines, partial
}

func sinkLineCount(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	require.NoError(t, err)
	return bytes.Count(data, []byte{'\n'})
}

// startRelayChild starts the test binary as a relay process (see TestMain).
func startRelayChild(t *testing.T, spec relayChildSpec) *testproc.Child {
	t.Helper()
	return testproc.Start(t, "relay", relayChildEnv, spec)
}

// stopRelayChild sends SIGTERM and requires a clean exit (status 0) within
// shutdownTimeout: Run stops reading at once and publishes what it already
// read for at most ShutdownTimeout; the final delete and process exit take
// milliseconds, well inside the margin a drain that short leaves.
func stopRelayChild(t *testing.T, c *testproc.Child, shutdownTimeout time.Duration) time.Duration {
	t.Helper()
	elapsed, err := c.Terminate(t, shutdownTimeout+10*time.Second)
	require.NoError(t, err, "relay process exit status after SIGTERM")
	require.Less(t, elapsed, shutdownTimeout, "relay process took longer than ShutdownTimeout to exit")
	return elapsed
}
