package feed

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/sqlstore"
	"github.com/accordgo/accord/outbox"
)

// Defaults and limits of [SourceConfig] and [Source.Read].
const (
	// ReadLimitDefault is the page size when a read asks for none (limit
	// <= 0 in Go, no limit parameter over HTTP).
	ReadLimitDefault = 100
	// ReadLimitMax caps the page size of one read.
	ReadLimitMax = 1000
	// WaitMax caps how long one read long-polls.
	WaitMax = 60 * time.Second
	// PollIntervalDefault is how often a long-polling read looks for new
	// events when no in-process wake-up arrives.
	PollIntervalDefault = 200 * time.Millisecond
	// DedupWindowDefault is how many of the feed's newest positions an
	// append checks for ids it already holds.
	DedupWindowDefault = 10000
	// DedupWindowMax bounds DedupWindow (the ids are kept in memory).
	DedupWindowMax = 1_000_000
	// PruneBatchSizeDefault is how many rows Prune deletes per statement.
	PruneBatchSizeDefault = 1000
	// MaxIDLength bounds an event id, in bytes.
	MaxIDLength = 255
	// MaxTopicLength bounds a topic, and MaxKeyLength a partition key, in
	// bytes.
	MaxTopicLength = 1024
	MaxKeyLength   = 1024
)

// SourceConfig configures a [Source]. Dialect and Name are required.
type SourceConfig struct {
	// Dialect of the producer's database, where the feed table lives.
	// Required.
	Dialect accord.Dialect

	// Schema is the PostgreSQL schema (MySQL database) of the feed table.
	// Empty means the connection's default. Must be empty on SQLite.
	// Defaults to "".
	Schema string

	// TablePrefix is the prefix of Accord's tables. Defaults to "accord_".
	TablePrefix string

	// Name identifies the feed (for example "orders"). It is part of every
	// cursor the feed issues, so a cursor issued by another feed is
	// rejected with ErrCursorFromFuture instead of being read at a
	// meaningless position. Use a name unique among the feeds your
	// consumers read, and never change it: doing so invalidates every
	// stored cursor. Required; at most 255 bytes.
	Name string

	// PollInterval is how often a long-polling read queries the database
	// for new events. Appends through this Source (its Publisher, AppendTx
	// followed by Wake) wake readers of the same process at once; appends
	// by other processes are seen within PollInterval. Defaults to
	// PollIntervalDefault (200 ms).
	PollInterval time.Duration

	// DedupWindow is how many of the feed's newest positions an append
	// checks for the ids it writes: an event whose id is there already is
	// skipped, so a relay that publishes again after a crash does not
	// duplicate events. The window's ids are kept in memory (about 100
	// bytes each) and refreshed under the writers' lock. It must cover the
	// relay's MaxInFlight (4000 by default) plus whatever other writers
	// append between a crash and the relay's restart. The special value -1
	// disables the check. Defaults to DedupWindowDefault (10,000), at most
	// DedupWindowMax.
	DedupWindow int

	// PruneBatchSize is how many rows Prune deletes per statement.
	// Defaults to PruneBatchSizeDefault (1000).
	PruneBatchSize int

	// Logger receives the source's structured logs. Defaults to
	// slog.Default().
	Logger *slog.Logger

	// Now returns the time events are appended at (Event.CreatedAt) and
	// that Prune measures age from. Defaults to time.Now.
	Now func() time.Time
}

// WithDefaults returns a copy of c with defaults filled in.
func (c *SourceConfig) WithDefaults() *SourceConfig {
	out := SourceConfig{}
	if c != nil {
		out = *c
	}
	if out.TablePrefix == "" {
		out.TablePrefix = outbox.TablePrefixDefault
	}
	if out.PollInterval == 0 {
		out.PollInterval = PollIntervalDefault
	}
	if out.DedupWindow == 0 {
		out.DedupWindow = DedupWindowDefault
	}
	if out.PruneBatchSize == 0 {
		out.PruneBatchSize = PruneBatchSizeDefault
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.Now == nil {
		out.Now = time.Now
	}
	return &out
}

func (c *SourceConfig) validate() error {
	var errs []error
	if _, err := sqlstore.NewNames(c.Dialect, c.Schema, c.TablePrefix); err != nil {
		errs = append(errs, err)
	}
	if c.Name == "" {
		errs = append(errs, errors.New("Name is empty: name the feed (for example \"orders\"); it is part of every cursor"))
	} else if len(c.Name) > 255 {
		errs = append(errs, fmt.Errorf("Name is %d bytes, over 255", len(c.Name)))
	}
	if c.PollInterval < 0 {
		errs = append(errs, fmt.Errorf("PollInterval %s: must not be negative", c.PollInterval))
	}
	if c.DedupWindow < -1 || c.DedupWindow > DedupWindowMax {
		errs = append(errs, fmt.Errorf("DedupWindow %d: must be between 1 and %d, or -1 to disable the check", c.DedupWindow, DedupWindowMax))
	}
	if c.PruneBatchSize < 1 {
		errs = append(errs, fmt.Errorf("PruneBatchSize %d: must be at least 1", c.PruneBatchSize))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}

// Source is the producer's side of a feed: it appends events to the feed
// table ([Source.Publisher], [Source.AppendTx]), serves them by cursor
// ([Source.Read], [Source.Handler]) and prunes old ones ([Source.Prune]).
// It holds no connection of its own; one Source serves every goroutine.
//
// A Source is a [Fetcher]: a consumer in the same process (or with access
// to the producer's database) can pull from it directly.
type Source struct {
	db    *sql.DB
	cfg   *SourceConfig
	names sqlstore.Names
	tag   string
	log   *slog.Logger

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when events are appended

	lockRowReady atomic.Bool // MySQL: the sentinel row is known to exist
	dedup        dedupCache
	waiting      atomic.Int64 // reads blocked in a long poll
}

var _ Fetcher = (*Source)(nil)

// NewSource returns the Source of the feed table in db. It validates cfg
// (errors wrap ErrInvalidConfig) and does not touch the database.
func NewSource(db *sql.DB, cfg *SourceConfig) (*Source, error) {
	cfg = cfg.WithDefaults()
	var errs []error
	if db == nil {
		errs = append(errs, errors.New("db is nil"))
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
	return &Source{
		db:      db,
		cfg:     cfg,
		names:   names,
		tag:     feedTag(cfg.Name),
		log:     cfg.Logger.With("component", "accord.feed", "feed", cfg.Name),
		changed: make(chan struct{}),
	}, nil
}

// Name returns the feed's name.
func (s *Source) Name() string { return s.cfg.Name }

// Cursor returns the cursor that reads the events after position (0 is
// the start of the feed).
func (s *Source) Cursor(position int64) string { return encodeCursor(s.tag, position) }

// Head returns the cursor after the newest event: a consumer that starts
// from it receives only events appended later. A consumer that bootstraps
// from a snapshot of the producer's state takes Head before the snapshot
// (and must tolerate events already reflected in it).
func (s *Source) Head(ctx context.Context) (string, error) {
	_, head, err := s.names.FeedBounds(ctx, s.db)
	if err != nil {
		return "", s.wrapDBErr("read head", err)
	}
	return s.Cursor(head), nil
}

// ParseCursor returns the position a cursor reads after, checking it
// against the feed: ErrMalformedCursor for a string this package did not
// issue, ErrCursorFromFuture for another feed's cursor or a position
// beyond the head, ErrCursorExpired for a position whose next events were
// pruned. The empty cursor is the start of the feed (position 0), which
// never expires: it reads from the oldest retained event.
func (s *Source) ParseCursor(ctx context.Context, cursor string) (int64, error) {
	if cursor == "" {
		return 0, nil
	}
	pos, err := decodeCursor(s.tag, cursor)
	if err != nil {
		return 0, err
	}
	oldest, head, err := s.names.FeedBounds(ctx, s.db)
	if err != nil {
		return 0, s.wrapDBErr("read bounds", err)
	}
	if pos > head {
		return 0, fmt.Errorf("%w: cursor position %d is beyond the feed's head %d", ErrCursorFromFuture, pos, head)
	}
	if oldest > 0 && pos < oldest-1 {
		return 0, fmt.Errorf("%w: cursor position %d, oldest retained event is %d", ErrCursorExpired, pos, oldest)
	}
	return pos, nil
}

// Wake wakes the long-polling reads of this Source. Call it after
// committing a transaction that used AppendTx; the Publisher wakes them
// itself.
func (s *Source) Wake() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *Source) changedChan() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Read returns the events after cursor, at most limit of them, in position
// order. The empty cursor reads from the start of the feed (the oldest
// retained event). limit <= 0 means ReadLimitDefault; larger than
// ReadLimitMax is capped.
//
// When there is no event after cursor, Read waits up to wait (capped at
// WaitMax; 0 does not wait) for one to be appended and returns as soon as
// there is, or an empty page when wait is over. It returns ctx's error if
// ctx ends first.
//
// Errors: ErrMalformedCursor, ErrCursorFromFuture and ErrCursorExpired
// (see [IsCursorError]), or a database error.
func (s *Source) Read(ctx context.Context, cursor string, limit int, wait time.Duration) (Page, error) {
	var after int64
	fromStart := cursor == ""
	if !fromStart {
		var err error
		if after, err = decodeCursor(s.tag, cursor); err != nil {
			return Page{}, err
		}
	}
	if limit <= 0 {
		limit = ReadLimitDefault
	}
	limit = min(limit, ReadLimitMax)
	wait = min(max(wait, 0), WaitMax)
	deadline := time.Now().Add(wait)
	var timer *time.Timer
	headChecked := false
	for {
		changed := s.changedChan() // before the read: an append after it closes this channel
		rows, err := s.names.FeedRead(ctx, s.db, after, limit+1)
		if err != nil {
			return Page{}, s.wrapDBErr("read", err)
		}
		if len(rows) > 0 && !fromStart && rows[0].Position != after+1 {
			// Either after+1 was pruned (the cursor expired), or it is
			// committed but not visible to this read yet: InnoDB releases a
			// writer's locks a moment before its commit becomes visible, so
			// the next writer's rows can show up first.
			oldest, _, err := s.names.FeedBounds(ctx, s.db)
			if err != nil {
				return Page{}, s.wrapDBErr("read bounds", err)
			}
			if oldest > after+1 {
				return Page{}, fmt.Errorf("%w: cursor position %d, oldest retained event is %d", ErrCursorExpired, after, oldest)
			}
			rows = nil
		}
		// Positions are dense (max+1 under the writers' lock, pruned only from
		// the front): a hole in a page is a row not visible yet, so the page
		// stops before it and the next read picks it up.
		for i := 1; i < len(rows); i++ {
			if rows[i].Position != rows[i-1].Position+1 {
				rows = rows[:i]
				break
			}
		}
		if len(rows) > 0 {
			more := len(rows) > limit
			if more {
				rows = rows[:limit]
			}
			events := make([]Event, len(rows))
			for i := range rows {
				if events[i], err = eventFromRow(&rows[i]); err != nil {
					return Page{}, err
				}
			}
			return Page{Events: events, Next: s.Cursor(rows[len(rows)-1].Position), More: more}, nil
		}
		if !headChecked {
			_, head, err := s.names.FeedBounds(ctx, s.db)
			if err != nil {
				return Page{}, s.wrapDBErr("read head", err)
			}
			if after > head {
				return Page{}, fmt.Errorf("%w: cursor position %d is beyond the feed's head %d", ErrCursorFromFuture, after, head)
			}
			headChecked = true
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return Page{Events: []Event{}, Next: s.Cursor(after)}, nil
		}
		d := min(remaining, s.cfg.PollInterval)
		if timer == nil {
			timer = time.NewTimer(d)
			defer timer.Stop()
		} else {
			timer.Reset(d)
		}
		s.waiting.Add(1)
		select {
		case <-changed:
			timer.Stop() // Go 1.23+ timers: Reset after Stop never sees a stale tick
		case <-timer.C:
		case <-ctx.Done():
			s.waiting.Add(-1)
			return Page{}, ctx.Err()
		}
		s.waiting.Add(-1)
	}
}

func eventFromRow(r *sqlstore.FeedRow) (Event, error) {
	ev := Event{
		Position:  r.Position,
		ID:        r.ID,
		Topic:     r.Topic,
		Key:       r.Key,
		Payload:   r.Payload,
		CreatedAt: r.CreatedAt,
	}
	if ev.Payload == nil {
		ev.Payload = []byte{}
	}
	if r.Version.Valid {
		ev.Version = r.Version.Int64
	}
	if len(r.Metadata) > 0 {
		if err := json.Unmarshal(r.Metadata, &ev.Metadata); err != nil {
			return Event{}, fmt.Errorf("accord feed: position %d id %s: metadata is not a JSON object of strings: %w", r.Position, r.ID, err)
		}
	}
	if ev.Metadata == nil {
		ev.Metadata = map[string]string{}
	}
	return ev, nil
}

// AppendTx appends events to the feed in the caller's transaction, so they
// become visible exactly when the business changes they describe commit.
// It returns how many were appended: events whose id the feed already
// holds within DedupWindow are skipped.
//
// AppendTx takes the feed writers' lock (on PostgreSQL an advisory lock, on
// MySQL a row lock, on SQLite the write lock) and holds it until tx ends:
// that is what makes positions follow commit order, and it serializes every
// transaction that appends to the feed from that point to its commit. Call
// it as late as possible in the transaction and commit promptly. On
// PostgreSQL tx must be READ COMMITTED (the default): under REPEATABLE READ
// a stale snapshot makes the insert fail with a duplicate-key error rather
// than reuse a position.
//
// After the commit, call Wake to wake this process's long-polling readers
// at once (others notice within PollInterval).
func (s *Source) AppendTx(ctx context.Context, tx *sql.Tx, events ...Event) (int, error) {
	if tx == nil {
		return 0, errors.New("accord feed: AppendTx: tx is nil")
	}
	return s.appendTx(ctx, tx, events)
}

func (s *Source) appendTx(ctx context.Context, tx *sql.Tx, events []Event) (int, error) {
	if len(events) == 0 {
		return 0, nil
	}
	rows, err := s.rows(events)
	if err != nil {
		return 0, err
	}
	if err := s.lock(ctx, tx); err != nil {
		return 0, s.wrapDBErr("lock feed", err)
	}
	head, err := s.names.FeedHeadLocked(ctx, tx)
	if err != nil {
		return 0, s.wrapDBErr("read head", err)
	}
	if s.cfg.DedupWindow > 0 {
		if rows, err = s.dedup.filter(ctx, s.names, tx, head, int64(s.cfg.DedupWindow), rows); err != nil {
			return 0, s.wrapDBErr("read recent ids", err)
		}
	}
	now := s.cfg.Now().UTC()
	for i := range rows {
		rows[i].Position = head + int64(i) + 1
		rows[i].CreatedAt = now
	}
	if err := s.names.FeedInsert(ctx, tx, rows); err != nil {
		return 0, s.wrapDBErr("append", err)
	}
	return len(rows), nil
}

// lock takes the feed writers' lock in tx.
func (s *Source) lock(ctx context.Context, tx *sql.Tx) error {
	if s.cfg.Dialect == accord.MySQL && !s.lockRowReady.Load() {
		// Committed on its own connection, before tx locks anything.
		if err := s.names.FeedEnsureLockRow(ctx, s.db); err != nil {
			return err
		}
		s.lockRowReady.Store(true)
	}
	found, err := s.names.FeedLock(ctx, tx)
	if err != nil || found {
		return err
	}
	// MySQL, sentinel row deleted since: recreate it in tx and lock it.
	if err := s.names.FeedEnsureLockRow(ctx, tx); err != nil {
		return err
	}
	if found, err = s.names.FeedLock(ctx, tx); err == nil && !found {
		err = errors.New("the lock row at position 0 is missing and cannot be created")
	}
	return err
}

func (s *Source) rows(events []Event) ([]sqlstore.FeedRow, error) {
	rows := make([]sqlstore.FeedRow, 0, len(events))
	seen := make(map[string]struct{}, len(events))
	for i := range events {
		ev := events[i] // a copy: the caller's events are not modified
		if ev.ID == "" {
			ev.ID = outbox.NewID()
		}
		if _, dup := seen[ev.ID]; dup {
			continue // the same id twice in one call: keep the first
		}
		seen[ev.ID] = struct{}{}
		r, err := rowFromEvent(&ev)
		if err != nil {
			return nil, fmt.Errorf("event %d of %d: %w", i+1, len(events), err)
		}
		rows = append(rows, r)
	}
	return rows, nil
}

func rowFromEvent(ev *Event) (sqlstore.FeedRow, error) {
	switch {
	case len(ev.ID) > MaxIDLength:
		return sqlstore.FeedRow{}, fmt.Errorf("%w: id is %d bytes, over %d", ErrInvalidEvent, len(ev.ID), MaxIDLength)
	case ev.Topic == "":
		return sqlstore.FeedRow{}, fmt.Errorf("%w: event %s has no Topic", ErrInvalidEvent, ev.ID)
	case len(ev.Topic) > MaxTopicLength:
		return sqlstore.FeedRow{}, fmt.Errorf("%w: event %s: topic is %d bytes, over %d", ErrInvalidEvent, ev.ID, len(ev.Topic), MaxTopicLength)
	case len(ev.Key) > MaxKeyLength:
		return sqlstore.FeedRow{}, fmt.Errorf("%w: event %s: key is %d bytes, over %d", ErrInvalidEvent, ev.ID, len(ev.Key), MaxKeyLength)
	case ev.Version < 0:
		return sqlstore.FeedRow{}, fmt.Errorf("%w: event %s: Version %d is negative", ErrInvalidEvent, ev.ID, ev.Version)
	case strings.ContainsRune(ev.ID, 0) || strings.ContainsRune(ev.Topic, 0) || strings.ContainsRune(ev.Key, 0):
		return sqlstore.FeedRow{}, fmt.Errorf("%w: event %s: id, topic or key contains a NUL byte", ErrInvalidEvent, ev.ID)
	}
	for k, v := range ev.Metadata {
		if strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0) {
			return sqlstore.FeedRow{}, fmt.Errorf("%w: event %s: metadata %q contains a NUL byte", ErrInvalidEvent, ev.ID, k)
		}
	}
	md := ev.Metadata
	if md == nil {
		md = map[string]string{}
	}
	mdJSON, err := json.Marshal(md)
	if err != nil {
		return sqlstore.FeedRow{}, fmt.Errorf("%w: event %s: metadata: %v", ErrInvalidEvent, ev.ID, err)
	}
	r := sqlstore.FeedRow{ID: ev.ID, Topic: ev.Topic, Key: ev.Key, Payload: ev.Payload, Metadata: mdJSON}
	if ev.Version > 0 {
		r.Version = sql.NullInt64{Int64: ev.Version, Valid: true}
	}
	return r, nil
}

// Prune deletes the events appended more than olderThan ago, oldest
// first, PruneBatchSize rows per statement, and returns how many it
// deleted. It deletes a prefix of the feed only (it stops at the first
// event that is young enough) and always keeps the newest event, so
// positions are never reused.
//
// A consumer whose cursor points before the oldest retained event then
// gets ErrCursorExpired and must resync: choose olderThan well above the
// longest time a consumer may stay away (an outage, a paused deployment).
func (s *Source) Prune(ctx context.Context, olderThan time.Duration) (int64, error) {
	if olderThan < 0 {
		return 0, fmt.Errorf("accord feed: Prune: olderThan %s is negative", olderThan)
	}
	cutoff := s.cfg.Now().Add(-olderThan)
	_, head, err := s.names.FeedBounds(ctx, s.db)
	if err != nil {
		return 0, s.wrapDBErr("read head", err)
	}
	var deleted int64
	for {
		rows, err := s.names.FeedOldest(ctx, s.db, s.cfg.PruneBatchSize)
		if err != nil {
			return deleted, s.wrapDBErr("read oldest events", err)
		}
		k := 0
		for k < len(rows) && rows[k].Position < head && rows[k].CreatedAt.Before(cutoff) {
			k++
		}
		if k == 0 {
			break
		}
		n, err := s.names.FeedDeleteRange(ctx, s.db, rows[0].Position, rows[k-1].Position)
		if err != nil {
			return deleted, s.wrapDBErr("prune", err)
		}
		deleted += n
		if k < len(rows) {
			break
		}
	}
	if deleted > 0 {
		s.log.InfoContext(ctx, "feed pruned", "deleted", deleted, "older_than", olderThan)
	}
	return deleted, nil
}

func (s *Source) wrapDBErr(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if sqlstore.IsUndefinedTable(err) || strings.Contains(err.Error(), "doesn't exist") {
		return fmt.Errorf("accord feed: %s: table %s does not exist; run `accord migrate up` with the same schema and table prefix: %w", op, s.names.Feed(), err)
	}
	return fmt.Errorf("accord feed: %s %s: %w", op, s.names.Feed(), err)
}

// dedupCache holds the ids of the feed's newest DedupWindow positions. It
// is refreshed from the database under the writers' lock, so it also sees
// what other processes appended.
type dedupCache struct {
	mu   sync.Mutex
	head int64 // positions up to head are loaded
	ids  map[string]int64
	fifo []sqlstore.FeedPosID // loaded positions, oldest first
}

// filter refreshes the cache up to head and drops the rows whose id is in
// the window. The caller holds the writers' lock in tx.
func (d *dedupCache) filter(ctx context.Context, n sqlstore.Names, tx *sql.Tx, head, window int64, rows []sqlstore.FeedRow) ([]sqlstore.FeedRow, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ids == nil || head < d.head {
		// First use, or the feed went back (restored from a backup).
		d.ids, d.fifo, d.head = map[string]int64{}, nil, 0
	}
	if from := max(d.head, head-window); from < head {
		fresh, err := n.FeedIDsAfter(ctx, tx, from)
		if err != nil {
			d.ids, d.fifo, d.head = nil, nil, 0
			return nil, err
		}
		for _, r := range fresh {
			if r.Position > head {
				break
			}
			d.ids[r.ID] = r.Position
			d.fifo = append(d.fifo, r)
		}
	}
	d.head = head
	for len(d.fifo) > 0 && d.fifo[0].Position <= head-window {
		old := d.fifo[0]
		if d.ids[old.ID] == old.Position {
			delete(d.ids, old.ID)
		}
		d.fifo = d.fifo[1:]
	}
	out := rows[:0]
	for _, r := range rows {
		if _, dup := d.ids[r.ID]; !dup {
			out = append(out, r)
		}
	}
	return out, nil
}

// parseVersion parses a MetadataVersion value.
func parseVersion(id, v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%w: message %s: metadata %s=%q is not a non-negative integer", ErrInvalidEvent, id, outbox.MetadataVersion, v)
	}
	return n, nil
}
