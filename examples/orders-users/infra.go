package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/nats-io/nats.go"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/feed"
	"github.com/accordgo/accord/inbox"
	"github.com/accordgo/accord/migrate"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/replica"
)

// ---------------------------------------------------------------------------
// Databases

// database is one service's own database: a pool, its dialect, and the
// PostgreSQL schema (MySQL database) that holds the service's tables and
// Accord's.
type database struct {
	*sql.DB
	dialect accord.Dialect
	schema  string // "" on SQLite
	desc    string // for the first lines of the output
}

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// openDatabase opens url (SQLite file in dir when url is empty), resets the
// service's dedicated schema (PostgreSQL) or database (MySQL) so that reruns
// start clean, applies Accord's migrations and runs ddl.
func openDatabase(ctx context.Context, url, schema, dir, file string, ddl []string) (*database, error) {
	desc := ""
	if url == "" {
		url, desc = "sqlite://"+dir+"/"+file, "SQLite, temporary file "+file
	}
	db, dialect, err := accord.OpenDB(url)
	if err != nil {
		return nil, err
	}
	d := &database{DB: db, dialect: dialect, schema: schema}
	var reset string
	switch dialect {
	case accord.SQLite:
		if desc == "" {
			db.Close()
			return nil, fmt.Errorf("%s: give a PostgreSQL or MySQL URL, or none for a temporary SQLite file", url)
		}
		d.schema = "" // a fresh file: nothing to reset
	case accord.Postgres:
		desc, reset = "PostgreSQL, schema "+schema, `DROP SCHEMA IF EXISTS "`+schema+`" CASCADE`
	case accord.MySQL:
		desc, reset = "MySQL, database "+schema, "DROP DATABASE IF EXISTS `"+schema+"`"
	}
	d.desc = desc
	if reset != "" {
		if !identRE.MatchString(schema) {
			db.Close()
			return nil, fmt.Errorf("schema %q: want lowercase letters, digits and underscores", schema)
		}
		if _, err := db.ExecContext(ctx, reset); err != nil {
			db.Close()
			return nil, fmt.Errorf("reset %s: %w", desc, err)
		}
	}
	m, err := migrate.New(db, &migrate.Config{Dialect: dialect, Schema: d.schema})
	if err == nil {
		_, err = m.Migrate(ctx, migrate.Up, nil)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate %s: %w", desc, err)
	}
	for _, stmt := range ddl {
		if _, err := db.ExecContext(ctx, d.q(stmt)); err != nil {
			db.Close()
			return nil, fmt.Errorf("%s: %w", desc, err)
		}
	}
	return d, nil
}

// q turns ? placeholders into $1, $2, ... on PostgreSQL and qualifies the
// table names written as {name} with the schema.
func (d *database) q(query string) string {
	var b strings.Builder
	n := 0
	for i := 0; i < len(query); i++ {
		switch c := query[i]; {
		case c == '?' && d.dialect == accord.Postgres:
			n++
			b.WriteString("$" + strconv.Itoa(n))
		case c == '{':
			end := strings.IndexByte(query[i:], '}')
			b.WriteString(d.table(query[i+1 : i+end]))
			i += end
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// table returns name qualified with the schema, quoted for the dialect.
func (d *database) table(name string) string {
	switch {
	case d.schema == "":
		return name
	case d.dialect == accord.MySQL:
		return "`" + d.schema + "`.`" + name + "`"
	default:
		return `"` + d.schema + `"."` + name + `"`
	}
}

// forUpdate locks the row read on PostgreSQL and MySQL (SQLite serializes
// writers anyway), so that writers of one aggregate take turns.
func (d *database) forUpdate() string {
	if d.dialect == accord.SQLite {
		return ""
	}
	return " FOR UPDATE"
}

// ---------------------------------------------------------------------------
// The broker between the user service's relay and the order service's
// consumer (push).

type broker struct {
	desc string
	// pub is what the relay publishes through. On NATS it sets Nats-Msg-Id,
	// so JetStream drops a copy the relay publishes again after a crash.
	pub message.Publisher
	// inject publishes the copies the trouble injector sends: on NATS
	// without Nats-Msg-Id, as a redelivery that slipped past the broker's
	// deduplication window.
	inject message.Publisher
	// subscriber returns a subscriber for one run of the consumer; a
	// watermill router closes its subscriber when it stops.
	subscriber func() (message.Subscriber, error)
	// stored returns how many messages the broker stores for redelivery
	// to a new subscriber (the GoChannel: all of them); nil when it
	// redelivers only what was not acknowledged (JetStream).
	stored func() int
	close  func()
}

// openGoChannel returns watermill's in-process GoChannel. It is persistent,
// so messages published while the consumer is down wait for it (a
// restarted consumer receives every message again, and its inbox drops the
// ones it applied), and it blocks each publish until the consumer
// acknowledged it, which keeps each key's messages in order.
func openGoChannel() *broker {
	ch := gochannel.NewGoChannel(gochannel.Config{Persistent: true, BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	pub := &counting{Publisher: ch}
	return &broker{
		desc:       "GoChannel, in process",
		pub:        pub,
		inject:     pub,
		subscriber: func() (message.Subscriber, error) { return keepOpen{ch}, nil },
		stored:     pub.count,
		close:      func() { _ = ch.Close() },
	}
}

// counting counts the messages published.
type counting struct {
	message.Publisher
	mu sync.Mutex
	n  int
}

func (c *counting) Publish(topic string, msgs ...*message.Message) error {
	if err := c.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	c.mu.Lock()
	c.n += len(msgs)
	c.mu.Unlock()
	return nil
}

func (c *counting) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// keepOpen hands the GoChannel to a router without letting the router close
// it: the relay keeps publishing into it while the consumer is stopped.
type keepOpen struct{ message.Subscriber }

func (keepOpen) Close() error { return nil }

// openNATS prepares NATS JetStream: a stream for users.changed and a
// durable consumer that outlives the order service's subscriber, so that a
// stopped consumer finds its messages waiting when it comes back.
//
// Topics become subjects prefix + topic. JetStream stream names cannot
// contain dots and watermill-nats' AutoProvision names the stream after the
// topic, so the stream is looked up by subject here, or created (USERS for
// users.>), as internal/broker/nats.go does for `accord relay`.
func openNATS(ctx context.Context, url, prefix, consumer string) (*broker, error) {
	subject := prefix + usersTopic
	nc, err := nats.Connect(url, nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		return nil, err
	}
	stream, err := js.StreamNameBySubject(subject, nats.Context(ctx))
	if errors.Is(err, nats.ErrNoMatchingStream) {
		stream = strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(prefix)) + "USERS"
		_, err = js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{prefix + "users.>"}}, nats.Context(ctx))
	}
	if err != nil {
		return nil, fmt.Errorf("JetStream stream for %s (is JetStream enabled? nats-server -js): %w", subject, err)
	}
	// The consumer is created here, not by the subscriber: nats.go deletes a
	// consumer it created itself when the subscriber closes, which would
	// lose what is published during the outage. A fresh one per run, that
	// starts with this run's messages.
	if err := js.DeleteConsumer(stream, consumer, nats.Context(ctx)); err != nil && !errors.Is(err, nats.ErrConsumerNotFound) {
		return nil, fmt.Errorf("reset JetStream consumer %s: %w", consumer, err)
	}
	_, err = js.AddConsumer(stream, &nats.ConsumerConfig{
		Durable:        consumer,
		DeliverSubject: nats.NewInbox(),
		DeliverGroup:   consumer,
		DeliverPolicy:  nats.DeliverNewPolicy,
		FilterSubject:  subject,
		AckPolicy:      nats.AckExplicitPolicy,
		AckWait:        5 * time.Second, // redelivery of a message caught by a stop in mid-flight
		MaxDeliver:     -1,
	}, nats.Context(ctx))
	if err != nil {
		return nil, fmt.Errorf("create JetStream consumer %s: %w", consumer, err)
	}

	logger := watermill.NopLogger{}
	pub, err := wmnats.NewPublisher(wmnats.PublisherConfig{URL: url, JetStream: wmnats.JetStreamConfig{TrackMsgId: true}}, logger)
	if err != nil {
		return nil, fmt.Errorf("NATS publisher: %w", err)
	}
	inject, err := wmnats.NewPublisher(wmnats.PublisherConfig{URL: url}, logger)
	if err != nil {
		pub.Close()
		return nil, fmt.Errorf("NATS publisher: %w", err)
	}
	newSub := func() (message.Subscriber, error) {
		sub, err := wmnats.NewSubscriber(wmnats.SubscriberConfig{
			URL:              url,
			QueueGroupPrefix: consumer,
			SubscribersCount: 1,
			CloseTimeout:     5 * time.Second,
			JetStream: wmnats.JetStreamConfig{
				DurablePrefix: consumer,
				// Bind: use the consumer created above, never create (and so
				// never delete) one. ManualAck: watermill acknowledges after
				// the handler, and only then.
				SubscribeOptions: []nats.SubOpt{nats.Bind(stream, consumer), nats.ManualAck()},
			},
		}, logger)
		if err != nil {
			return nil, fmt.Errorf("NATS subscriber: %w", err)
		}
		return prefixSubscriber{sub, prefix}, nil
	}
	return &broker{
		desc:       "NATS JetStream, stream " + stream,
		pub:        prefixPublisher{pub, prefix},
		inject:     prefixPublisher{inject, prefix},
		subscriber: newSub,
		close:      func() { pub.Close(); inject.Close() },
	}, nil
}

// prefixPublisher and prefixSubscriber map topics to subjects prefix+topic.
type prefixPublisher struct {
	message.Publisher
	prefix string
}

func (p prefixPublisher) Publish(topic string, msgs ...*message.Message) error {
	return p.Publisher.Publish(p.prefix+topic, msgs...)
}

type prefixSubscriber struct {
	message.Subscriber
	prefix string
}

func (s prefixSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	return s.Subscriber.Subscribe(ctx, s.prefix+topic)
}

// ---------------------------------------------------------------------------
// Trouble: what a real network does now and then, on demand.

// trouble sits between a relay and where the relay publishes (the broker,
// the feed). It forwards every message, remembers what it forwarded, and on
// demand holds one key's next message back and delivers it later, after the
// messages that followed it: a reordering.
type trouble struct {
	inner message.Publisher

	mu        sync.Mutex
	holdKey   string
	held      *message.Message
	heldTopic string
	sent      map[string]*message.Message // "key@version" → last copy forwarded
	forwarded map[string]bool             // message ids forwarded
	order     []string                    // message ids, in forwarding order
}

func newTrouble(inner message.Publisher) *trouble {
	return &trouble{inner: inner, sent: map[string]*message.Message{}, forwarded: map[string]bool{}}
}

func (t *trouble) Publish(topic string, msgs ...*message.Message) error {
	t.mu.Lock()
	pass := make([]*message.Message, 0, len(msgs))
	for _, m := range msgs {
		switch {
		case t.held != nil && m.UUID == t.held.UUID:
			// The relay retries a call whose message we hold: keep holding it.
		case t.holdKey != "" && m.Metadata.Get(outbox.MetadataKey) == t.holdKey:
			t.held, t.heldTopic, t.holdKey = m.Copy(), topic, ""
		default:
			pass = append(pass, m)
		}
	}
	t.mu.Unlock()
	if len(pass) == 0 {
		return nil // the relay takes the held message as published
	}
	if err := t.inner.Publish(topic, pass...); err != nil {
		return err
	}
	t.record(pass)
	return nil
}

func (t *trouble) Close() error { return nil } // the broker is closed by its owner

func (t *trouble) record(msgs []*message.Message) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range msgs {
		t.sent[m.Metadata.Get(outbox.MetadataKey)+"@"+m.Metadata.Get(outbox.MetadataVersion)] = m.Copy()
		if !t.forwarded[m.UUID] {
			t.forwarded[m.UUID] = true
			t.order = append(t.order, m.UUID)
		}
	}
}

// holdNext holds back the next message of key.
func (t *trouble) holdNext(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.holdKey = key
}

// holding returns the message held back, or nil.
func (t *trouble) holding() *message.Message {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.held
}

// release delivers the held message now.
func (t *trouble) release() error {
	t.mu.Lock()
	m, topic := t.held, t.heldTopic
	t.mu.Unlock()
	if m == nil {
		return errors.New("no message is held back")
	}
	if err := t.inner.Publish(topic, m.Copy()); err != nil {
		return err
	}
	t.record([]*message.Message{m})
	t.mu.Lock()
	t.held = nil
	t.mu.Unlock()
	return nil
}

// lastSent returns a copy of the last message forwarded for key at version.
func (t *trouble) lastSent(key string, version int64) (*message.Message, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.sent[key+"@"+strconv.FormatInt(version, 10)]
	if m == nil {
		return nil, fmt.Errorf("no message of %s at version %d was forwarded", key, version)
	}
	return m.Copy(), nil
}

// wasForwarded reports whether every id was forwarded.
func (t *trouble) wasForwarded(ids ...string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		if !t.forwarded[id] {
			return false
		}
	}
	return true
}

// forwardedIDs returns the ids forwarded so far.
func (t *trouble) forwardedIDs() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.order...)
}

// ---------------------------------------------------------------------------
// The journal: what the consumers decided, told by Accord's observers.

// note is one decision of the inbox, a replica, the puller or the snapshot
// handling.
type note struct {
	who      string // "inbox", a replica's name, "puller", "snapshot"
	outcome  string // inbox: applied, duplicate, failed, dead_lettered; replica: applied, gap, stale, resync; puller: page; snapshot: rewritten, tombstone
	key      string
	version  int64
	position int64 // replica: the key's position before; puller: the page's last feed position
	msgID    string
	events   int // puller: events in the page
	err      error
}

type journal struct {
	mu    sync.Mutex
	notes []note
}

func (j *journal) add(n note) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.notes = append(j.notes, n)
}

// mark returns a position in the journal for since.
func (j *journal) mark() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.notes)
}

// since returns the notes added after mark that match.
func (j *journal) since(mark int, match func(note) bool) []note {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []note
	for _, n := range j.notes[mark:] {
		if match(n) {
			out = append(out, n)
		}
	}
	return out
}

func (j *journal) has(match func(note) bool) bool { return len(j.since(0, match)) > 0 }

// inboxObserver, replicaObserver and pullerObserver write into the journal.
type inboxObserver struct{ j *journal }

func (o inboxObserver) Applied(_ context.Context, ob inbox.Observation) {
	o.j.add(note{who: "inbox", outcome: "applied", msgID: ob.MessageID})
}
func (o inboxObserver) Duplicate(_ context.Context, ob inbox.Observation) {
	o.j.add(note{who: "inbox", outcome: "duplicate", msgID: ob.MessageID})
}
func (o inboxObserver) Failed(_ context.Context, ob inbox.Observation) {
	o.j.add(note{who: "inbox", outcome: "failed", msgID: ob.MessageID, err: ob.Err})
}
func (o inboxObserver) DeadLettered(_ context.Context, ob inbox.Observation) {
	o.j.add(note{who: "inbox", outcome: "dead_lettered", msgID: ob.MessageID, err: ob.Err})
}

type replicaObserver struct{ j *journal }

func (o replicaObserver) add(outcome string, ob replica.Observation) {
	o.j.add(note{who: ob.Replica, outcome: outcome, key: ob.Key, version: ob.Version, position: ob.Position, msgID: ob.MessageID})
}
func (o replicaObserver) Applied(_ context.Context, ob replica.Observation) {
	if ob.Outcome == replica.Applied { // a gap is noted by Gap
		o.add("applied", ob)
	}
}
func (o replicaObserver) Stale(_ context.Context, ob replica.Observation)  { o.add("stale", ob) }
func (o replicaObserver) Gap(_ context.Context, ob replica.Observation)    { o.add("gap", ob) }
func (o replicaObserver) Parked(_ context.Context, ob replica.Observation) { o.add("parked", ob) }
func (o replicaObserver) Resync(_ context.Context, ob replica.Observation) { o.add("resync", ob) }

type pullerObserver struct {
	feed.ObserverDefaults
	j *journal
}

func (o pullerObserver) Applied(_ context.Context, info feed.ApplyInfo) {
	if info.Err == nil {
		o.j.add(note{who: "puller", outcome: "page", events: info.Events, position: info.LastPosition})
	}
}

// ---------------------------------------------------------------------------
// Waiting on conditions, never on the clock.

// waitTimeout bounds each wait; the whole run is bounded by config.Timeout.
const waitTimeout = 20 * time.Second

// background collects the errors of the goroutines that run relays,
// consumers and pullers: a wait gives up as soon as one fails.
type background struct {
	errs chan error
}

func (b *background) report(what string, err error) {
	if err != nil {
		select {
		case b.errs <- fmt.Errorf("%s stopped: %w", what, err):
		default:
		}
	}
}

// waitFor polls cond until it returns true, an error, a background failure,
// or the deadline. what says what is awaited, for the error message.
func (b *background) waitFor(parent context.Context, what string, cond func(ctx context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(parent, waitTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond(ctx)
		if ok && err == nil {
			return nil
		}
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("waiting until %s: %w", what, err)
		}
		select {
		case err := <-b.errs:
			return fmt.Errorf("waiting until %s: %w", what, err)
		case <-ctx.Done():
			if err := parent.Err(); err != nil {
				return fmt.Errorf("waiting until %s: %w", what, err)
			}
			return fmt.Errorf("timed out after %s waiting until %s", waitTimeout, what)
		case <-tick.C:
		}
	}
}

// quietLogger is the library components' logger: errors only, unless
// verbose. The trouble this program injects makes them log warnings (gaps,
// stale snapshots) that are expected here.
func quietLogger(verbose bool, w interface{ Write([]byte) (int, error) }) *slog.Logger {
	level := slog.LevelError
	if verbose {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}
