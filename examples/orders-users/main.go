// Command orders-users runs two services that each own their database and
// keep replicas of each other's data with Accord, while it injects the
// trouble real systems meet: duplicates, reordering, consumer outages and
// drift behind a consumer's back.
//
//   - The user service owns users. Each change writes the user and a
//     users.changed event in one transaction (outbox); its relay pushes the
//     events through a broker; the order service consumes them through its
//     inbox into its replica user_profiles (replica ByVersion).
//   - The order service owns orders. Each change writes the order and an
//     orders.changed event in one transaction; its relay appends them to its
//     own change feed, served over HTTP; the user service pulls the feed into
//     its replica order_summaries, storing its cursor in the same transaction.
//
// At the end every replica is compared with its source row by row; the
// program prints "proved:" and exits 0, or prints what failed and exits 1.
//
//	go run ./examples/orders-users
//
// With no flags it needs nothing else: a SQLite file per service in a
// temporary directory, watermill's in-process GoChannel as the broker, the
// feed on 127.0.0.1. --database-url-users and --database-url-orders
// (PostgreSQL or MySQL URLs) and --nats-url (NATS with JetStream) run it on
// real servers.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/accordgo/accord/feed"
	"github.com/accordgo/accord/inbox"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/reconcile"
	"github.com/accordgo/accord/relay"
	"github.com/accordgo/accord/replica"
)

const (
	usersTopic       = "users.changed"
	ordersTopic      = "orders.changed"
	feedName         = "orders"
	profilesReplica  = "orders.user_profiles"  // the order service's replica, and its inbox consumer
	summariesReplica = "users.order_summaries" // the user service's replica, and its feed consumer
	reconcileBuckets = 16
)

// config is what the command line sets; zero values mean the defaults.
type config struct {
	UsersDatabaseURL  string // PostgreSQL or MySQL URL of the user service; empty: SQLite in a temporary file
	OrdersDatabaseURL string // the same for the order service
	UsersSchema       string // PostgreSQL schema (MySQL database) of the user service, dropped and recreated; "accord_example_users"
	OrdersSchema      string // the same for the order service; "accord_example_orders"
	NATSURL           string // NATS URL (JetStream enabled); empty: the in-process GoChannel
	NATSSubjectPrefix string // prepended to NATS subjects (tests isolate runs with it); ""
	NATSConsumer      string // JetStream durable consumer of the order service; "orders_user_profiles"
	Timeout           time.Duration
	Verbose           bool // library logs (info and up) on stderr
}

func (c config) withDefaults() config {
	if c.UsersSchema == "" {
		c.UsersSchema = "accord_example_users"
	}
	if c.OrdersSchema == "" {
		c.OrdersSchema = "accord_example_orders"
	}
	if c.NATSConsumer == "" {
		c.NATSConsumer = "orders_user_profiles"
	}
	if c.Timeout == 0 {
		c.Timeout = 2 * time.Minute
	}
	return c
}

func main() {
	var cfg config
	flag.StringVar(&cfg.UsersDatabaseURL, "database-url-users", os.Getenv("ACCORD_DATABASE_URL_USERS"),
		"user service database, postgres://... or mysql://... (env ACCORD_DATABASE_URL_USERS; default: SQLite in a temporary file)")
	flag.StringVar(&cfg.OrdersDatabaseURL, "database-url-orders", os.Getenv("ACCORD_DATABASE_URL_ORDERS"),
		"order service database, postgres://... or mysql://... (env ACCORD_DATABASE_URL_ORDERS; default: SQLite in a temporary file)")
	flag.StringVar(&cfg.NATSURL, "nats-url", os.Getenv("ACCORD_NATS_URL"),
		"NATS URL with JetStream, e.g. nats://127.0.0.1:4222 (env ACCORD_NATS_URL; default: in-process GoChannel)")
	flag.BoolVar(&cfg.Verbose, "verbose", false, "print the library's logs (info and up) on stderr")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, cfg, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "orders-users failed:", err)
		os.Exit(1)
	}
}

// demo is one run: the two services, the broker between them, and what the
// consumers decided.
type demo struct {
	cfg     config
	out     io.Writer
	outMu   sync.Mutex
	logger  *slog.Logger
	bg      *background
	j       *journal
	closers []func()

	broker *broker
	users  *userService
	orders *orderService
	cursor *feed.Puller // never runs: reads the user service's stored cursor

	// what the steps found, for the summary
	redelivered  int // messages the broker delivered again after the outage
	driftUsers   int
	driftOrders  int
	feedURL      string
	dupInboxID   string
	dupFeedNewID string
}

func run(ctx context.Context, cfg config, stdout io.Writer) error {
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	x := &demo{
		cfg:    cfg,
		out:    stdout,
		logger: quietLogger(cfg.Verbose, os.Stderr),
		bg:     &background{errs: make(chan error, 1)},
		j:      &journal{},
	}
	defer x.shutdown()
	for _, step := range []func(context.Context) error{
		x.setup, x.normal, x.duplicates, x.reordering, x.outages, x.drift, x.check,
	} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (x *demo) say(format string, args ...any) {
	x.outMu.Lock()
	defer x.outMu.Unlock()
	fmt.Fprintf(x.out, format+"\n", args...)
}

func (x *demo) onShutdown(f func()) { x.closers = append(x.closers, f) }

func (x *demo) shutdown() {
	for i := len(x.closers) - 1; i >= 0; i-- {
		x.closers[i]()
	}
}

// ---------------------------------------------------------------------------
// Setup: two databases, a broker, two relays, a consumer, a puller.

func (x *demo) setup(ctx context.Context) error {
	cfg := x.cfg
	dir := ""
	if cfg.UsersDatabaseURL == "" || cfg.OrdersDatabaseURL == "" {
		var err error
		if dir, err = os.MkdirTemp("", "accord-orders-users-"); err != nil {
			return err
		}
		x.onShutdown(func() { _ = os.RemoveAll(dir) })
	}
	udb, err := openDatabase(ctx, cfg.UsersDatabaseURL, cfg.UsersSchema, dir, "users.db", usersDDL)
	if err != nil {
		return fmt.Errorf("user service database: %w", err)
	}
	x.onShutdown(func() { _ = udb.Close() })
	odb, err := openDatabase(ctx, cfg.OrdersDatabaseURL, cfg.OrdersSchema, dir, "orders.db", ordersDDL)
	if err != nil {
		return fmt.Errorf("order service database: %w", err)
	}
	x.onShutdown(func() { _ = odb.Close() })

	if cfg.NATSURL == "" {
		x.broker = openGoChannel()
	} else if x.broker, err = openNATS(ctx, cfg.NATSURL, cfg.NATSSubjectPrefix, cfg.NATSConsumer); err != nil {
		return err
	}
	x.onShutdown(x.broker.close)

	// The order service: outbox → relay → its feed, served over HTTP; the
	// broker → inbox → user_profiles.
	o := &orderService{db: odb, broker: x.broker, j: x.j, wlog: watermill.NewSlogLogger(x.logger)}
	if o.ob, err = outbox.New(&outbox.Config{Dialect: odb.dialect, Schema: odb.schema}); err != nil {
		return err
	}
	if o.feed, err = feed.NewSource(odb.DB, &feed.SourceConfig{Dialect: odb.dialect, Schema: odb.schema, Name: feedName, Logger: x.logger}); err != nil {
		return err
	}
	o.net = newTrouble(o.feed.Publisher())
	if o.relay, err = relay.New(odb.DB, o.net, x.relayConfig(odb)); err != nil {
		return err
	}
	if o.inbox, err = inbox.New(odb.DB, &inbox.Config{Dialect: odb.dialect, Schema: odb.schema, Consumer: profilesReplica,
		Logger: x.logger, Observer: inboxObserver{x.j}}); err != nil {
		return err
	}
	if o.profiles, err = replica.New(odb.DB, &replica.Config{Dialect: odb.dialect, Schema: odb.schema, Name: profilesReplica,
		Mode: replica.ByVersion, Logger: x.logger, Observer: replicaObserver{x.j}}, o.writeProfile); err != nil {
		return err
	}
	// Reconcile compares (key, version) pairs; KeyPrefix makes row 2 the key
	// "order-2", the partition key of its events, so that drifted keys can be
	// repaired through the outbox as they are.
	if o.side, err = reconcile.NewSQLSide(odb.DB, reconcile.SQLSideConfig{Dialect: odb.dialect, Schema: odb.schema,
		Table: "orders", KeyColumn: "id", VersionColumn: "version", KeyPrefix: "order-"}); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/feeds/orders", o.feed.Handler())
	mux.Handle("/reconcile/", http.StripPrefix("/reconcile", reconcile.Handler(o.side)))
	url, stop, err := serve(mux, x.logger)
	if err != nil {
		return err
	}
	o.url, x.feedURL = url, url+"/feeds/orders"
	x.onShutdown(stop)
	x.orders = o

	// The user service: outbox → relay → the broker; the order service's
	// feed → puller → order_summaries.
	u := &userService{db: udb, j: x.j}
	if u.ob, err = outbox.New(&outbox.Config{Dialect: udb.dialect, Schema: udb.schema}); err != nil {
		return err
	}
	u.net = newTrouble(x.broker.pub)
	if u.relay, err = relay.New(udb.DB, u.net, x.relayConfig(udb)); err != nil {
		return err
	}
	if u.summaries, err = replica.New(udb.DB, &replica.Config{Dialect: udb.dialect, Schema: udb.schema, Name: summariesReplica,
		Mode: replica.ByVersion, Logger: x.logger, Observer: replicaObserver{x.j}}, u.writeSummary); err != nil {
		return err
	}
	if u.fetcher, err = feed.NewHTTPFetcher(x.feedURL, nil); err != nil {
		return err
	}
	u.pullerCfg = &feed.PullerConfig{
		Dialect: udb.dialect, Schema: udb.schema, Consumer: summariesReplica, Feed: feedName,
		Wait:            5 * time.Second, // long polling: a new event is pulled as soon as it is appended
		IdleInterval:    10 * time.Millisecond,
		RetryBackoffMin: 20 * time.Millisecond,
		RetryBackoffMax: time.Second,
		Logger:          x.logger,
		Observer:        pullerObserver{j: x.j},
	}
	if x.cursor, err = feed.NewPuller(udb.DB, u.fetcher, u.pullerCfg, u.applyOrderEvent); err != nil {
		return err
	}
	if u.side, err = reconcile.NewSQLSide(udb.DB, reconcile.SQLSideConfig{Dialect: udb.dialect, Schema: udb.schema,
		Table: "users", KeyColumn: "id", VersionColumn: "version", KeyPrefix: "user-"}); err != nil {
		return err
	}
	mux = http.NewServeMux()
	mux.Handle("/reconcile/", http.StripPrefix("/reconcile", reconcile.Handler(u.side)))
	if u.url, stop, err = serve(mux, x.logger); err != nil {
		return err
	}
	x.onShutdown(stop)
	x.users = u

	for _, r := range []struct {
		name string
		r    *relay.Relay
	}{{"the user service's relay", u.relay}, {"the order service's relay", o.relay}} {
		go func() { x.bg.report(r.name, r.r.Run(ctx)) }()
		x.onShutdown(func() { _ = r.r.Close() })
		select {
		case <-r.r.Running():
		case err := <-x.bg.errs:
			return err
		case <-ctx.Done():
			return fmt.Errorf("%s did not start: %w", r.name, ctx.Err())
		}
	}
	if err := o.startConsumer(ctx, x.bg); err != nil {
		return err
	}
	x.onShutdown(o.stopConsumer)
	if err := u.startPuller(ctx, x.bg); err != nil {
		return err
	}
	x.onShutdown(u.stopPuller)

	x.say("user service:  %s; its relay pushes %s through %s", udb.desc, usersTopic, x.broker.desc)
	x.say("order service: %s; its relay fills its %s feed, served at %s", odb.desc, feedName, x.feedURL)
	return nil
}

func (x *demo) relayConfig(d *database) *relay.Config {
	return &relay.Config{
		Dialect: d.dialect, Schema: d.schema, Logger: x.logger,
		PollInterval:    50 * time.Millisecond, // SQLite and MySQL poll; PostgreSQL also LISTENs
		RetryBackoffMin: 20 * time.Millisecond,
		RetryBackoffMax: time.Second,
		ShutdownTimeout: 5 * time.Second,
	}
}

// ---------------------------------------------------------------------------
// 1. Normal traffic

func (x *demo) normal(ctx context.Context) error {
	u, o := x.users, x.orders
	x.say("")
	x.say("1. Normal traffic: each change is a row and its event, committed in one transaction")
	for _, nu := range []user{
		{ID: 1, Name: "Ada", Email: "ada@example.com", Tier: "gold"},
		{ID: 2, Name: "Bob", Email: "bob@example.com", Tier: "silver"},
		{ID: 3, Name: "Cy", Email: "cy@example.com", Tier: "bronze"},
	} {
		saved, _, err := u.saveUser(ctx, nu.ID, func(cur *user) { cur.Name, cur.Email, cur.Tier = nu.Name, nu.Email, nu.Tier })
		if err != nil {
			return err
		}
		x.say("user service: saved user %d (%s, %s) at version %d with its %s event", saved.ID, saved.Name, saved.Tier, saved.Version, usersTopic)
	}
	for _, no := range []order{{ID: 1, UserID: 1, TotalCents: 4200}, {ID: 2, UserID: 2, TotalCents: 1990}} {
		saved, _, err := o.saveOrder(ctx, no.ID, func(cur *order) { cur.UserID, cur.TotalCents, cur.Status = no.UserID, no.TotalCents, "placed" })
		if err != nil {
			return err
		}
		x.say("order service: saved order %d (user %d, %s, %s) at version %d with its %s event",
			saved.ID, saved.UserID, money(saved.TotalCents), saved.Status, saved.Version, ordersTopic)
	}
	if err := x.setOrderStatus(ctx, 1, "paid"); err != nil {
		return err
	}
	if err := x.syncPush(ctx); err != nil {
		return err
	}
	x.say("order service: user_profiles matches users (3 rows): pushed through the broker, each message applied once by the inbox")
	if err := x.syncPull(ctx); err != nil {
		return err
	}
	x.say("user service: order_summaries matches orders (2 rows): pulled from the feed, cursor stored with the rows")
	return nil
}

func (x *demo) setOrderStatus(ctx context.Context, id int64, status string) error {
	_, err := x.saveOrderStatus(ctx, id, status)
	return err
}

func (x *demo) saveOrderStatus(ctx context.Context, id int64, status string) (string, error) {
	saved, msgID, err := x.orders.saveOrder(ctx, id, func(cur *order) { cur.Status = status })
	if err == nil {
		x.say("order service: order %d is %s: version %d", id, status, saved.Version)
	}
	return msgID, err
}

// ---------------------------------------------------------------------------
// 2. Duplicates

func (x *demo) duplicates(ctx context.Context) error {
	u, o := x.users, x.orders
	x.say("")
	x.say("2. Duplicates")

	// Push: the broker delivers a message again.
	dup, err := u.net.lastSent(userKey(1), 1)
	if err != nil {
		return err
	}
	x.dupInboxID = dup.UUID
	mark := x.j.mark()
	if err := x.broker.inject.Publish(usersTopic, dup); err != nil {
		return err
	}
	x.say("inject: the broker delivers %s user-1 v1 (message %s) a second time", usersTopic, dup.UUID)
	err = x.bg.waitFor(ctx, "the order service handled the second delivery", func(context.Context) (bool, error) {
		return len(x.j.since(mark, func(n note) bool { return n.who == "inbox" && n.msgID == dup.UUID })) > 0, nil
	})
	if err != nil {
		return err
	}
	if got := x.j.since(mark, func(n note) bool { return n.who == "inbox" && n.msgID == dup.UUID }); got[0].outcome != "duplicate" {
		return fmt.Errorf("the inbox %s the second delivery of message %s, want duplicate", got[0].outcome, dup.UUID)
	}
	if err := x.equalProfiles(ctx); err != nil {
		return err
	}
	x.say("order service: its inbox holds that message id already: dropped as a duplicate, user_profiles unchanged")

	// Pull: the same change appended to the feed again, with its id and
	// under a new one.
	m, err := o.net.lastSent(orderKey(1), 2)
	if err != nil {
		return err
	}
	ev := feed.Event{ID: m.UUID, Topic: ordersTopic, Key: orderKey(1), Version: 2, Payload: m.Payload, Metadata: m.Metadata}
	n, err := o.feed.Append(ctx, ev)
	if err != nil {
		return err
	}
	if n != 0 {
		return fmt.Errorf("the feed appended event %s a second time", m.UUID)
	}
	x.say("inject: %s order-1 v2 (message %s) appended to the feed again: the feed skipped it, it holds that id already", ordersTopic, m.UUID)
	ev.ID = outbox.NewID()
	x.dupFeedNewID = ev.ID
	if n, err = o.feed.Append(ctx, ev); err != nil || n != 1 {
		return fmt.Errorf("append order-1 v2 under a new id: %d appended, %v", n, err)
	}
	x.say("inject: the same change appended again under a new id %s, as a producer retrying with a fresh id would", ev.ID)
	err = x.bg.waitFor(ctx, "the user service pulled the copy", func(ctx context.Context) (bool, error) {
		if !x.j.has(func(n note) bool { return n.who == summariesReplica && n.msgID == ev.ID }) {
			return false, nil
		}
		return x.pullCaughtUp(ctx)
	})
	if err != nil {
		return err
	}
	if !x.j.has(func(n note) bool { return n.who == summariesReplica && n.msgID == ev.ID && n.outcome == "stale" }) {
		return fmt.Errorf("the replica did not skip the copy %s of order-1 v2 as stale", ev.ID)
	}
	if err := x.equalSummaries(ctx); err != nil {
		return err
	}
	x.say("user service: pulled the copy and skipped it as stale: order_summaries holds order-1 at version 2 already")
	return nil
}

// ---------------------------------------------------------------------------
// 3. Reordering

func (x *demo) reordering(ctx context.Context) error {
	u, o := x.users, x.orders
	x.say("")
	x.say("3. Reordering: a newer version delivered before an older one")

	// Push
	u.net.holdNext(userKey(2))
	x.say("inject: the network between the user service's relay and the broker holds back the next %s of user-2", usersTopic)
	saved, v2, err := u.saveUser(ctx, 2, func(cur *user) { cur.Tier = "gold" })
	if err != nil {
		return err
	}
	x.say("user service: user 2 moved to tier %s: version %d", saved.Tier, saved.Version)
	saved, v3, err := u.saveUser(ctx, 2, func(cur *user) { cur.Email = "bob@example.org" })
	if err != nil {
		return err
	}
	x.say("user service: user 2 changed email to %s: version %d", saved.Email, saved.Version)
	err = x.bg.waitFor(ctx, "user-2 v3 was applied while v2 is held back", func(context.Context) (bool, error) {
		held := u.net.holding()
		return held != nil && held.UUID == v2 && x.j.has(func(n note) bool { return n.who == "inbox" && n.msgID == v3 }), nil
	})
	if err != nil {
		return err
	}
	gap := x.j.since(0, func(n note) bool { return n.who == profilesReplica && n.msgID == v3 && n.outcome == "gap" })
	if len(gap) == 0 {
		return errors.New("the replica did not report a gap for user-2 v3")
	}
	x.say("order service: user-2 v3 arrived first: applied, and the replica reported a gap (it held version %d)", gap[0].position)
	if err := u.net.release(); err != nil {
		return err
	}
	x.say("inject: the held-back user-2 v2 is delivered now, after v3")
	err = x.bg.waitFor(ctx, "the order service handled user-2 v2", func(ctx context.Context) (bool, error) {
		if !x.j.has(func(n note) bool { return n.who == "inbox" && n.msgID == v2 }) {
			return false, nil
		}
		return x.pushCaughtUp(ctx)
	})
	if err != nil {
		return err
	}
	if !x.j.has(func(n note) bool { return n.who == profilesReplica && n.msgID == v2 && n.outcome == "stale" }) {
		return errors.New("the replica did not skip the late user-2 v2 as stale")
	}
	if err := x.equalProfiles(ctx); err != nil {
		return err
	}
	x.say("order service: user-2 v2 arrived late: skipped as stale, user_profiles keeps version 3")

	// Pull
	o.net.holdNext(orderKey(2))
	x.say("inject: the network between the order service's relay and its feed holds back the next %s of order-2", ordersTopic)
	p2, err := x.saveOrderStatus(ctx, 2, "paid")
	if err != nil {
		return err
	}
	p3, err := x.saveOrderStatus(ctx, 2, "shipped")
	if err != nil {
		return err
	}
	err = x.bg.waitFor(ctx, "order-2 v3 was pulled while v2 is held back", func(ctx context.Context) (bool, error) {
		held := o.net.holding()
		if held == nil || held.UUID != p2 || !x.j.has(func(n note) bool { return n.who == summariesReplica && n.msgID == p3 }) {
			return false, nil
		}
		return x.pullCaughtUp(ctx)
	})
	if err != nil {
		return err
	}
	gap = x.j.since(0, func(n note) bool { return n.who == summariesReplica && n.msgID == p3 && n.outcome == "gap" })
	if len(gap) == 0 {
		return errors.New("the replica did not report a gap for order-2 v3")
	}
	x.say("user service: order-2 v3 arrived first: applied, and the replica reported a gap (it held version %d)", gap[0].position)
	if err := o.net.release(); err != nil {
		return err
	}
	x.say("inject: the held-back order-2 v2 reaches the feed now, after v3")
	err = x.bg.waitFor(ctx, "the user service pulled order-2 v2", func(ctx context.Context) (bool, error) {
		if !x.j.has(func(n note) bool { return n.who == summariesReplica && n.msgID == p2 }) {
			return false, nil
		}
		return x.pullCaughtUp(ctx)
	})
	if err != nil {
		return err
	}
	if !x.j.has(func(n note) bool { return n.who == summariesReplica && n.msgID == p2 && n.outcome == "stale" }) {
		return errors.New("the replica did not skip the late order-2 v2 as stale")
	}
	if err := x.equalSummaries(ctx); err != nil {
		return err
	}
	x.say("user service: order-2 v2 arrived late: skipped as stale, order_summaries keeps version 3")
	return nil
}

// ---------------------------------------------------------------------------
// 4. Outages

func (x *demo) outages(ctx context.Context) error {
	u, o := x.users, x.orders
	x.say("")
	x.say("4. Consumer outages: writes go on while a consumer is down")

	// Push: the order service's consumer is down.
	o.stopConsumer()
	x.say("inject: the order service's %s consumer is stopped", usersTopic)
	var ids []string
	for _, c := range []struct {
		id     int64
		change func(*user)
		says   string
	}{
		{1, func(cur *user) { cur.Name = "Ada King" }, "user service: user 1 renamed to Ada King: version %d"},
		{3, func(cur *user) { cur.Tier = "silver" }, "user service: user 3 moved to tier silver: version %d"},
		{4, func(cur *user) { cur.Name, cur.Email, cur.Tier = "Dee", "dee@example.com", "bronze" }, "user service: saved user 4 (Dee, bronze) at version %d with its " + usersTopic + " event"},
	} {
		saved, id, err := u.saveUser(ctx, c.id, c.change)
		if err != nil {
			return err
		}
		x.say(c.says, saved.Version)
		ids = append(ids, id)
	}
	err := x.bg.waitFor(ctx, "the user service's relay published the 3 changes", func(ctx context.Context) (bool, error) {
		b, err := u.relay.Backlog(ctx)
		return err == nil && b.Pending == 0 && u.net.wasForwarded(ids...), err
	})
	if err != nil {
		return err
	}
	profiles, err := readUsers(ctx, o.db, "user_profiles")
	if err != nil {
		return err
	}
	if len(profiles) != 3 || profiles[0].Version != 1 {
		return fmt.Errorf("with the consumer down, user_profiles changed: %+v", profiles)
	}
	x.say("user service: its relay published the 3 events; with the consumer down, user_profiles still has 3 users, user 1 at version 1")
	mark := x.j.mark()
	redeliver := 3 // JetStream delivers what was not acknowledged: the 3 changes
	if x.broker.stored != nil {
		redeliver = x.broker.stored() // the GoChannel delivers every message it holds again
	}
	if err := o.startConsumer(ctx, x.bg); err != nil {
		return err
	}
	x.say("inject: the consumer is started again")
	if err := x.syncPush(ctx); err != nil {
		return err
	}
	handled := func(n note) bool { return n.who == "inbox" && n.outcome != "failed" }
	err = x.bg.waitFor(ctx, fmt.Sprintf("the consumer handled the %d messages the broker delivers again", redeliver), func(context.Context) (bool, error) {
		return len(x.j.since(mark, handled)) >= redeliver, nil
	})
	if err != nil {
		return err
	}
	applied := x.j.since(mark, func(n note) bool { return n.who == "inbox" && n.outcome == "applied" })
	x.redelivered = len(x.j.since(mark, func(n note) bool { return n.who == "inbox" && n.outcome == "duplicate" }))
	if len(applied) != 3 {
		return fmt.Errorf("after the outage the consumer applied %d messages, want the 3 it missed", len(applied))
	}
	again := ""
	if x.redelivered > 0 {
		again = fmt.Sprintf("; the broker also delivered %d messages it had applied before, and the inbox dropped them", x.redelivered)
	}
	x.say("order service: caught up: applied the 3 changes it missed%s", again)
	x.say("order service: user_profiles matches users again (4 rows)")

	// Pull: the user service's puller is down.
	u.stopPuller()
	x.say("inject: the user service's puller is stopped")
	ids = ids[:0]
	id, err := x.saveOrderStatus(ctx, 1, "shipped")
	if err != nil {
		return err
	}
	ids = append(ids, id)
	for _, no := range []order{{ID: 3, UserID: 4, TotalCents: 1250}, {ID: 4, UserID: 1, TotalCents: 725}} {
		saved, id, err := o.saveOrder(ctx, no.ID, func(cur *order) { cur.UserID, cur.TotalCents, cur.Status = no.UserID, no.TotalCents, "placed" })
		if err != nil {
			return err
		}
		x.say("order service: saved order %d (user %d, %s, %s) at version %d with its %s event",
			saved.ID, saved.UserID, money(saved.TotalCents), saved.Status, saved.Version, ordersTopic)
		ids = append(ids, id)
	}
	behind := 0
	err = x.bg.waitFor(ctx, "the order service's relay appended the 3 changes to its feed", func(ctx context.Context) (bool, error) {
		b, err := o.relay.Backlog(ctx)
		if err != nil || b.Pending > 0 || !o.net.wasForwarded(ids...) {
			return false, err
		}
		cursor, err := x.cursor.Cursor(ctx)
		if err != nil {
			return false, err
		}
		page, err := o.feed.Read(ctx, cursor, feed.ReadLimitMax, 0)
		behind = len(page.Events)
		return err == nil, err
	})
	if err != nil {
		return err
	}
	summaries, err := readOrders(ctx, u.db, "order_summaries", "order_id")
	if err != nil {
		return err
	}
	if behind != 3 || len(summaries) != 2 {
		return fmt.Errorf("with the puller stopped: %d events after its cursor (want 3), %d orders in order_summaries (want 2)", behind, len(summaries))
	}
	x.say("order service: its relay appended the 3 events to its feed; the user service's stored cursor is 3 events behind, order_summaries still has 2 orders")
	mark = x.j.mark()
	if err := u.startPuller(ctx, x.bg); err != nil {
		return err
	}
	x.say("inject: the puller is started again")
	if err := x.syncPull(ctx); err != nil {
		return err
	}
	// The puller's observer hears of a page after its commit.
	pulled := 0
	err = x.bg.waitFor(ctx, "the puller reported the pages it applied", func(context.Context) (bool, error) {
		pulled = 0
		for _, n := range x.j.since(mark, func(n note) bool { return n.who == "puller" }) {
			pulled += n.events
		}
		return pulled >= 3, nil
	})
	if err != nil {
		return err
	}
	if pulled != 3 {
		return fmt.Errorf("after the outage the puller applied %d events, want the 3 it missed", pulled)
	}
	x.say("user service: resumed from its stored cursor: applied the 3 events it missed; order_summaries matches orders again (4 rows)")
	return nil
}

// ---------------------------------------------------------------------------
// 5. Drift

func (x *demo) drift(ctx context.Context) error {
	u, o := x.users, x.orders
	x.say("")
	x.say("5. Drift: replica rows edited behind the consumers' backs, found and repaired by reconcile")
	for _, stmt := range []string{
		"UPDATE {user_profiles} SET name = 'Mallory', version = 1 WHERE id = 2",
		"DELETE FROM {user_profiles} WHERE id = 3",
		"INSERT INTO {user_profiles} (id, name, email, tier, version) VALUES (99, 'Ghost', 'ghost@example.com', 'gold', 1)",
	} {
		if _, err := o.db.ExecContext(ctx, o.db.q(stmt)); err != nil {
			return err
		}
	}
	x.say("inject: in the order service's database: user 2 renamed to Mallory at version 1, user 3 deleted, a user 99 invented")
	if _, err := u.db.ExecContext(ctx, u.db.q("UPDATE {order_summaries} SET total_cents = 0, status = 'cancelled', version = 9 WHERE order_id = 1")); err != nil {
		return err
	}
	x.say("inject: in the user service's database: order 1 set to cancelled, 0.00, at version 9")

	profilesSide, err := reconcile.NewSQLSide(o.db.DB, reconcile.SQLSideConfig{Dialect: o.db.dialect, Schema: o.db.schema,
		Table: "user_profiles", KeyColumn: "id", VersionColumn: "version", KeyPrefix: "user-"})
	if err != nil {
		return err
	}
	summariesSide, err := reconcile.NewSQLSide(u.db.DB, reconcile.SQLSideConfig{Dialect: u.db.dialect, Schema: u.db.schema,
		Table: "order_summaries", KeyColumn: "order_id", VersionColumn: "version", KeyPrefix: "order-"})
	if err != nil {
		return err
	}
	usersSource := reconcile.HTTPSide{BaseURL: u.url + "/reconcile"} // digests computed by the user service
	ordersSource := reconcile.HTTPSide{BaseURL: o.url + "/reconcile"}
	opts := &reconcile.Options{Buckets: reconcileBuckets}
	// A snapshot is the source's row as JSON (RowJSON, which strips the
	// key prefix again): the columns of users and orders are the fields of
	// their events' payloads.
	loadUser := func(ctx context.Context, tx *sql.Tx, key string) ([]byte, int64, bool, error) {
		return u.side.RowJSON(ctx, tx, key)
	}
	loadOrder := func(ctx context.Context, tx *sql.Tx, key string) ([]byte, int64, bool, error) {
		return o.side.RowJSON(ctx, tx, key)
	}

	mark := x.j.mark()
	for _, r := range []struct {
		what            string
		source, replica reconcile.Side
		want            string
		topic           string
		emitter         *reconcile.SnapshotEmitter
		count           *int
		relay           *relay.Relay
		owner           string
	}{
		{"users → user_profiles", usersSource, profilesSide, "missing [user-3] stale [user-2] ahead [] extra [user-99]", usersTopic,
			&reconcile.SnapshotEmitter{DB: u.db.DB, Outbox: u.ob, Topic: usersTopic, Load: loadUser}, &x.driftUsers, u.relay, "user service"},
		{"orders → order_summaries", ordersSource, summariesSide, "missing [] stale [] ahead [order-1] extra []", ordersTopic,
			&reconcile.SnapshotEmitter{DB: o.db.DB, Outbox: o.ob, Topic: ordersTopic, Load: loadOrder}, &x.driftOrders, o.relay, "order service"},
	} {
		rep, err := reconcile.Run(ctx, r.source, r.replica, opts)
		if err != nil {
			return err
		}
		x.say("reconcile %s: %d source keys, %d replica keys; %d of %d bucket digests differ; keys compared: %d",
			r.what, rep.SourceKeys, rep.ReplicaKeys, rep.MismatchedBuckets, rep.Buckets, rep.KeysCompared)
		for _, set := range []struct {
			name string
			ds   []reconcile.KeyDrift
		}{{"missing", rep.Missing}, {"stale", rep.Stale}, {"ahead", rep.Ahead}, {"extra", rep.Extra}} {
			for _, d := range set.ds {
				x.say("  %-7s %s (source version %d, replica version %d)", set.name, d.Key, d.SourceVersion, d.ReplicaVersion)
			}
		}
		if got := driftSummary(rep); got != r.want {
			return fmt.Errorf("reconcile %s found %s, want %s", r.what, got, r.want)
		}
		// The report's keys are the events' partition keys, so a repair goes
		// through the same relay lane, in order, as the key's own changes.
		keys := rep.DriftedKeys()
		if err := r.emitter.Repair(ctx, keys); err != nil {
			return err
		}
		r.relay.Wake()
		*r.count = len(keys)
		x.say("repair: the %s re-emitted a snapshot of each drifted key (%s) through its outbox, on %s", r.owner, strings.Join(keys, ", "), r.topic)
	}

	err = x.bg.waitFor(ctx, "reconcile finds both replicas in sync", func(ctx context.Context) (bool, error) {
		for _, caught := range []func(context.Context) (bool, error){x.pushCaughtUp, x.pullCaughtUp} {
			if ok, err := caught(ctx); !ok || err != nil {
				return false, err
			}
		}
		for _, pair := range [][2]reconcile.Side{{usersSource, profilesSide}, {ordersSource, summariesSide}} {
			rep, err := reconcile.Run(ctx, pair[0], pair[1], opts)
			if err != nil || !rep.InSync() {
				return false, err
			}
		}
		return x.equalProfiles(ctx) == nil && x.equalSummaries(ctx) == nil, nil
	})
	if err != nil {
		return err
	}
	var handled []string
	for _, n := range x.j.since(mark, func(n note) bool { return n.who == "snapshot" }) {
		h := fmt.Sprintf("%s rewritten at version %d", n.key, n.version)
		if n.outcome == "tombstone" {
			h = n.key + " deleted (tombstone)"
		}
		if !slices.Contains(handled, h) { // a retried transaction notes it again
			handled = append(handled, h)
		}
	}
	sort.Strings(handled)
	x.say("consumers: applied the snapshots: %s", strings.Join(handled, "; "))
	x.say("reconcile: both replicas are in sync again")
	return nil
}

func driftSummary(r *reconcile.Report) string {
	keys := func(ds []reconcile.KeyDrift) []string {
		out := []string{}
		for _, d := range ds {
			out = append(out, d.Key)
		}
		return out
	}
	return fmt.Sprintf("missing %v stale %v ahead %v extra %v", keys(r.Missing), keys(r.Stale), keys(r.Ahead), keys(r.Extra))
}

// ---------------------------------------------------------------------------
// 6. Check

func (x *demo) check(ctx context.Context) error {
	u, o := x.users, x.orders
	x.say("")
	x.say("6. Check: every replica equals its source")
	if err := x.equalProfiles(ctx); err != nil {
		return err
	}
	if err := x.equalSummaries(ctx); err != nil {
		return err
	}
	users, err := readUsers(ctx, u.db, "users")
	if err != nil {
		return err
	}
	for _, usr := range users {
		if v, _, _, err := o.profiles.Position(ctx, userKey(usr.ID)); err != nil || v != usr.Version {
			return fmt.Errorf("replica position of %s is %d, want the user's version %d (%v)", userKey(usr.ID), v, usr.Version, err)
		}
	}
	orders, err := readOrders(ctx, o.db, "orders", "id")
	if err != nil {
		return err
	}
	for _, ord := range orders {
		if v, _, _, err := u.summaries.Position(ctx, orderKey(ord.ID)); err != nil || v != ord.Version {
			return fmt.Errorf("replica position of %s is %d, want the order's version %d (%v)", orderKey(ord.ID), v, ord.Version, err)
		}
	}
	if dls, err := o.inbox.DeadLetters(ctx, nil); err != nil || len(dls) > 0 {
		return fmt.Errorf("the order service's inbox parked %d dead letters (%v)", len(dls), err)
	}
	for _, r := range []*relay.Relay{u.relay, o.relay} {
		if b, err := r.Backlog(ctx); err != nil || b.Pending > 0 {
			return fmt.Errorf("an outbox still holds %d events (%v)", b.Pending, err)
		}
	}

	// What the replicas are for: local joins, no call to the other service.
	rows, err := u.db.QueryContext(ctx, u.db.q(`SELECT u.id, u.name, s.total_cents FROM {users} u
		LEFT JOIN {order_summaries} s ON s.user_id = u.id ORDER BY u.id, s.order_id`))
	if err != nil {
		return err
	}
	type agg struct {
		name          string
		orders, cents int64
	}
	var view []agg
	var last int64
	for rows.Next() {
		var id int64
		var name string
		var cents *int64
		if err := rows.Scan(&id, &name, &cents); err != nil {
			rows.Close()
			return err
		}
		if len(view) == 0 || id != last {
			view, last = append(view, agg{name: name}), id
		}
		if cents != nil {
			view[len(view)-1].orders++
			view[len(view)-1].cents += *cents
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var parts []string
	for _, a := range view {
		s := "s"
		if a.orders == 1 {
			s = ""
		}
		parts = append(parts, fmt.Sprintf("%s %d order%s, %s", a.name, a.orders, s, money(a.cents)))
	}
	x.say("user service: orders per user, joining users with its order_summaries replica: %s", strings.Join(parts, "; "))
	rows, err = o.db.QueryContext(ctx, o.db.q(`SELECT o.id, o.status, p.name, p.email, p.tier FROM {orders} o
		JOIN {user_profiles} p ON p.id = o.user_id ORDER BY o.id`))
	if err != nil {
		return err
	}
	parts = parts[:0]
	for rows.Next() {
		var id int64
		var status, name, email, tier string
		if err := rows.Scan(&id, &status, &name, &email, &tier); err != nil {
			rows.Close()
			return err
		}
		parts = append(parts, fmt.Sprintf("order %d %s for %s <%s>, %s", id, status, name, email, tier))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	x.say("order service: customers of orders, joining orders with its user_profiles replica: %s", strings.Join(parts, "; "))

	again := "the broker delivered nothing twice"
	if x.redelivered > 0 {
		again = fmt.Sprintf("the inbox dropped the %d messages delivered again", x.redelivered)
	}
	x.say("proved:")
	x.say("  - push: user_profiles (order service) equals users (user service), %d rows, every column, and each replica position equals the user's version", len(users))
	x.say("  - pull: order_summaries (user service) equals orders (order service), %d rows, every column, and each replica position equals the order's version", len(orders))
	x.say("  - duplicates changed nothing: the inbox dropped a redelivered message, the feed skipped an id it held, the replica skipped a copy under a new id as stale")
	x.say("  - reordering never moved a replica back: user-2 and order-2 each got v3 before v2 and kept v3")
	x.say("  - outages lost nothing: the consumer applied the 3 changes published while it was down (%s), the puller the 3 events appended while it was stopped, from its stored cursor", again)
	x.say("  - drift was found and repaired: reconcile found %d drifted users and %d drifted order, snapshots re-emitted through the outboxes repaired them, and reconcile then found both replicas in sync", x.driftUsers, x.driftOrders)
	x.say("  - nothing is left behind: both outboxes are empty and the inbox holds no dead letter")
	return nil
}

// ---------------------------------------------------------------------------
// Conditions

// pushCaughtUp: the user service's outbox is empty and the order service's
// inbox handled every message the relay handed to the broker.
func (x *demo) pushCaughtUp(ctx context.Context) (bool, error) {
	b, err := x.users.relay.Backlog(ctx)
	if err != nil || b.Pending > 0 {
		return false, err
	}
	handled := map[string]bool{}
	for _, n := range x.j.since(0, func(n note) bool { return n.who == "inbox" && n.outcome != "failed" }) {
		handled[n.msgID] = true
	}
	for _, id := range x.users.net.forwardedIDs() {
		if !handled[id] {
			return false, nil
		}
	}
	return true, nil
}

// pullCaughtUp: the order service's outbox is empty and the user service's
// stored cursor is the head of the feed.
func (x *demo) pullCaughtUp(ctx context.Context) (bool, error) {
	b, err := x.orders.relay.Backlog(ctx)
	if err != nil || b.Pending > 0 {
		return false, err
	}
	head, err := x.orders.feed.Head(ctx)
	if err != nil {
		return false, err
	}
	cursor, err := x.cursor.Cursor(ctx)
	return err == nil && cursor == head, err
}

func (x *demo) syncPush(ctx context.Context) error {
	return x.bg.waitFor(ctx, "user_profiles matches users", func(ctx context.Context) (bool, error) {
		ok, err := x.pushCaughtUp(ctx)
		return ok && err == nil && x.equalProfiles(ctx) == nil, err
	})
}

func (x *demo) syncPull(ctx context.Context) error {
	return x.bg.waitFor(ctx, "order_summaries matches orders", func(ctx context.Context) (bool, error) {
		ok, err := x.pullCaughtUp(ctx)
		return ok && err == nil && x.equalSummaries(ctx) == nil, err
	})
}

// equalProfiles compares user_profiles with users, row by row.
func (x *demo) equalProfiles(ctx context.Context) error {
	src, err := readUsers(ctx, x.users.db, "users")
	if err != nil {
		return err
	}
	rep, err := readUsers(ctx, x.orders.db, "user_profiles")
	if err != nil {
		return err
	}
	if !slices.Equal(src, rep) {
		return fmt.Errorf("user_profiles %+v differs from users %+v", rep, src)
	}
	return nil
}

// equalSummaries compares order_summaries with orders, row by row.
func (x *demo) equalSummaries(ctx context.Context) error {
	src, err := readOrders(ctx, x.orders.db, "orders", "id")
	if err != nil {
		return err
	}
	rep, err := readOrders(ctx, x.users.db, "order_summaries", "order_id")
	if err != nil {
		return err
	}
	if !slices.Equal(src, rep) {
		return fmt.Errorf("order_summaries %+v differs from orders %+v", rep, src)
	}
	return nil
}

func readUsers(ctx context.Context, d *database, table string) ([]user, error) {
	rows, err := d.QueryContext(ctx, d.q("SELECT id, name, email, tier, version FROM {"+table+"} ORDER BY id"))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []user
	for rows.Next() {
		var u user
		if err := rows.Scan(&u.ID, &u.Name, &u.Email, &u.Tier, &u.Version); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

func readOrders(ctx context.Context, d *database, table, idColumn string) ([]order, error) {
	rows, err := d.QueryContext(ctx, d.q("SELECT "+idColumn+", user_id, total_cents, status, version FROM {"+table+"} ORDER BY "+idColumn))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []order
	for rows.Next() {
		var o order
		if err := rows.Scan(&o.ID, &o.UserID, &o.TotalCents, &o.Status, &o.Version); err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, rows.Err()
}
