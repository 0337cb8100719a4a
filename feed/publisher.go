package feed

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/accordgo/accord/outbox"
)

// Publisher is a watermill message.Publisher that appends messages to a
// feed, each Publish call in one transaction of its own (one lock, one
// batch insert, one commit). Give it to the relay to turn the outbox into a
// feed:
//
//	src, _ := feed.NewSource(db, &feed.SourceConfig{Dialect: accord.Postgres, Name: "orders"})
//	r, _ := relay.New(db, src.Publisher(), &relay.Config{Dialect: accord.Postgres})
//
// Every committed outbox event then lands in the feed in the relay's order
// per partition key, since a relay lane publishes one call at a time and
// Publish returns only after its commit. The relay publishes again what it
// had not deleted when it crashed; those messages keep their ids, and the
// feed skips ids it already holds (see SourceConfig.DedupWindow).
//
// A message's UUID becomes the event id, its metadata MetadataKey and
// MetadataVersion (outbox package) its key and version; the metadata is
// stored whole. Publish takes its context from the first message.
type Publisher struct {
	s      *Source
	closed atomic.Bool
}

var _ message.Publisher = (*Publisher)(nil)

// Publisher returns a message.Publisher that appends to this feed and wakes
// its long-polling readers after each commit.
func (s *Source) Publisher() *Publisher { return &Publisher{s: s} }

// Publish appends msgs to the feed in one transaction. Messages whose id
// the feed already holds are skipped. Nothing is appended when an error is
// returned.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if p.closed.Load() {
		return ErrPublisherClosed
	}
	if len(msgs) == 0 {
		return nil
	}
	events := make([]Event, len(msgs))
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("%w: message %d of %d is nil", ErrInvalidEvent, i+1, len(msgs))
		}
		if m.UUID == "" {
			return fmt.Errorf("%w: message %d of %d has no UUID", ErrInvalidEvent, i+1, len(msgs))
		}
		v, err := parseVersion(m.UUID, m.Metadata.Get(outbox.MetadataVersion))
		if err != nil {
			return err
		}
		md := make(map[string]string, len(m.Metadata))
		for k, val := range m.Metadata {
			md[k] = val
		}
		events[i] = Event{
			ID:       m.UUID,
			Topic:    topic,
			Key:      m.Metadata.Get(outbox.MetadataKey),
			Version:  v,
			Payload:  m.Payload,
			Metadata: md,
		}
	}
	ctx := msgs[0].Context()
	_, err := p.s.append(ctx, events)
	return err
}

// append appends events in a transaction of its own and wakes readers.
func (s *Source) append(ctx context.Context, events []Event) (n int, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, s.wrapDBErr("begin", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if n, err = s.appendTx(ctx, tx, events); err != nil {
		return 0, err
	}
	if err = tx.Commit(); err != nil {
		return 0, s.wrapDBErr("commit", err)
	}
	if n > 0 {
		s.Wake()
	}
	return n, nil
}

// Close makes later Publish calls fail with ErrPublisherClosed. It does not
// close the database and is idempotent.
func (p *Publisher) Close() error {
	p.closed.Store(true)
	return nil
}

// Append appends events to the feed in a transaction of its own, like the
// Publisher, and returns how many were appended (ids already in the feed
// are skipped).
func (s *Source) Append(ctx context.Context, events ...Event) (int, error) {
	if len(events) == 0 {
		return 0, nil
	}
	return s.append(ctx, events)
}
