// Package broker opens the watermill Publisher (and, where the transport has
// one, the Subscriber) that `accord relay` publishes through, from one URL:
//
//	gochannel (or "" or inprocess)   watermill GoChannel, in process, persistent
//	log (or stdout)                  one JSON line per message on stdout
//	nats://host:4222[?subject_prefix=p&publisher=async|watermill&ack_timeout=10s&max_pending=4096]
//	                                 NATS JetStream, deduplicated on the message UUID;
//	                                 each Publish call's messages are sent pipelined
//	postgres://... (or postgresql://)
//	                                 watermill-sql topic tables in PostgreSQL (BYTEA payloads)
//	amqp://user:pass@host:5672/vhost[?consumer_group=g&declare_queue=true] (or amqps://)
//	                                 RabbitMQ: a durable fanout exchange per topic,
//	                                 persistent messages, publisher confirms
//	redis://[user:pass@]host:6379/db[?consumer_group=g&maxlen=n] (or rediss://)
//	                                 Redis Streams: one stream per topic, consumer groups
//	kafka://host1:9092,host2:9092[?consumer_group=g&version=v]
//	                                 Kafka: acks=all, idempotent producer, Kafka key
//	                                 (and so the partition) = the accord_key
//
// The file of each transport (amqp.go, redis.go, kafka.go, nats.go with
// jetstream.go and natssub.go, postgres.go) documents how topics map to the
// broker's objects and what every query parameter does.
//
// It is internal: the library itself takes any message.Publisher, and this
// package only spares CLI users from writing a program to get one.
package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
)

// Schemes lists the broker URL schemes Open understands, for help texts and
// error messages.
const Schemes = `gochannel (or "" or inprocess), log (or stdout), nats://, postgres:// (or postgresql://), ` +
	`amqp:// (or amqps://), redis:// (or rediss://), kafka://`

// ErrUnknownScheme is returned by Open for a URL whose scheme is not one of
// Schemes. It is a configuration error: retrying cannot succeed.
var ErrUnknownScheme = errors.New("accord broker: unknown broker URL scheme")

// ErrInvalidURL is returned by Open for a broker URL with a supported scheme
// that cannot be used as given (bad query parameter, unparsable URL). It is a
// configuration error.
var ErrInvalidURL = errors.New("accord broker: invalid broker URL")

// Broker is an open transport: a publisher, usually a subscriber, and what
// must be closed with them.
type Broker struct {
	// Publisher publishes to the transport. Never nil.
	Publisher message.Publisher
	// Subscriber subscribes to the same transport. Nil for write-only
	// transports ("log").
	Subscriber message.Subscriber
	// Name identifies the transport in logs: its URL with credentials
	// redacted.
	Name string

	closers   []func() error // run in order by Close
	closeOnce sync.Once
	closeErr  error
}

// Close closes the subscriber, the publisher and the connections Open made,
// in that order, and returns their errors joined. It is idempotent: later
// calls return the first call's result.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		var errs []error
		for _, c := range b.closers {
			if err := c(); err != nil {
				errs = append(errs, err)
			}
		}
		b.closeErr = errors.Join(errs...)
	})
	return b.closeErr
}

// OpenOpts are optional parameters of [OpenWith]. A nil pointer means all
// defaults.
type OpenOpts struct {
	// Stdout is where the "log" broker writes its lines. Defaults to
	// os.Stdout.
	Stdout io.Writer
}

// Open opens the broker that url names (see the package doc). logger
// receives the transport's own logs; nil discards them. ctx bounds the
// connection checks done while opening.
func Open(ctx context.Context, url string, logger *slog.Logger) (*Broker, error) {
	return OpenWith(ctx, url, logger, nil)
}

// OpenWith is Open with optional parameters.
func OpenWith(ctx context.Context, rawURL string, logger *slog.Logger, opts *OpenOpts) (*Broker, error) {
	if opts == nil {
		opts = &OpenOpts{}
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	stdout := opts.Stdout
	if stdout == nil {
		stdout = os.Stdout
	}
	// watermill logs routine events (subscriber closed, no subscribers for
	// a GoChannel message) at Info; keep Info for Accord's own lines.
	wlog := watermill.NewSlogLoggerWithLevelMapping(logger.With("component", "watermill"),
		map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug})

	scheme := strings.ToLower(rawURL)
	if i := strings.Index(scheme, ":"); i >= 0 {
		scheme = scheme[:i]
	}
	switch scheme {
	case "", "gochannel", "inprocess":
		ch := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, wlog)
		return &Broker{
			Publisher:  ch,
			Subscriber: ch,
			Name:       "gochannel",
			closers:    []func() error{ch.Close},
		}, nil
	case "log", "stdout":
		pub := NewLogPublisher(stdout)
		return &Broker{Publisher: pub, Name: "log", closers: []func() error{pub.Close}}, nil
	case "nats":
		return openNATS(ctx, rawURL, logger, wlog)
	case "postgres", "postgresql":
		return openPostgres(ctx, rawURL, wlog)
	case "amqp", "amqps":
		return openAMQP(ctx, rawURL, wlog)
	case "redis", "rediss":
		return openRedis(ctx, rawURL, wlog)
	case "kafka":
		return openKafka(ctx, rawURL, wlog)
	}
	return nil, fmt.Errorf("%w %q in %q: supported are %s", ErrUnknownScheme, scheme, RedactURL(rawURL), Schemes)
}

// within returns what open returns, or ctx's error when ctx ends first. It
// bounds connection attempts that take no context; a connection that is
// made after ctx ended is closed with closeLate.
func within[T any](ctx context.Context, open func() (T, error), closeLate func(T)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := open()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		go func() {
			if r := <-done; r.err == nil {
				closeLate(r.v)
			}
		}()
		var zero T
		return zero, ctx.Err()
	}
}

// RedactURL returns u with secrets replaced by "xxxxx": passwords, NATS
// tokens (a user name without a password on a nats:// URL) and query
// parameters whose name mentions a password, token, secret or key. Several
// comma-separated URLs (a NATS server list) are redacted one by one. A
// string that is not a URL is returned as is when it has no "@", and
// replaced by "(unparsable URL)" otherwise.
func RedactURL(u string) string {
	if strings.Contains(u, ",") {
		parts := strings.Split(u, ",")
		for i, p := range parts {
			parts[i] = RedactURL(p)
		}
		return strings.Join(parts, ",")
	}
	p, err := url.Parse(u)
	if err != nil {
		if strings.Contains(u, "@") {
			return "(unparsable URL)"
		}
		return u
	}
	if p.User != nil {
		if _, has := p.User.Password(); has {
			p.User = url.UserPassword(p.User.Username(), "xxxxx")
		} else if p.Scheme == "nats" {
			p.User = url.User("xxxxx")
		}
	}
	if p.RawQuery != "" {
		q := p.Query()
		changed := false
		for k := range q {
			lk := strings.ToLower(k)
			for _, s := range []string{"password", "token", "secret", "key", "nkey", "creds"} {
				if strings.Contains(lk, s) {
					q[k] = []string{"xxxxx"}
					changed = true
					break
				}
			}
		}
		if changed {
			p.RawQuery = q.Encode()
		}
	}
	return p.String()
}
