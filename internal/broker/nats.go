package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
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
//
// Query parameters:
//
//	subject_prefix=p     subjects are "<p>.<topic>"
//	publisher=watermill  (the default) watermill-nats' publisher: one message
//	                     at a time, each ack awaited before the next is sent,
//	                     so per-key order holds even when a publish fails
//	publisher=async      Accord's pipelined publisher (jetstream.go): all
//	                     messages of a Publish call are sent at once, then
//	                     every ack is awaited; about 12x the throughput, but
//	                     when one message of a call fails while later ones
//	                     are stored, the retry stores it after them
//	ack_timeout=10s      async publisher: how long to wait for each ack (a Go
//	                     duration)
//	max_pending=4096     async publisher: most messages in flight (sent, not
//	                     yet acknowledged) over all concurrent Publish calls
func openNATS(ctx context.Context, rawURL string, logger *slog.Logger, wlog watermill.LoggerAdapter) (*Broker, error) {
	servers, rawQuery, _ := strings.Cut(rawURL, "?")
	name := RedactURL(servers)
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, fmt.Errorf("%w %s: query: %w", ErrInvalidURL, RedactURL(rawURL), err)
	}
	opts, err := parseNATSQuery(q)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrInvalidURL, name, err)
	}
	prefix := opts.prefix
	name += opts.describe()

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
	var np message.Publisher
	if opts.publisher == natsPublisherWatermill {
		pub, err := wnats.NewPublisherWithNatsConn(nc, wnats.PublisherPublishConfig{
			Marshaler:         &wnats.NATSMarshaler{},
			SubjectCalculator: wnats.DefaultSubjectCalculator,
			JetStream: wnats.JetStreamConfig{
				// Streams are provisioned by natsStreams: watermill-nats
				// would name the stream after the topic, and NATS rejects
				// stream names with dots ("orders.created").
				AutoProvision: false,
				TrackMsgId:    true,
			},
		}, wlog)
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("accord broker: NATS publisher: %w", err)
		}
		np = &natsPublisher{inner: pub, streams: streams}
	} else {
		pub, err := newJSPublisher(nc, streams, jsPublisherConfig{AckTimeout: opts.ackTimeout, MaxPending: opts.maxPending})
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("accord broker: NATS publisher: %w", err)
		}
		np = pub
	}
	ns := newNATSSubscriber(js, streams, log)
	return &Broker{
		Publisher:  np,
		Subscriber: ns,
		Name:       name,
		// The subscriber ends its subscriptions, then the shared
		// connection is closed (watermill-nats' publisher closes it too).
		closers: []func() error{ns.Close, np.Close, func() error { nc.Close(); return nil }},
	}, nil
}

// NATS publishers (query parameter publisher).
const (
	natsPublisherAsync     = "async"
	natsPublisherWatermill = "watermill"
)

// natsOpts are the query parameters of a nats:// URL.
type natsOpts struct {
	prefix     string
	publisher  string
	ackTimeout time.Duration
	maxPending int
}

const natsParams = "subject_prefix, publisher, ack_timeout, max_pending"

func parseNATSQuery(q url.Values) (natsOpts, error) {
	o := natsOpts{publisher: natsPublisherWatermill, ackTimeout: JetStreamAckTimeoutDefault, maxPending: JetStreamMaxPendingDefault}
	asyncOnly := ""
	for k, vs := range q {
		v := vs[len(vs)-1]
		switch k {
		case "subject_prefix":
			o.prefix = strings.TrimSuffix(v, ".")
			if o.prefix != "" {
				if err := validSubject(o.prefix); err != nil {
					return o, fmt.Errorf("subject_prefix %q: %w", o.prefix, err)
				}
			}
		case "publisher":
			switch v {
			case natsPublisherAsync, natsPublisherWatermill:
				o.publisher = v
			default:
				return o, fmt.Errorf("publisher %q: want %s or %s", v, natsPublisherAsync, natsPublisherWatermill)
			}
		case "ack_timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return o, fmt.Errorf("ack_timeout %q: want a positive duration such as 10s", v)
			}
			o.ackTimeout, asyncOnly = d, k
		case "max_pending":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return o, fmt.Errorf("max_pending %q: want a positive integer", v)
			}
			o.maxPending, asyncOnly = n, k
		default:
			return o, fmt.Errorf("unknown query parameter %q (supported: %s)", k, natsParams)
		}
	}
	if asyncOnly != "" && o.publisher != natsPublisherAsync {
		return o, fmt.Errorf("%s applies to publisher=%s only", asyncOnly, natsPublisherAsync)
	}
	return o, nil
}

// describe returns the query of the broker's name: the parameters that
// differ from the defaults, in a fixed order.
func (o natsOpts) describe() string {
	q := url.Values{}
	if o.prefix != "" {
		q.Set("subject_prefix", o.prefix)
	}
	if o.publisher != natsPublisherWatermill {
		q.Set("publisher", o.publisher)
	}
	if o.ackTimeout != JetStreamAckTimeoutDefault {
		q.Set("ack_timeout", o.ackTimeout.String())
	}
	if o.maxPending != JetStreamMaxPendingDefault {
		q.Set("max_pending", strconv.Itoa(o.maxPending))
	}
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}

// natsPublisher is watermill-nats' JetStream publisher (publisher=watermill):
// it publishes each topic on its subject, provisioning the stream on first
// use, one message at a time.
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
		if errors.Is(err, nats.ErrNoStreamResponse) {
			p.streams.forget(subject)
		}
		return fmt.Errorf("accord broker: publish to NATS subject %q: %w", subject, err)
	}
	return nil
}

func (p *natsPublisher) Close() error { return p.inner.Close() }

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

// forget makes the next ensure of subject look its stream up again (and
// create it if needed): JetStream said no stream stores it, for example
// because an operator deleted the stream.
func (s *natsStreams) forget(subject string) {
	s.mu.Lock()
	delete(s.ensured, subject)
	s.mu.Unlock()
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
