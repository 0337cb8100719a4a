package broker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// ConsumerGroupDefault is the consumer group of the subscribers Open returns
// for RabbitMQ, Redis Streams and Kafka when the URL has no consumer_group.
const ConsumerGroupDefault = "accord"

// ErrInvalidTopic is returned by the RabbitMQ publisher and subscriber for a
// topic that cannot name an exchange and its queues.
var ErrInvalidTopic = errors.New("accord broker: topic cannot be used with this broker")

// amqpMaxNameBytes is RabbitMQ's limit on exchange and queue names.
const amqpMaxNameBytes = 255

// amqpOwnParams are the query parameters Accord reads from an amqp:// URL;
// they are removed before the URL is handed to the AMQP client.
var amqpOwnParams = []string{"consumer_group", "declare_queue"}

// amqpClientParams are the query parameters the AMQP client
// (github.com/rabbitmq/amqp091-go) understands; see
// https://www.rabbitmq.com/docs/uri-query-parameters.
var amqpClientParams = []string{
	"auth_mechanism", "heartbeat", "connection_timeout", "channel_max",
	"certfile", "keyfile", "cacertfile", "server_name_indication",
}

// amqpOptions is what openAMQP reads from the URL.
type amqpOptions struct {
	uri           string // for the AMQP client: Accord's parameters removed
	name          string // redacted, for logs and errors
	consumerGroup string
	declareQueue  bool
}

func parseAMQPURL(rawURL string) (amqpOptions, error) {
	name := RedactURL(rawURL)
	u, err := url.Parse(rawURL)
	if err != nil {
		return amqpOptions{}, fmt.Errorf("%w %s: %w", ErrInvalidURL, name, err)
	}
	if u.Host == "" {
		return amqpOptions{}, fmt.Errorf("%w %s: no host (want amqp://user:pass@host:5672/vhost)", ErrInvalidURL, name)
	}
	q := u.Query()
	opts := amqpOptions{name: name, consumerGroup: ConsumerGroupDefault}
	for k, v := range q {
		last := v[len(v)-1]
		switch {
		case k == "consumer_group":
			opts.consumerGroup = last
		case k == "declare_queue":
			opts.declareQueue, err = strconv.ParseBool(last)
			if err != nil {
				return amqpOptions{}, fmt.Errorf("%w %s: declare_queue %q: want true or false", ErrInvalidURL, name, last)
			}
		case !slices.Contains(amqpClientParams, k):
			return amqpOptions{}, fmt.Errorf("%w %s: unknown query parameter %q (supported: %s, %s)",
				ErrInvalidURL, name, k, strings.Join(amqpOwnParams, ", "), strings.Join(amqpClientParams, ", "))
		}
	}
	if err := validAMQPName(opts.consumerGroup); err != nil {
		return amqpOptions{}, fmt.Errorf("%w %s: consumer_group %q: %w", ErrInvalidURL, name, opts.consumerGroup, err)
	}
	for _, k := range amqpOwnParams {
		q.Del(k)
	}
	u.RawQuery = q.Encode()
	opts.uri = u.String()
	// Let the client reject what it cannot use (a port that is not a number,
	// a heartbeat that is not an integer) now, as a configuration error.
	if _, err := amqp091.ParseURI(opts.uri); err != nil {
		return amqpOptions{}, fmt.Errorf("%w %s: %w", ErrInvalidURL, name, err)
	}
	return opts, nil
}

// amqpQueueName is the queue of consumer group group on topic: watermill's
// GenerateQueueNameTopicNameWithSuffix, "<topic>_<group>".
func amqpQueueName(topic, group string) string { return topic + "_" + group }

// validAMQPName accepts non-empty names within RabbitMQ's length limit that
// do not use the reserved "amq." prefix.
func validAMQPName(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > amqpMaxNameBytes:
		return fmt.Errorf("longer than %d bytes", amqpMaxNameBytes)
	case strings.HasPrefix(s, "amq."):
		return errors.New(`the prefix "amq." is reserved by RabbitMQ`)
	}
	return nil
}

// openAMQP opens one AMQP 0-9-1 connection (RabbitMQ) shared by a
// watermill-amqp publisher and subscriber, configured as watermill's durable
// pub/sub (amqp.NewDurablePubSubConfig):
//
//   - Each topic is a durable fanout exchange named after the topic; the
//     routing key is empty. The publisher declares the exchange the first
//     time it publishes to the topic.
//   - Each consumer group reads its own durable queue "<topic>_<group>"
//     bound to that exchange, so every group gets every message and the
//     subscribers of one group share the work. The subscriber Open returns
//     belongs to consumer_group (default "accord"), consumes with prefetch
//     1, and requeues a nacked message.
//   - Messages are persistent (delivery mode 2) and carry the watermill UUID
//     in the header _watermill_message_uuid and in the message-id property,
//     and the metadata as headers.
//   - Publish waits for RabbitMQ's publisher confirm of every message, so
//     the relay deletes a row only once RabbitMQ has taken the message (for
//     a persistent message routed to a durable queue: written to disk).
//
// RabbitMQ drops a message published to an exchange no queue is bound to,
// and confirms it all the same. With declare_queue=true the publisher also
// declares the consumer group's queue and binds it when it first publishes
// to a topic, so events written before that group's first subscriber ran
// wait in the queue; without it, make sure the consumers' queues exist
// before the relay publishes (start the consumers first, or declare the
// queues and bindings with your provisioning).
//
// The connection reconnects by itself (watermill-amqp, with backoff): while
// it is down, publishes fail and the relay retries them. (Checked by hand by
// closing the connection with rabbitmqctl close_connection: publishes
// succeeded again 0.4 s later; there is no automated outage test.)
func openAMQP(ctx context.Context, rawURL string, wlog watermill.LoggerAdapter) (*Broker, error) {
	opts, err := parseAMQPURL(rawURL)
	if err != nil {
		return nil, err
	}
	props := amqp091.NewConnectionProperties() // product, version, platform
	props.SetClientConnectionName("accord")    // shown by rabbitmqctl and the management UI
	conn, err := within(ctx, func() (*wamqp.ConnectionWrapper, error) {
		return wamqp.NewConnection(wamqp.ConnectionConfig{
			AmqpURI:    opts.uri,
			AmqpConfig: &amqp091.Config{Locale: "en_US", Properties: props},
		}, wlog)
	}, func(c *wamqp.ConnectionWrapper) { _ = c.Close() })
	if err != nil {
		return nil, fmt.Errorf("accord broker: connect to RabbitMQ at %s: %w", opts.name, err)
	}

	queueName := wamqp.GenerateQueueNameTopicNameWithSuffix(opts.consumerGroup)
	pubCfg := wamqp.NewDurablePubSubConfig(opts.uri, queueName)
	pubCfg.Marshaler = amqpMarshaler{}
	pubCfg.Publish.ConfirmDelivery = true
	// ChannelPoolSize stays 0: a channel per Publish call. watermill-amqp's
	// pool loses a channel for good each time it cannot reopen one (while
	// the connection is down), until Publish blocks forever; a relay must
	// outlive broker restarts. The relay publishes a batch per call, so the
	// extra round trips are shared by many messages.
	pubCfg.TopologyBuilder = &amqpTopology{declareQueue: opts.declareQueue, log: wlog}
	pub, err := wamqp.NewPublisherWithConnection(pubCfg, wlog, conn)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("accord broker: RabbitMQ publisher: %w", err)
	}

	subCfg := wamqp.NewDurablePubSubConfig(opts.uri, queueName)
	subCfg.Marshaler = amqpMarshaler{}
	sub, err := wamqp.NewSubscriberWithConnection(subCfg, wlog, conn)
	if err != nil {
		_ = pub.Close()
		_ = conn.Close()
		return nil, fmt.Errorf("accord broker: RabbitMQ subscriber: %w", err)
	}

	name := opts.name
	ap := &amqpPublisher{inner: pub, group: opts.consumerGroup, declareQueue: opts.declareQueue}
	as := &amqpSubscriber{inner: sub, group: opts.consumerGroup}
	return &Broker{
		Publisher:  ap,
		Subscriber: as,
		Name:       name,
		// The subscriber and the publisher leave the shared connection open.
		closers: []func() error{as.Close, ap.Close, conn.Close},
	}, nil
}

// amqpMarshaler is watermill-amqp's default marshaler (persistent delivery,
// UUID and metadata in headers) that also sets the AMQP message-id property
// to the message UUID, for consumers that are not written with watermill.
type amqpMarshaler struct{ wamqp.DefaultMarshaler }

func (m amqpMarshaler) Marshal(msg *message.Message) (amqp091.Publishing, error) {
	p, err := m.DefaultMarshaler.Marshal(msg)
	if err != nil {
		return p, err
	}
	p.MessageId = msg.UUID
	return p, nil
}

// amqpTopology is watermill-amqp's default topology. With declareQueue, the
// exchange declaration the publisher makes before it first publishes to a
// topic also declares the consumer group's queue and binds it.
type amqpTopology struct {
	base         wamqp.DefaultTopologyBuilder
	declareQueue bool
	log          watermill.LoggerAdapter
}

func (b *amqpTopology) ExchangeDeclare(ch *amqp091.Channel, exchange string, cfg wamqp.Config) error {
	if err := b.base.ExchangeDeclare(ch, exchange, cfg); err != nil {
		return err
	}
	if !b.declareQueue {
		return nil
	}
	// The exchange is named after the topic (GenerateExchangeNameTopicName).
	topic := exchange
	return b.base.BuildTopology(ch, wamqp.BuildTopologyParams{
		Topic:        topic,
		QueueName:    cfg.Queue.GenerateName(topic),
		ExchangeName: exchange,
		RoutingKey:   cfg.QueueBind.GenerateRoutingKey(topic),
	}, cfg, b.log)
}

func (b *amqpTopology) BuildTopology(ch *amqp091.Channel, params wamqp.BuildTopologyParams, cfg wamqp.Config, log watermill.LoggerAdapter) error {
	return b.base.BuildTopology(ch, params, cfg, log)
}

// checkAMQPTopic rejects topics that cannot name an exchange and the queue
// "<topic>_<group>". An empty topic would mean RabbitMQ's default exchange,
// which drops what is published to it with an empty routing key.
func checkAMQPTopic(topic, group string) error {
	if err := validAMQPName(topic); err != nil {
		return fmt.Errorf("%w: RabbitMQ exchange %q: %w", ErrInvalidTopic, topic, err)
	}
	if q := amqpQueueName(topic, group); len(q) > amqpMaxNameBytes {
		return fmt.Errorf("%w: RabbitMQ queue %q: longer than %d bytes", ErrInvalidTopic, q, amqpMaxNameBytes)
	}
	return nil
}

type amqpPublisher struct {
	inner        *wamqp.Publisher
	group        string
	declareQueue bool
}

func (p *amqpPublisher) Publish(topic string, msgs ...*message.Message) error {
	group := ""
	if p.declareQueue {
		group = p.group
	}
	if err := checkAMQPTopic(topic, group); err != nil {
		return err
	}
	if err := p.inner.Publish(topic, msgs...); err != nil {
		return fmt.Errorf("accord broker: publish to RabbitMQ exchange %q: %w", topic, err)
	}
	return nil
}

func (p *amqpPublisher) Close() error { return p.inner.Close() }

type amqpSubscriber struct {
	inner *wamqp.Subscriber
	group string
}

func (s *amqpSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if err := checkAMQPTopic(topic, s.group); err != nil {
		return nil, err
	}
	ch, err := s.inner.Subscribe(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("accord broker: subscribe to RabbitMQ queue %q: %w", amqpQueueName(topic, s.group), err)
	}
	return ch, nil
}

// SubscribeInitialize declares the topic's exchange and the consumer group's
// queue and binds them (message.SubscribeInitializer), so messages published
// from then on are kept for the group.
func (s *amqpSubscriber) SubscribeInitialize(topic string) error {
	if err := checkAMQPTopic(topic, s.group); err != nil {
		return err
	}
	if err := s.inner.SubscribeInitialize(topic); err != nil {
		return fmt.Errorf("accord broker: declare RabbitMQ queue %q: %w", amqpQueueName(topic, s.group), err)
	}
	return nil
}

func (s *amqpSubscriber) Close() error { return s.inner.Close() }
