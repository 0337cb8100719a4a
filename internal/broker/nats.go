package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/ThreeDotsLabs/watermill"
	wnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
)

// NATS connection settings. The client reconnects forever, so a relay
// survives a NATS restart: publishes fail (and the relay retries them) while
// the connection is down.
const (
	natsConnectTimeout = 5 * time.Second
	natsReconnectWait  = time.Second
	natsCheckTimeout   = 5 * time.Second
)

// ErrInvalidSubject is returned by the NATS publisher and subscriber for a
// topic that cannot be a NATS subject.
var ErrInvalidSubject = errors.New("accord broker: topic is not a valid NATS subject")

// openNATS opens one NATS connection shared by a JetStream publisher and
// subscriber.
//
// Each topic is published on the subject "<subject_prefix>.<topic>" (or the
// topic itself without a prefix). The stream that stores a subject is found
// by subject, so streams provisioned by operators (for example "ORDERS" on
// "orders.>") are used as they are; when none matches, a stream named after
// the subject with dots replaced by underscores is created. Messages carry
// their UUID in Nats-Msg-Id, so JetStream drops a message the relay publishes
// twice within the stream's duplicate window (2 minutes by default).
func openNATS(ctx context.Context, rawURL string, logger *slog.Logger, wlog watermill.LoggerAdapter) (*Broker, error) {
	servers, rawQuery, _ := strings.Cut(rawURL, "?")
	name := RedactURL(servers)
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, fmt.Errorf("%w %s: query: %w", ErrInvalidURL, RedactURL(rawURL), err)
	}
	prefix := ""
	for k, v := range q {
		switch k {
		case "subject_prefix":
			prefix = strings.TrimSuffix(v[len(v)-1], ".")
			if prefix != "" {
				if err := validSubject(prefix); err != nil {
					return nil, fmt.Errorf("%w %s: subject_prefix %q: %w", ErrInvalidURL, name, prefix, err)
				}
				name += "?subject_prefix=" + url.QueryEscape(prefix)
			}
		default:
			return nil, fmt.Errorf("%w %s: unknown query parameter %q (supported: subject_prefix)", ErrInvalidURL, name, k)
		}
	}

	log := logger.With("component", "accord.broker", "broker", name)
	nc, err := nats.Connect(servers,
		nats.Name("accord"),
		nats.Timeout(natsConnectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(natsReconnectWait),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS; reconnecting", "error", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("reconnected to NATS", "server", c.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Error("NATS error", "error", err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("accord broker: connect to NATS at %s: %w", name, err)
	}
	js, err := nc.JetStream()
	if err == nil {
		checkCtx, cancel := context.WithTimeout(ctx, natsCheckTimeout)
		_, err = js.AccountInfo(nats.Context(checkCtx))
		cancel()
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("accord broker: NATS at %s has no usable JetStream (start nats-server with -js): %w", name, err)
	}

	streams := &natsStreams{js: js, prefix: prefix, log: log, ensured: map[string]struct{}{}}
	jsCfg := wnats.JetStreamConfig{
		// Streams are provisioned by natsStreams: watermill-nats would name
		// the stream after the topic, and NATS rejects stream names with
		// dots ("orders.created").
		AutoProvision: false,
		TrackMsgId:    true,
		SubscribeOptions: []nats.SubOpt{
			nats.DeliverAll(),
			nats.AckExplicit(),
			// watermill-nats acks after the handler does; without ManualAck
			// the client would also ack a message the handler nacked or
			// never acked.
			nats.ManualAck(),
		},
	}
	pub, err := wnats.NewPublisherWithNatsConn(nc, wnats.PublisherPublishConfig{
		Marshaler:         &wnats.NATSMarshaler{},
		SubjectCalculator: wnats.DefaultSubjectCalculator,
		JetStream:         jsCfg,
	}, wlog)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("accord broker: NATS publisher: %w", err)
	}
	sub, err := wnats.NewSubscriberWithNatsConn(nc, wnats.SubscriberSubscriptionConfig{
		Unmarshaler:       &wnats.NATSMarshaler{},
		SubjectCalculator: wnats.DefaultSubjectCalculator,
		CloseTimeout:      10 * time.Second,
		JetStream:         jsCfg,
	}, wlog)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("accord broker: NATS subscriber: %w", err)
	}
	np := &natsPublisher{inner: pub, streams: streams}
	ns := &natsSubscriber{inner: sub, streams: streams}
	return &Broker{
		Publisher:  np,
		Subscriber: ns,
		Name:       name,
		// The subscriber drains the shared connection; the publisher then
		// closes it.
		closers: []func() error{ns.Close, np.Close, func() error { nc.Close(); return nil }},
	}, nil
}

// natsPublisher publishes each topic on its subject, provisioning the stream
// on first use.
type natsPublisher struct {
	inner   *wnats.Publisher
	streams *natsStreams
}

func (p *natsPublisher) Publish(topic string, msgs ...*message.Message) error {
	subject, err := p.streams.ensure(context.Background(), topic)
	if err != nil {
		return err
	}
	if err := p.inner.Publish(subject, msgs...); err != nil {
		return fmt.Errorf("accord broker: publish to NATS subject %q: %w", subject, err)
	}
	return nil
}

func (p *natsPublisher) Close() error { return p.inner.Close() }

// natsSubscriber subscribes to each topic's subject with an ephemeral
// JetStream consumer that starts at the beginning of the stream.
type natsSubscriber struct {
	inner   *wnats.Subscriber
	streams *natsStreams
}

func (s *natsSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	subject, err := s.streams.ensure(ctx, topic)
	if err != nil {
		return nil, err
	}
	ch, err := s.inner.Subscribe(ctx, subject)
	if err != nil {
		return nil, fmt.Errorf("accord broker: subscribe to NATS subject %q: %w", subject, err)
	}
	return ch, nil
}

// SubscribeInitialize provisions the topic's stream (message.SubscribeInitializer).
func (s *natsSubscriber) SubscribeInitialize(topic string) error {
	_, err := s.streams.ensure(context.Background(), topic)
	return err
}

func (s *natsSubscriber) Close() error { return s.inner.Close() }

// natsStreams maps topics to subjects and makes sure a stream stores each
// subject, once per subject and process.
type natsStreams struct {
	js     nats.JetStreamContext
	prefix string
	log    *slog.Logger

	mu      sync.Mutex
	ensured map[string]struct{}
}

// Subject returns the NATS subject of topic.
func (s *natsStreams) Subject(topic string) (string, error) {
	return natsSubject(s.prefix, topic)
}

func natsSubject(prefix, topic string) (string, error) {
	if err := validSubject(topic); err != nil {
		return "", fmt.Errorf("%w: topic %q: %w", ErrInvalidSubject, topic, err)
	}
	if prefix == "" {
		return topic, nil
	}
	return prefix + "." + topic, nil
}

// validSubject accepts what NATS accepts as a subject to publish to:
// non-empty dot-separated tokens without whitespace, control characters or
// the wildcards '*' and '>'.
func validSubject(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	for _, r := range s {
		switch {
		case unicode.IsSpace(r):
			return fmt.Errorf("contains whitespace %q; NATS subjects cannot", r)
		case unicode.IsControl(r):
			return fmt.Errorf("contains control character %U; NATS subjects cannot", r)
		case r == '*' || r == '>':
			return fmt.Errorf("contains the NATS wildcard %q; subjects to publish to cannot", r)
		}
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" {
			return errors.New("has an empty token (a leading, trailing or doubled '.')")
		}
	}
	return nil
}

// streamName derives a JetStream stream name from a subject: NATS forbids
// '.', '*', '>', '/', '\' and whitespace in stream names, so every character
// other than ASCII letters, digits, '-' and '_' becomes '_'.
func streamName(subject string) string {
	b := []byte(subject)
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
		if !ok {
			b[i] = '_'
		}
	}
	return string(b)
}

func (s *natsStreams) ensure(ctx context.Context, topic string) (string, error) {
	subject, err := s.Subject(topic)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.ensured[subject]; ok {
		return subject, nil
	}
	ctx, cancel := context.WithTimeout(ctx, natsCheckTimeout)
	defer cancel()
	_, err = s.js.StreamNameBySubject(subject, nats.Context(ctx))
	switch {
	case err == nil:
	case errors.Is(err, nats.ErrNoMatchingStream):
		if err := s.create(ctx, subject); err != nil {
			return "", err
		}
	default:
		return "", fmt.Errorf("accord broker: find the JetStream stream of subject %q: %w", subject, err)
	}
	s.ensured[subject] = struct{}{}
	return subject, nil
}

func (s *natsStreams) create(ctx context.Context, subject string) error {
	name := streamName(subject)
	_, err := s.js.AddStream(&nats.StreamConfig{Name: name, Subjects: []string{subject}}, nats.Context(ctx))
	if errors.Is(err, nats.ErrStreamNameAlreadyInUse) {
		// Another subject maps to the same name ("a.b" and "a_b"): let
		// that stream store this subject too.
		var info *nats.StreamInfo
		info, err = s.js.StreamInfo(name, nats.Context(ctx))
		if err == nil {
			cfg := info.Config
			cfg.Subjects = append(cfg.Subjects, subject)
			_, err = s.js.UpdateStream(&cfg, nats.Context(ctx))
		}
	}
	if err != nil {
		return fmt.Errorf("accord broker: create JetStream stream %q for subject %q: %w", name, subject, err)
	}
	s.log.Info("created JetStream stream", "stream", name, "subject", subject)
	return nil
}
