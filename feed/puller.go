package feed

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/service"
	"github.com/accordgo/accord/internal/sqlstore"
	"github.com/accordgo/accord/outbox"
)

// Defaults and limits of [PullerConfig].
const (
	BatchSizeDefault       = 100
	BatchSizeMax           = ReadLimitMax
	WaitDefault            = 30 * time.Second
	IdleIntervalDefault    = time.Second
	RetryBackoffMinDefault = 100 * time.Millisecond
	RetryBackoffMaxDefault = 30 * time.Second
	// MaxNameLength bounds PullerConfig.Consumer and PullerConfig.Feed, in
	// bytes (they are the key of the feed_cursor table).
	MaxNameLength = 255
)

// HandlerFunc applies one event in the consumer's transaction tx. It must
// write through tx only: the puller stores the consumer's cursor in the same
// transaction, so the event's effects and the cursor move commit together.
// An error rolls the whole page back; the page is retried with backoff,
// unless the error is marked with [Permanent].
type HandlerFunc func(ctx context.Context, tx *sql.Tx, ev Event) error

// PullerConfig configures a [Puller]. Dialect, Consumer and Feed are
// required.
type PullerConfig struct {
	// Dialect of the consumer's database, where the feed_cursor table
	// lives and the handler's transactions run. Required.
	Dialect accord.Dialect

	// Schema is the PostgreSQL schema (MySQL database) of the consumer's
	// feed_cursor table. Empty means the connection's default. Must be empty
	// on SQLite. Defaults to "".
	Schema string

	// TablePrefix is the prefix of Accord's tables in the consumer's
	// database. Defaults to "accord_".
	TablePrefix string

	// Consumer names the consumer (for example "billing"). With Feed it is
	// the key of the stored cursor: two pullers with the same Consumer and
	// Feed share one cursor (and never apply a page twice between them).
	// Required; at most MaxNameLength bytes.
	Consumer string

	// Feed names the feed being pulled (for example "orders"), in the
	// cursor table's key. Required; at most MaxNameLength bytes.
	Feed string

	// BatchSize is the most events fetched, and applied in one transaction,
	// at a time. Defaults to BatchSizeDefault (100), at most BatchSizeMax.
	BatchSize int

	// Wait is how long one fetch long-polls for new events when the
	// consumer is caught up. The special value -1 turns long polling off:
	// the puller then fetches every IdleInterval. Defaults to WaitDefault
	// (30 s), at most WaitMax.
	Wait time.Duration

	// IdleInterval is the least time between the starts of two fetches
	// that return no event, so a feed that answers before the wait is over
	// (or Wait -1) is not polled in a tight loop. Defaults to
	// IdleIntervalDefault (1 s).
	IdleInterval time.Duration

	// RetryBackoffMin and RetryBackoffMax bound the exponential backoff
	// (with jitter) after a failed fetch (the producer is down or
	// unreachable), a failed handler or a failed commit. Default to
	// RetryBackoffMinDefault (100 ms) and RetryBackoffMaxDefault (30 s).
	RetryBackoffMin time.Duration
	RetryBackoffMax time.Duration

	// Logger receives the puller's structured logs. Defaults to
	// slog.Default().
	Logger *slog.Logger

	// Observer is told about every fetch and every page applied, for
	// metrics. Defaults to none.
	Observer Observer
}

// WithDefaults returns a copy of c with defaults filled in.
func (c *PullerConfig) WithDefaults() *PullerConfig {
	out := PullerConfig{}
	if c != nil {
		out = *c
	}
	if out.TablePrefix == "" {
		out.TablePrefix = outbox.TablePrefixDefault
	}
	if out.BatchSize == 0 {
		out.BatchSize = BatchSizeDefault
	}
	if out.Wait == 0 {
		out.Wait = WaitDefault
	}
	if out.IdleInterval == 0 {
		out.IdleInterval = IdleIntervalDefault
	}
	if out.RetryBackoffMin == 0 {
		out.RetryBackoffMin = RetryBackoffMinDefault
	}
	if out.RetryBackoffMax == 0 {
		out.RetryBackoffMax = RetryBackoffMaxDefault
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.Observer == nil {
		out.Observer = ObserverDefaults{}
	}
	return &out
}

func (c *PullerConfig) validate() error {
	var errs []error
	if _, err := sqlstore.NewNames(c.Dialect, c.Schema, c.TablePrefix); err != nil {
		errs = append(errs, err)
	}
	for _, f := range []struct{ name, v string }{{"Consumer", c.Consumer}, {"Feed", c.Feed}} {
		if f.v == "" {
			errs = append(errs, fmt.Errorf("%s is empty", f.name))
		} else if len(f.v) > MaxNameLength {
			errs = append(errs, fmt.Errorf("%s is %d bytes, over %d", f.name, len(f.v), MaxNameLength))
		}
	}
	if c.BatchSize < 1 || c.BatchSize > BatchSizeMax {
		errs = append(errs, fmt.Errorf("BatchSize %d: must be between 1 and %d", c.BatchSize, BatchSizeMax))
	}
	if c.Wait != -1 && (c.Wait < 0 || c.Wait > WaitMax) {
		errs = append(errs, fmt.Errorf("Wait %s: must be between 0 and %s, or -1 to turn long polling off", c.Wait, WaitMax))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"IdleInterval", c.IdleInterval}, {"RetryBackoffMin", c.RetryBackoffMin}, {"RetryBackoffMax", c.RetryBackoffMax}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %s: must not be negative", d.name, d.v))
		}
	}
	if c.RetryBackoffMax < c.RetryBackoffMin {
		errs = append(errs, fmt.Errorf("RetryBackoffMax %s: must be at least RetryBackoffMin (%s)", c.RetryBackoffMax, c.RetryBackoffMin))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}

// Observer is told what a [Puller] does, for metrics (the consumer's lag
// is time.Since(ApplyInfo.LastCreatedAt)). Calls come from the puller's
// goroutine and must return quickly. Embed [ObserverDefaults] to implement
// only some methods and keep compiling when methods are added.
type Observer interface {
	// Fetched is called after every fetch, successful or not.
	Fetched(ctx context.Context, info FetchInfo)
	// Applied is called after every attempt to apply a page, successful or
	// not (after its commit or rollback).
	Applied(ctx context.Context, info ApplyInfo)
}

// ObserverDefaults implements [Observer] with methods that do nothing.
type ObserverDefaults struct{}

// Fetched does nothing.
func (ObserverDefaults) Fetched(context.Context, FetchInfo) {}

// Applied does nothing.
func (ObserverDefaults) Applied(context.Context, ApplyInfo) {}

// FetchInfo describes one fetch.
type FetchInfo struct {
	Consumer, Feed string
	// Events is the number of events fetched.
	Events int
	// More is the page's More.
	More bool
	// Duration is the time the fetch took, long-polling included.
	Duration time.Duration
	// Err is the fetch's error, nil on success.
	Err error
	// Failures counts consecutive failed fetches, this one included (0 on
	// success).
	Failures int
}

// ApplyInfo describes one attempt to apply a page.
type ApplyInfo struct {
	Consumer, Feed string
	// Events is the number of events in the page.
	Events int
	// Cursor is the cursor stored by the attempt (the page's Next).
	Cursor string
	// LastPosition and LastCreatedAt are those of the page's last event
	// (zero for a page without events).
	LastPosition  int64
	LastCreatedAt time.Time
	// Duration is the time the attempt took.
	Duration time.Duration
	// Err is the attempt's error, nil when the page was committed.
	Err error
	// Attempt is 1 for the first attempt at a page, 2 for the first retry,
	// and so on.
	Attempt int
}

// Puller is the consumer's side of a feed: it fetches pages after the
// consumer's cursor and applies each page in one transaction of the
// consumer's database, together with the move of the cursor, so a crash at
// any point neither skips nor applies twice an event. See the package
// documentation for the guarantees.
type Puller struct {
	db      *sql.DB
	fetcher Fetcher
	cfg     *PullerConfig
	names   sqlstore.Names
	handler HandlerFunc
	log     *slog.Logger

	life *service.Lifecycle
}

// NewPuller returns a puller that fetches from fetcher and applies events
// with handler in transactions on db, the consumer's database (migrated, for
// its feed_cursor table). It validates cfg (errors wrap ErrInvalidConfig)
// and does not touch the database or the feed until Run or PullOnce.
func NewPuller(db *sql.DB, fetcher Fetcher, cfg *PullerConfig, handler HandlerFunc) (*Puller, error) {
	cfg = cfg.WithDefaults()
	var errs []error
	if db == nil {
		errs = append(errs, errors.New("db is nil"))
	}
	if fetcher == nil {
		errs = append(errs, errors.New("fetcher is nil"))
	}
	if handler == nil {
		errs = append(errs, errors.New("handler is nil"))
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
	return &Puller{
		db:      db,
		fetcher: fetcher,
		cfg:     cfg,
		names:   names,
		handler: handler,
		log:     cfg.Logger.With("component", "accord.feed.puller", "consumer", cfg.Consumer, "feed", cfg.Feed),
		life:    service.New(),
	}, nil
}

// Running is closed once Run has started.
func (p *Puller) Running() chan struct{} { return p.life.Running() }

// Close stops a running puller as if Run's context had been cancelled and
// waits for Run to return. A page being applied is rolled back and fetched
// again by the next run. Close is idempotent and safe before Run.
func (p *Puller) Close() error {
	p.life.Close()
	return nil
}

// Cursor returns the consumer's stored cursor ("" when none is stored:
// the next pull starts at the beginning of the feed).
func (p *Puller) Cursor(ctx context.Context) (string, error) {
	c, _, err := p.names.FeedCursorGet(ctx, p.db, p.cfg.Consumer, p.cfg.Feed)
	if err != nil {
		return "", p.wrapDBErr("read cursor", err)
	}
	return c, nil
}

// SetCursorTx stores cursor as the consumer's cursor in the caller's
// transaction: the way to resync after ErrCursorExpired or
// ErrCursorFromFuture, in the transaction that stores the rebuilt state
// (with the producer's Source.Head taken before its snapshot). The empty
// cursor removes the stored one: the next pull starts at the beginning of
// the feed (its oldest retained event).
func (p *Puller) SetCursorTx(ctx context.Context, tx *sql.Tx, cursor string) error {
	var err error
	if cursor == "" {
		err = p.names.FeedCursorDelete(ctx, tx, p.cfg.Consumer, p.cfg.Feed)
	} else {
		err = p.names.FeedCursorSet(ctx, tx, p.cfg.Consumer, p.cfg.Feed, cursor, time.Now())
	}
	if err != nil {
		return p.wrapDBErr("store cursor", err)
	}
	return nil
}

// Run pulls and applies events until ctx is cancelled or Close is called,
// then returns nil. Each round loads the cursor from the consumer's
// database, fetches a page (long-polling up to Wait when caught up) and
// applies it in one transaction that also stores the page's Next cursor.
//
// Fetch failures (the producer down, a network error, a 5xx answer) are
// logged and retried with exponential backoff, forever. A handler or commit
// error rolls the page back and retries it with backoff. Run returns an
// error only when it cannot go on by itself:
//
//   - a handler error marked with [Permanent] (the page is rolled back and
//     the cursor stays before it; dead-lettering is up to the handler,
//     which may record the event and return nil instead);
//   - a cursor error ([IsCursorError]): the consumer must resync, see
//     SetCursorTx;
//   - ErrAlreadyRunning.
func (p *Puller) Run(ctx context.Context) error {
	ctx, finish, ok, err := p.life.Start(ctx, ErrAlreadyRunning)
	if !ok {
		return err
	}
	defer finish()
	p.life.MarkRunning()
	p.log.InfoContext(ctx, "feed puller started", "batch_size", p.cfg.BatchSize, "wait", p.cfg.Wait)

	fetchFailures, dbFailures := 0, 0
	for ctx.Err() == nil {
		cursor, err := p.Cursor(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			d := p.backoff(dbFailures)
			dbFailures++
			p.log.ErrorContext(ctx, "feed puller cannot read its cursor; retrying", "error", err, "attempt", dbFailures, "retry_in", d)
			service.Sleep(ctx, d)
			continue
		}
		dbFailures = 0
		start := time.Now()
		page, err := p.fetch(ctx, cursor, p.cfg.Wait, fetchFailures)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if IsCursorError(err) {
				p.log.ErrorContext(ctx, "feed puller stopped: its cursor cannot be used, the consumer must resync", "cursor", cursor, "error", err)
				return fmt.Errorf("accord feed: consumer %q, feed %q: cursor %q: %w", p.cfg.Consumer, p.cfg.Feed, cursor, err)
			}
			d := p.backoff(fetchFailures)
			fetchFailures++
			p.log.WarnContext(ctx, "feed puller cannot fetch; retrying", "error", err, "attempt", fetchFailures, "retry_in", d)
			service.Sleep(ctx, d)
			continue
		}
		if fetchFailures > 0 {
			p.log.InfoContext(ctx, "feed puller fetches again", "failed_attempts", fetchFailures)
			fetchFailures = 0
		}
		if len(page.Events) == 0 && page.Next == cursor {
			service.Sleep(ctx, p.cfg.IdleInterval-time.Since(start))
			continue
		}
		if err := p.applyWithRetry(ctx, cursor, page); err != nil {
			if ctx.Err() != nil {
				break
			}
			p.log.ErrorContext(ctx, "feed puller stopped on a permanent handler error", "error", err)
			return err
		}
	}
	p.log.InfoContext(ctx, "feed puller stopped")
	return nil
}

// PullOnce pulls and applies pages until the consumer is caught up, without
// long polling and without retrying, and returns the number of events
// applied: for scheduled (cron) consumers. It returns the first error
// (a fetch error, a handler error, a cursor error); what was committed
// before it stays committed. It may run while Run runs: the stored cursor
// keeps them from applying a page twice.
func (p *Puller) PullOnce(ctx context.Context) (int, error) {
	total := 0
	for {
		cursor, err := p.Cursor(ctx)
		if err != nil {
			return total, err
		}
		page, err := p.fetch(ctx, cursor, 0, 0)
		if err != nil {
			return total, fmt.Errorf("accord feed: consumer %q, feed %q: fetch after %q: %w", p.cfg.Consumer, p.cfg.Feed, cursor, err)
		}
		if len(page.Events) == 0 && page.Next == cursor {
			return total, nil
		}
		err = p.applyObserved(ctx, cursor, page, 1)
		if errors.Is(err, errCursorMoved) {
			continue
		}
		if err != nil {
			return total, err
		}
		total += len(page.Events)
		if !page.More {
			return total, nil
		}
	}
}

func (p *Puller) fetch(ctx context.Context, cursor string, wait time.Duration, failures int) (Page, error) {
	if wait < 0 {
		wait = 0
	}
	start := time.Now()
	page, err := p.fetcher.Read(ctx, cursor, p.cfg.BatchSize, wait)
	info := FetchInfo{Consumer: p.cfg.Consumer, Feed: p.cfg.Feed, Duration: time.Since(start), Err: err}
	if err != nil {
		info.Failures = failures + 1
	} else {
		info.Events, info.More = len(page.Events), page.More
		if page.Next == "" {
			err = errors.New("accord feed: the feed answered a page without a next cursor")
			info.Err, info.Failures = err, failures+1
		}
	}
	p.cfg.Observer.Fetched(ctx, info)
	return page, err
}

// applyWithRetry applies page until it is committed, the stored cursor
// moves under it, ctx ends or the handler fails permanently.
func (p *Puller) applyWithRetry(ctx context.Context, cursor string, page Page) error {
	for attempt := 1; ; attempt++ {
		err := p.applyObserved(ctx, cursor, page, attempt)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errCursorMoved):
			p.log.WarnContext(ctx, "feed cursor was moved by another puller of this consumer; reloading it", "cursor", cursor)
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case IsPermanent(err):
			return err
		}
		d := p.backoff(attempt - 1)
		var first int64
		if len(page.Events) > 0 {
			first = page.Events[0].Position
		}
		p.log.ErrorContext(ctx, "feed puller could not apply a page; retrying", "error", err,
			"first_position", first, "events", len(page.Events), "next", page.Next, "attempt", attempt, "retry_in", d)
		if !service.Sleep(ctx, d) {
			return ctx.Err()
		}
	}
}

func (p *Puller) applyObserved(ctx context.Context, cursor string, page Page, attempt int) error {
	start := time.Now()
	err := p.apply(ctx, cursor, page)
	info := ApplyInfo{Consumer: p.cfg.Consumer, Feed: p.cfg.Feed, Events: len(page.Events), Cursor: page.Next,
		Duration: time.Since(start), Err: err, Attempt: attempt}
	if n := len(page.Events); n > 0 {
		info.LastPosition, info.LastCreatedAt = page.Events[n-1].Position, page.Events[n-1].CreatedAt
	}
	p.cfg.Observer.Applied(ctx, info)
	return err
}

// apply runs one consumer transaction: move the cursor from cursor to
// page.Next (only if it still is cursor, locking the row), apply every
// event, commit.
func (p *Puller) apply(ctx context.Context, cursor string, page Page) (err error) {
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return p.wrapDBErr("begin", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	ok, err := p.names.FeedCursorSwap(ctx, tx, p.cfg.Consumer, p.cfg.Feed, cursor, page.Next, time.Now())
	if err != nil {
		return p.wrapDBErr("store cursor", err)
	}
	if !ok {
		return errCursorMoved
	}
	for i := range page.Events {
		ev := page.Events[i]
		if err := p.callHandler(ctx, tx, ev); err != nil {
			return fmt.Errorf("accord feed: consumer %q: handler failed on event %s (position %d, topic %s): %w",
				p.cfg.Consumer, ev.ID, ev.Position, ev.Topic, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return p.wrapDBErr("commit", err)
	}
	return nil
}

func (p *Puller) callHandler(ctx context.Context, tx *sql.Tx, ev Event) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v\n%s", r, debug.Stack())
		}
	}()
	return p.handler(ctx, tx, ev)
}

func (p *Puller) wrapDBErr(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("accord feed: consumer %q: %s in %s: %w", p.cfg.Consumer, op, p.names.FeedCursor(), err)
}

// backoff returns the wait before retry number attempt (0-based).
func (p *Puller) backoff(attempt int) time.Duration {
	return service.Backoff(attempt, p.cfg.RetryBackoffMin, p.cfg.RetryBackoffMax)
}
