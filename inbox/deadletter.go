package inbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/accordgo/accord/internal/sqlstore"
)

// Limits of [ListParams].
const (
	ListLimitDefault = 100
	ListLimitMax     = 1000
)

// DeadLetter is a message a consumer parked: its handler failed for good or
// too many times, or the message could not be handled at all. It stays
// until [Inbox.Requeue] or [Inbox.Drop].
type DeadLetter struct {
	// Seq identifies the dead letter.
	Seq int64
	// Consumer is the consumer that parked the message.
	Consumer string
	// MessageID is the message's id as the inbox stores it ([StoredID]);
	// "" for a message that had none.
	MessageID string
	// Topic is the topic the message arrived on, when it was known.
	Topic string
	// Payload is the message's payload.
	Payload []byte
	// Metadata is the message's metadata.
	Metadata message.Metadata
	// Reason is the error that parked the message.
	Reason string
	// Attempts is the number of failed attempts, the last one included.
	Attempts int
	// CreatedAt is when the message was parked.
	CreatedAt time.Time
}

// Message returns the dead letter as a new watermill message with the
// original id, payload and metadata.
func (d *DeadLetter) Message() *message.Message {
	m := message.NewMessage(d.MessageID, append([]byte(nil), d.Payload...))
	for k, v := range d.Metadata {
		m.Metadata.Set(k, v)
	}
	return m
}

// ListParams selects dead letters for [Inbox.DeadLetters].
type ListParams struct {
	// After lists dead letters with a sequence number greater than After:
	// pass the Seq of the last one of a page to get the next. Defaults to
	// 0 (from the first).
	After int64
	// Limit is the most dead letters returned. Defaults to
	// ListLimitDefault (100), at most ListLimitMax (1000).
	Limit int
}

// DeadLetters lists the consumer's dead letters, oldest first. params may
// be nil.
func (i *Inbox) DeadLetters(ctx context.Context, params *ListParams) ([]DeadLetter, error) {
	if i.db == nil {
		return nil, errNoDB
	}
	p := ListParams{}
	if params != nil {
		p = *params
	}
	if p.Limit == 0 {
		p.Limit = ListLimitDefault
	}
	if p.Limit < 0 || p.Limit > ListLimitMax {
		return nil, fmt.Errorf("accord inbox: ListParams.Limit %d: must be between 1 and %d", p.Limit, ListLimitMax)
	}
	rows, err := i.names.DeadLetterList(ctx, sqlstore.InboxSQL(i.db), i.cfg.Consumer, p.After, p.Limit)
	if err != nil {
		return nil, i.dbErr("list dead letters", nil, err)
	}
	out := make([]DeadLetter, 0, len(rows))
	for _, r := range rows {
		dl, err := deadLetterOf(r)
		if err != nil {
			return nil, err
		}
		out = append(out, dl)
	}
	return out, nil
}

func deadLetterOf(r sqlstore.DeadLetterRow) (DeadLetter, error) {
	md := message.Metadata{}
	if r.Metadata != "" {
		if err := json.Unmarshal([]byte(r.Metadata), &md); err != nil {
			return DeadLetter{}, fmt.Errorf("accord inbox: dead letter %d: metadata: %w", r.Seq, err)
		}
	}
	return DeadLetter{
		Seq: r.Seq, Consumer: r.Consumer, MessageID: r.MessageID, Topic: r.Topic, Payload: r.Payload,
		Metadata: md, Reason: r.Reason, Attempts: r.Attempts, CreatedAt: r.CreatedAt,
	}, nil
}

// Requeue publishes dead letter seq again, through publisher to topic (the
// topic it arrived on when topic is ""), so that the consumer applies it
// once more: in one transaction it deletes the dead letter, the message's
// inbox row and its failed attempts, publishes, then commits. If Publish
// fails, nothing changes. If the commit fails after a successful Publish,
// the dead letter and the inbox row stay, so the published copy is a
// duplicate and Requeue can be called again. A consumer receiving the copy
// while Requeue runs waits for the commit.
//
// The copy keeps the message's id (a new UUIDv7 for a message that had
// none), so other consumers of the topic drop it as a duplicate. Brokers
// that deduplicate by id drop it too: with NATS JetStream and
// Nats-Msg-Id, requeue after the stream's duplicate window (2 minutes by
// default), or to a topic that only this consumer reads.
//
// It returns ErrDeadLetterNotFound when seq is not one of this consumer's
// dead letters.
func (i *Inbox) Requeue(ctx context.Context, seq int64, publisher message.Publisher, topic string) error {
	if i.db == nil {
		return errNoDB
	}
	tx, err := i.db.BeginTx(ctx, nil)
	if err != nil {
		return i.dbErr("requeue", nil, err)
	}
	defer func() { _ = tx.Rollback() }() // a no-op after Commit
	c := sqlstore.InboxSQL(tx)
	row, err := i.names.DeadLetterGet(ctx, c, i.cfg.Consumer, seq, true)
	if err != nil {
		return i.dbErr("requeue", nil, err)
	}
	if row == nil {
		return fmt.Errorf("%w: consumer %q, seq %d", ErrDeadLetterNotFound, i.cfg.Consumer, seq)
	}
	dl, err := deadLetterOf(*row)
	if err != nil {
		return err
	}
	if topic == "" {
		topic = dl.Topic
	}
	if topic == "" {
		return fmt.Errorf("accord inbox: requeue dead letter %d: its topic is unknown; pass a topic", seq)
	}
	if dl.MessageID != "" {
		if _, err := i.names.InboxDelete(ctx, c, i.cfg.Consumer, dl.MessageID); err != nil {
			return i.dbErr("requeue", nil, err)
		}
		if err := i.names.InboxDeleteAttempts(ctx, c, i.cfg.Consumer, dl.MessageID); err != nil {
			return i.dbErr("requeue", nil, err)
		}
	}
	if _, err := i.names.DeadLetterDelete(ctx, c, i.cfg.Consumer, seq); err != nil {
		return i.dbErr("requeue", nil, err)
	}
	msg := dl.Message()
	if msg.UUID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("accord inbox: requeue dead letter %d: new message id: %w", seq, err)
		}
		msg.UUID = id.String()
	}
	if err := publisher.Publish(topic, msg); err != nil {
		return fmt.Errorf("accord inbox: requeue dead letter %d: publish to %q: %w", seq, topic, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("accord inbox: requeue dead letter %d: published to %q, but the commit failed, so the dead letter is kept and the copy will be dropped as a duplicate: %w",
			seq, topic, err)
	}
	i.log.InfoContext(ctx, "dead letter requeued", "dead_letter_seq", seq, "message_id", msg.UUID, "topic", topic)
	return nil
}

// Drop deletes dead letter seq for good. The message's inbox row stays, so
// its redeliveries remain duplicates until Retention ends. It returns
// ErrDeadLetterNotFound when seq is not one of this consumer's dead letters.
func (i *Inbox) Drop(ctx context.Context, seq int64) error {
	if i.db == nil {
		return errNoDB
	}
	n, err := i.names.DeadLetterDelete(ctx, sqlstore.InboxSQL(i.db), i.cfg.Consumer, seq)
	if err != nil {
		return i.dbErr("drop dead letter", nil, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: consumer %q, seq %d", ErrDeadLetterNotFound, i.cfg.Consumer, seq)
	}
	i.log.InfoContext(ctx, "dead letter dropped", "dead_letter_seq", seq)
	return nil
}

// encodeMetadata renders metadata as a JSON object storable in every
// dialect (no NUL bytes, valid UTF-8).
func encodeMetadata(md message.Metadata) (string, error) {
	clean := make(map[string]string, len(md))
	for k, v := range md {
		clean[sqlstore.StorableText(k, len(k)*3)] = sqlstore.StorableText(v, len(v)*3)
	}
	b, err := json.Marshal(clean)
	if err != nil {
		return "", errors.New("accord inbox: encode metadata: " + err.Error())
	}
	return string(b), nil
}
