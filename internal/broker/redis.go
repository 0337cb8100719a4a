package broker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
)

// redisCheckTimeout bounds the PING done while opening.
const redisCheckTimeout = 5 * time.Second

// redisOptions is what openRedis reads from the URL.
type redisOptions struct {
	client        *redis.Options
	name          string
	consumerGroup string
	maxlen        int64
	maxIdleTime   time.Duration // 0: watermill-redisstream's default (60 s)
	claimInterval time.Duration // 0: watermill-redisstream's default (5 s)
}

// redisOwnParams are the query parameters Accord reads from a redis:// URL;
// the others go to go-redis (redis.ParseURL: dial_timeout, read_timeout,
// pool_size, client_name, protocol, skip_verify...).
var redisOwnParams = []string{"consumer_group", "maxlen", "max_idle_time", "claim_interval"}

func parseRedisURL(rawURL string) (redisOptions, error) {
	name := RedactURL(rawURL)
	u, err := url.Parse(rawURL)
	if err != nil {
		return redisOptions{}, fmt.Errorf("%w %s: %w", ErrInvalidURL, name, err)
	}
	opts := redisOptions{name: name, consumerGroup: ConsumerGroupDefault}
	q := u.Query()
	for _, k := range redisOwnParams {
		v := q.Get(k)
		q.Del(k)
		if v == "" {
			continue
		}
		switch k {
		case "consumer_group":
			opts.consumerGroup = v
		case "maxlen":
			opts.maxlen, err = strconv.ParseInt(v, 10, 64)
			if err != nil || opts.maxlen < 0 {
				return redisOptions{}, fmt.Errorf("%w %s: maxlen %q: want a number of entries, 0 for unlimited", ErrInvalidURL, name, v)
			}
		case "max_idle_time", "claim_interval":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return redisOptions{}, fmt.Errorf("%w %s: %s %q: want a positive duration such as 30s", ErrInvalidURL, name, k, v)
			}
			if k == "max_idle_time" {
				opts.maxIdleTime = d
			} else {
				opts.claimInterval = d
			}
		}
	}
	u.RawQuery = q.Encode()
	opts.client, err = redis.ParseURL(u.String())
	if err != nil {
		return redisOptions{}, fmt.Errorf("%w %s: %w", ErrInvalidURL, name, err)
	}
	if opts.client.ClientName == "" {
		opts.client.ClientName = "accord"
	}
	return opts, nil
}

// openRedis opens one go-redis client shared by a watermill-redisstream
// publisher and subscriber (Redis 5.0 or later):
//
//   - Each topic is the stream of that name (the topic is the key; the URL's
//     database number selects the database). Each message is one entry
//     (XADD) with the fields _watermill_message_uuid, payload and metadata
//     (the metadata map encoded with MessagePack).
//   - With maxlen=n the publisher trims each stream to about n entries
//     (XADD MAXLEN ~ n). Without it streams grow until you trim them
//     (XTRIM), which consumer groups do not do.
//   - The subscriber reads with a consumer group: consumer_group (default
//     "accord"), created at the start of the stream when missing, so a new
//     group gets everything the stream still holds. Each Subscriber is its own
//     consumer in the group; entries are acknowledged (XACK) when the
//     message is acked, a nacked message is redelivered at once, and entries
//     left pending by a consumer that went away are claimed by another after
//     max_idle_time (default 60s; checked every claim_interval, default 5s).
//
// Redis acknowledges an XADD once the entry is in memory: how much survives
// a Redis crash depends on its persistence settings (appendonly yes with
// appendfsync everysec or always). Redis Cluster and Sentinel are not
// supported by the URL form.
func openRedis(ctx context.Context, rawURL string, wlog watermill.LoggerAdapter) (*Broker, error) {
	opts, err := parseRedisURL(rawURL)
	if err != nil {
		return nil, err
	}
	client := redis.NewClient(opts.client)
	checkCtx, cancel := context.WithTimeout(ctx, redisCheckTimeout)
	err = client.Ping(checkCtx).Err()
	cancel()
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("accord broker: connect to Redis at %s: %w", opts.name, err)
	}
	shared := redisSharedClient{client}
	pub, err := redisstream.NewPublisher(redisstream.PublisherConfig{
		Client:        shared,
		DefaultMaxlen: opts.maxlen,
	}, wlog)
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("accord broker: Redis publisher: %w", err)
	}
	sub, err := redisstream.NewSubscriber(redisstream.SubscriberConfig{
		Client:        shared,
		ConsumerGroup: opts.consumerGroup,
		// "0": a consumer group created now starts at the first entry.
		OldestId:      "0",
		MaxIdleTime:   opts.maxIdleTime,
		ClaimInterval: opts.claimInterval,
		// Block for BlockTime on the first read too, so that Close does not
		// leave a reader blocked forever on an empty stream.
		DisableIndefiniteInitialBlock: true,
		// A cancelled subscription or a closed client ends the reader at
		// once (otherwise it logs the error and sleeps half a second first).
		ShouldStopOnReadErrors: func(err error) bool {
			return errors.Is(err, context.Canceled) || errors.Is(err, redis.ErrClosed)
		},
	}, wlog)
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("accord broker: Redis subscriber: %w", err)
	}
	rs := &redisSubscriber{inner: sub, client: client, group: opts.consumerGroup}
	return &Broker{
		Publisher:  pub,
		Subscriber: rs,
		Name:       opts.name,
		closers:    []func() error{rs.Close, pub.Close, client.Close},
	}, nil
}

// redisSharedClient lets the publisher and the subscriber share one client:
// both close their client in Close, and Broker.Close closes it once, last.
type redisSharedClient struct{ *redis.Client }

func (redisSharedClient) Close() error { return nil }

type redisSubscriber struct {
	inner  *redisstream.Subscriber
	client *redis.Client
	group  string
}

func (s *redisSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	ch, err := s.inner.Subscribe(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("accord broker: subscribe to Redis stream %q as group %q: %w", topic, s.group, err)
	}
	return ch, nil
}

// SubscribeInitialize creates the topic's stream and the consumer group at
// its start, when they do not exist (message.SubscribeInitializer).
func (s *redisSubscriber) SubscribeInitialize(topic string) error {
	ctx, cancel := context.WithTimeout(context.Background(), redisCheckTimeout)
	defer cancel()
	err := s.client.XGroupCreateMkStream(ctx, topic, s.group, "0").Err()
	if err != nil && !isRedisBusyGroup(err) {
		return fmt.Errorf("accord broker: create consumer group %q on Redis stream %q: %w", s.group, topic, err)
	}
	return nil
}

func (s *redisSubscriber) Close() error { return s.inner.Close() }

// isRedisBusyGroup reports the error XGROUP CREATE returns for a group that
// exists.
func isRedisBusyGroup(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "BUSYGROUP")
}
