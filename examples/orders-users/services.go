package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/accordgo/accord/feed"
	"github.com/accordgo/accord/inbox"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/reconcile"
	"github.com/accordgo/accord/relay"
	"github.com/accordgo/accord/replica"
)

// user is a row of the user service's users table, the payload of its
// users.changed events, and a row of the order service's user_profiles.
type user struct {
	ID      int64  `json:"id"`
	Name    string `json:"name"`
	Email   string `json:"email"`
	Tier    string `json:"tier"`
	Version int64  `json:"version"`
}

// order is a row of the order service's orders table, the payload of its
// orders.changed events, and a row of the user service's order_summaries.
type order struct {
	ID         int64  `json:"id"`
	UserID     int64  `json:"user_id"`
	TotalCents int64  `json:"total_cents"`
	Status     string `json:"status"`
	Version    int64  `json:"version"`
}

func userKey(id int64) string  { return "user-" + strconv.FormatInt(id, 10) }
func orderKey(id int64) string { return "order-" + strconv.FormatInt(id, 10) }

// keyID returns the id in a key such as "user-7".
func keyID(key, prefix string) (int64, error) {
	id, err := strconv.ParseInt(strings.TrimPrefix(key, prefix), 10, 64)
	if err != nil || !strings.HasPrefix(key, prefix) {
		return 0, fmt.Errorf("key %q is not %s<id>", key, prefix)
	}
	return id, nil
}

func money(cents int64) string { return fmt.Sprintf("%d.%02d", cents/100, cents%100) }

// ---------------------------------------------------------------------------
// The user service

// userService owns users. It pushes users.changed through its outbox and
// relay to the broker, and pulls the order service's feed into its replica
// order_summaries.
type userService struct {
	db    *database
	ob    *outbox.Outbox
	relay *relay.Relay
	net   *trouble // between its relay and the broker

	summaries  *replica.Replica // order_summaries, ByVersion
	fetcher    *feed.Client
	pullerCfg  *feed.PullerConfig
	puller     *feed.Puller
	pullerDone chan struct{}

	side *reconcile.SQLSide // users as reconcile sees them, keys "user-<id>"
	url  string             // its HTTP API: /reconcile/ (digests of users)
	j    *journal           // what its consumer decided
}

var usersDDL = []string{
	`CREATE TABLE {users} (id BIGINT PRIMARY KEY, name VARCHAR(200) NOT NULL, email VARCHAR(200) NOT NULL,
		tier VARCHAR(20) NOT NULL, version BIGINT NOT NULL)`,
	`CREATE TABLE {order_summaries} (order_id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL, total_cents BIGINT NOT NULL,
		status VARCHAR(20) NOT NULL, version BIGINT NOT NULL)`,
}

// saveUser changes user id with change (a new user when it does not exist),
// bumps its version and writes its users.changed event, all in one
// transaction. It returns the saved user and the event's message id.
func (u *userService) saveUser(ctx context.Context, id int64, change func(*user)) (user, string, error) {
	d := u.db
	tx, err := d.BeginTx(ctx, nil)
	if err != nil {
		return user{}, "", err
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	cur := user{ID: id}
	err = tx.QueryRowContext(ctx, d.q("SELECT name, email, tier, version FROM {users} WHERE id = ?"+d.forUpdate()), id).
		Scan(&cur.Name, &cur.Email, &cur.Tier, &cur.Version)
	exists := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return user{}, "", err
	}
	change(&cur)
	cur.Version++
	if exists {
		_, err = tx.ExecContext(ctx, d.q("UPDATE {users} SET name = ?, email = ?, tier = ?, version = ? WHERE id = ?"),
			cur.Name, cur.Email, cur.Tier, cur.Version, id)
	} else {
		_, err = tx.ExecContext(ctx, d.q("INSERT INTO {users} (id, name, email, tier, version) VALUES (?, ?, ?, ?, ?)"),
			id, cur.Name, cur.Email, cur.Tier, cur.Version)
	}
	if err != nil {
		return user{}, "", fmt.Errorf("save user %d: %w", id, err)
	}
	payload, _ := json.Marshal(cur)
	msg := outbox.NewMessage(payload)
	if err := u.ob.WriteTx(ctx, tx, outbox.Event{Topic: usersTopic, Key: userKey(id), Version: cur.Version, Message: msg}); err != nil {
		return user{}, "", err
	}
	if err := tx.Commit(); err != nil {
		return user{}, "", err
	}
	u.relay.Wake() // SQLite and MySQL have no LISTEN/NOTIFY
	return cur, msg.UUID, nil
}

// applyOrderEvent is the puller's handler: one feed event, applied to
// order_summaries in the transaction that also moves the puller's cursor.
func (u *userService) applyOrderEvent(ctx context.Context, tx *sql.Tx, ev feed.Event) error {
	msg := message.NewMessage(ev.ID, ev.Payload)
	for k, v := range ev.Metadata {
		msg.Metadata.Set(k, v)
	}
	c, err := replica.ChangeFromMessage(msg)
	if err != nil {
		return feed.Permanent(err)
	}
	if msg.Metadata.Get(reconcile.MetadataSnapshot) == "true" {
		return applySnapshot(ctx, tx, u.j, u.summaries, c, msg.Metadata.Get(reconcile.MetadataTombstone) == "true",
			u.writeSummary, u.deleteSummary)
	}
	_, err = u.summaries.ApplyTx(ctx, tx, c)
	return err
}

// writeSummary is the replica's ApplyFunc: it replaces the order's row in
// order_summaries with the change's state and version.
func (u *userService) writeSummary(ctx context.Context, tx *sql.Tx, c replica.Change) error {
	id, err := keyID(c.Key, "order-")
	if err != nil {
		return feed.Permanent(err)
	}
	var o order
	if err := json.Unmarshal(c.Message.Payload, &o); err != nil || o.ID != id {
		return feed.Permanent(fmt.Errorf("order event %s: payload %q does not describe %s", c.Message.UUID, c.Message.Payload, c.Key))
	}
	if err := u.deleteSummary(ctx, tx, c.Key); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, u.db.q("INSERT INTO {order_summaries} (order_id, user_id, total_cents, status, version) VALUES (?, ?, ?, ?, ?)"),
		id, o.UserID, o.TotalCents, o.Status, c.Version)
	return err
}

func (u *userService) deleteSummary(ctx context.Context, tx *sql.Tx, key string) error {
	id, err := keyID(key, "order-")
	if err != nil {
		return feed.Permanent(err)
	}
	_, err = tx.ExecContext(ctx, u.db.q("DELETE FROM {order_summaries} WHERE order_id = ?"), id)
	return err
}

// startPuller starts (or restarts) pulling the order service's feed. A
// puller resumes from the cursor stored in the user service's database.
func (u *userService) startPuller(ctx context.Context, bg *background) error {
	p, err := feed.NewPuller(u.db.DB, u.fetcher, u.pullerCfg, u.applyOrderEvent)
	if err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		bg.report("the user service's puller", p.Run(ctx))
	}()
	select {
	case <-p.Running():
	case <-done:
		return errors.New("the user service's puller did not start")
	}
	u.puller, u.pullerDone = p, done
	return nil
}

// stopPuller stops the puller: the outage.
func (u *userService) stopPuller() {
	if u.puller != nil {
		_ = u.puller.Close()
		<-u.pullerDone
		u.puller = nil
	}
}

// ---------------------------------------------------------------------------
// The order service

// orderService owns orders. Its relay publishes orders.changed into its own
// feed, which it serves over HTTP (pull), and it consumes users.changed from
// the broker through its inbox into its replica user_profiles (push).
type orderService struct {
	db    *database
	ob    *outbox.Outbox
	relay *relay.Relay
	net   *trouble // between its relay and its feed
	feed  *feed.Source

	inbox      *inbox.Inbox
	profiles   *replica.Replica // user_profiles, ByVersion
	broker     *broker
	router     *message.Router
	routerDone chan struct{}
	wlog       watermill.LoggerAdapter

	side *reconcile.SQLSide // orders as reconcile sees them, keys "order-<id>"
	url  string             // its HTTP API: /feeds/orders and /reconcile/ (digests of orders)
	j    *journal           // what its consumer decided
}

var ordersDDL = []string{
	`CREATE TABLE {orders} (id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL, total_cents BIGINT NOT NULL,
		status VARCHAR(20) NOT NULL, version BIGINT NOT NULL)`,
	`CREATE TABLE {user_profiles} (id BIGINT PRIMARY KEY, name VARCHAR(200) NOT NULL, email VARCHAR(200) NOT NULL,
		tier VARCHAR(20) NOT NULL, version BIGINT NOT NULL)`,
}

// saveOrder is saveUser for orders: the order, its new version and its
// orders.changed event in one transaction.
func (o *orderService) saveOrder(ctx context.Context, id int64, change func(*order)) (order, string, error) {
	d := o.db
	tx, err := d.BeginTx(ctx, nil)
	if err != nil {
		return order{}, "", err
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	cur := order{ID: id}
	err = tx.QueryRowContext(ctx, d.q("SELECT user_id, total_cents, status, version FROM {orders} WHERE id = ?"+d.forUpdate()), id).
		Scan(&cur.UserID, &cur.TotalCents, &cur.Status, &cur.Version)
	exists := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return order{}, "", err
	}
	change(&cur)
	cur.Version++
	if exists {
		_, err = tx.ExecContext(ctx, d.q("UPDATE {orders} SET user_id = ?, total_cents = ?, status = ?, version = ? WHERE id = ?"),
			cur.UserID, cur.TotalCents, cur.Status, cur.Version, id)
	} else {
		_, err = tx.ExecContext(ctx, d.q("INSERT INTO {orders} (id, user_id, total_cents, status, version) VALUES (?, ?, ?, ?, ?)"),
			id, cur.UserID, cur.TotalCents, cur.Status, cur.Version)
	}
	if err != nil {
		return order{}, "", fmt.Errorf("save order %d: %w", id, err)
	}
	payload, _ := json.Marshal(cur)
	msg := outbox.NewMessage(payload)
	if err := o.ob.WriteTx(ctx, tx, outbox.Event{Topic: ordersTopic, Key: orderKey(id), Version: cur.Version, Message: msg}); err != nil {
		return order{}, "", err
	}
	if err := tx.Commit(); err != nil {
		return order{}, "", err
	}
	o.relay.Wake()
	return cur, msg.UUID, nil
}

// applyUserMessage is the consumer's handler, run by the inbox in the
// transaction that records the message id: users.changed applied to
// user_profiles, once per message and only forward.
func (o *orderService) applyUserMessage(ctx context.Context, tx *sql.Tx, msg *message.Message) error {
	c, err := replica.ChangeFromMessage(msg)
	if err != nil {
		return inbox.Permanent(err) // no key or a malformed version: dead letter at once
	}
	if msg.Metadata.Get(reconcile.MetadataSnapshot) == "true" {
		return applySnapshot(ctx, tx, o.j, o.profiles, c, msg.Metadata.Get(reconcile.MetadataTombstone) == "true",
			o.writeProfile, o.deleteProfile)
	}
	_, err = o.profiles.ApplyTx(ctx, tx, c) // applied, gap or stale: commit and acknowledge
	return err
}

// writeProfile is the replica's ApplyFunc: it replaces the user's row in
// user_profiles with the change's state and version.
func (o *orderService) writeProfile(ctx context.Context, tx *sql.Tx, c replica.Change) error {
	id, err := keyID(c.Key, "user-")
	if err != nil {
		return inbox.Permanent(err)
	}
	var u user
	if err := json.Unmarshal(c.Message.Payload, &u); err != nil || u.ID != id {
		return fmt.Errorf("%w: user event %s: payload %q does not describe %s", inbox.ErrDecode, c.Message.UUID, c.Message.Payload, c.Key)
	}
	if err := o.deleteProfile(ctx, tx, c.Key); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, o.db.q("INSERT INTO {user_profiles} (id, name, email, tier, version) VALUES (?, ?, ?, ?, ?)"),
		id, u.Name, u.Email, u.Tier, c.Version)
	return err
}

func (o *orderService) deleteProfile(ctx context.Context, tx *sql.Tx, key string) error {
	id, err := keyID(key, "user-")
	if err != nil {
		return inbox.Permanent(err)
	}
	_, err = tx.ExecContext(ctx, o.db.q("DELETE FROM {user_profiles} WHERE id = ?"), id)
	return err
}

// startConsumer starts (or restarts) the users.changed consumer: a
// watermill router whose handler runs under the inbox.
func (o *orderService) startConsumer(ctx context.Context, bg *background) error {
	sub, err := o.broker.subscriber()
	if err != nil {
		return err
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, o.wlog)
	if err != nil {
		return err
	}
	router.AddConsumerHandler(profilesReplica, usersTopic, sub, o.inbox.HandlerFunc(o.applyUserMessage))
	done := make(chan struct{})
	go func() {
		defer close(done)
		bg.report("the order service's consumer", router.Run(ctx))
	}()
	select {
	case <-router.Running():
	case <-done:
		return errors.New("the order service's consumer did not start")
	}
	o.router, o.routerDone = router, done
	return nil
}

// stopConsumer stops the consumer: the outage.
func (o *orderService) stopConsumer() {
	if o.router != nil {
		_ = o.router.Close()
		<-o.routerDone
		o.router = nil
	}
}

// ---------------------------------------------------------------------------
// Shared by both consumers

// applySnapshot applies a repair event re-emitted by reconcile's
// SnapshotEmitter (metadata accord_snapshot): the producer's current state
// of one key at its current version, or a tombstone for a key the producer
// does not have.
//
// The source of truth wins: Replica.RepairTx rewrites the row and sets the
// replica's position to the snapshot's version, even when the position is
// already there or beyond. That is what drift produces: the replica applied
// that version, and then its row was changed behind its back. (ResyncTx is
// for snapshots that move a replica forward; it would skip these.) A
// snapshot travels the same per-key lane as the key's changes (same
// partition key, same relay, same feed), so it never overtakes them.
//
// A tombstone deletes the row. It carries no version (a replica position
// cannot be set to 0), so the key's position stays where it was.
func applySnapshot(ctx context.Context, tx *sql.Tx, j *journal, r *replica.Replica, c replica.Change, tombstone bool,
	write replica.ApplyFunc, remove func(context.Context, *sql.Tx, string) error,
) error {
	if tombstone {
		if err := remove(ctx, tx, c.Key); err != nil {
			return err
		}
		j.add(note{who: "snapshot", outcome: "tombstone", key: c.Key, msgID: c.Message.UUID})
		return nil
	}
	_, err := r.RepairTx(ctx, tx, c.Key, c.Version, func(ctx context.Context, tx *sql.Tx) error { return write(ctx, tx, c) })
	if err != nil {
		return err
	}
	j.add(note{who: "snapshot", outcome: "rewritten", key: c.Key, version: c.Version, msgID: c.Message.UUID})
	return nil
}

// ---------------------------------------------------------------------------
// HTTP

// serve serves h on 127.0.0.1 at a random port and returns its base URL
// and a function that stops the server.
func serve(h http.Handler, logger *slog.Logger) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      time.Minute, // longer than the pullers' long-polling wait
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelError),
	}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}
