package broker

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/accordgo/accord/outbox"
)

// Kafka defaults.
const (
	kafkaPortDefault = "9092"
	kafkaClientID    = "accord"
)

// kafkaVersionDefault is the Kafka protocol version spoken unless the URL
// has version=: 2.1, the oldest that Kafka 4 still accepts, and supported by
// every broker from Kafka 2.1 (2018) on.
var kafkaVersionDefault = sarama.V2_1_0_0

// kafkaOptions is what openKafka reads from the URL.
type kafkaOptions struct {
	brokers       []string // host:port
	name          string
	consumerGroup string
	version       sarama.KafkaVersion
}

func parseKafkaURL(rawURL string) (kafkaOptions, error) {
	name := RedactURL(rawURL)
	const scheme = "kafka://"
	if len(rawURL) < len(scheme) || !strings.EqualFold(rawURL[:len(scheme)], scheme) {
		return kafkaOptions{}, fmt.Errorf("%w %s: want kafka://host:9092[,host2:9092]", ErrInvalidURL, name)
	}
	hosts, rawQuery, _ := strings.Cut(rawURL[len(scheme):], "?")
	opts := kafkaOptions{name: name, consumerGroup: ConsumerGroupDefault, version: kafkaVersionDefault}
	for i, h := range strings.Split(hosts, ",") {
		h = strings.TrimSpace(h)
		if len(h) >= len(scheme) && strings.EqualFold(h[:len(scheme)], scheme) {
			h = h[len(scheme):] // kafka://a:9092,kafka://b:9092
		}
		addr, err := kafkaBrokerAddr(h)
		if err != nil {
			label := strconv.Quote(h)
			if strings.Contains(h, "@") { // may hold a password
				label = "#" + strconv.Itoa(i+1)
			}
			return kafkaOptions{}, fmt.Errorf("%w %s: broker %s: %w", ErrInvalidURL, name, label, err)
		}
		opts.brokers = append(opts.brokers, addr)
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return kafkaOptions{}, fmt.Errorf("%w %s: query: %w", ErrInvalidURL, name, err)
	}
	for k, v := range q {
		last := v[len(v)-1]
		switch k {
		case "consumer_group":
			if last == "" {
				return kafkaOptions{}, fmt.Errorf("%w %s: empty consumer_group", ErrInvalidURL, name)
			}
			opts.consumerGroup = last
		case "version":
			opts.version, err = sarama.ParseKafkaVersion(last)
			if err == nil && !opts.version.IsAtLeast(sarama.V0_11_0_0) {
				err = errors.New("the idempotent producer needs Kafka 0.11 or later")
			}
			if err != nil {
				return kafkaOptions{}, fmt.Errorf("%w %s: version %q: %w", ErrInvalidURL, name, last, err)
			}
		default:
			return kafkaOptions{}, fmt.Errorf("%w %s: unknown query parameter %q (supported: consumer_group, version)", ErrInvalidURL, name, k)
		}
	}
	return opts, nil
}

// kafkaBrokerAddr checks one broker address and adds the default port.
func kafkaBrokerAddr(h string) (string, error) {
	switch {
	case h == "":
		return "", errors.New("empty address")
	case strings.Contains(h, "@"):
		return "", errors.New("credentials are not supported in a kafka:// URL (no SASL or TLS; use watermill-kafka directly)")
	case strings.ContainsAny(h, "/ "):
		return "", errors.New("want host:port")
	}
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		// No port: "broker1" or "[::1]".
		host, port, err = net.SplitHostPort(h + ":" + kafkaPortDefault)
		if err != nil {
			return "", errors.New("want host:port")
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	if host == "" {
		return "", errors.New("empty host")
	}
	return net.JoinHostPort(host, port), nil
}

// kafkaPublisherConfig is the configuration of the relay's Kafka producer:
// synchronous (Publish returns once Kafka acknowledged each message),
// acks=all (every in-sync replica has the message; set min.insync.replicas
// on the topic to make that mean something), idempotent (a retried send is
// written once, and in order: one request in flight per connection), the
// Kafka key taken from the accord_key metadata and the partition from the
// key (kafkaPartitioner).
func kafkaPublisherConfig(o kafkaOptions) wkafka.PublisherConfig {
	c := sarama.NewConfig()
	c.ClientID = kafkaClientID
	c.Version = o.version
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Idempotent = true
	c.Net.MaxOpenRequests = 1
	c.Producer.Retry.Max = 10
	c.Producer.Return.Successes = true // required by the sync producer
	c.Producer.Return.Errors = true
	c.Producer.Partitioner = newKafkaPartitioner
	return wkafka.PublisherConfig{
		Brokers:               o.brokers,
		Marshaler:             kafkaMarshaler{},
		OverwriteSaramaConfig: c,
	}
}

// kafkaSubscriberConfig is the configuration of the subscriber Open returns:
// a consumer group (consumer_group, default "accord") that starts at the
// oldest offset the first time it reads a partition.
func kafkaSubscriberConfig(o kafkaOptions) wkafka.SubscriberConfig {
	c := sarama.NewConfig()
	c.ClientID = kafkaClientID
	c.Version = o.version
	c.Consumer.Return.Errors = true
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	return wkafka.SubscriberConfig{
		Brokers:               o.brokers,
		Unmarshaler:           kafkaMarshaler{},
		OverwriteSaramaConfig: c,
		ConsumerGroup:         o.consumerGroup,
	}
}

// openKafka opens a watermill-kafka publisher (kafkaPublisherConfig) and
// subscriber (kafkaSubscriberConfig) on a list of brokers. Each topic is
// the Kafka topic of that name: create topics with the partitions and
// replication you need beforehand (unless the cluster auto-creates them).
// Messages carry the UUID in the header _watermill_message_uuid and the
// metadata as headers; the value is the payload.
//
// The URL has no place for credentials: SASL and TLS are not supported
// here. Kafka is wired and unit-tested (configuration, URL parsing,
// partitioning) but not integration-tested in this repository.
func openKafka(ctx context.Context, rawURL string, wlog watermill.LoggerAdapter) (*Broker, error) {
	opts, err := parseKafkaURL(rawURL)
	if err != nil {
		return nil, err
	}
	pubCfg := kafkaPublisherConfig(opts)
	if err := pubCfg.OverwriteSaramaConfig.Validate(); err != nil {
		return nil, fmt.Errorf("%w %s: producer configuration: %w", ErrInvalidURL, opts.name, err)
	}
	subCfg := kafkaSubscriberConfig(opts)
	if err := subCfg.OverwriteSaramaConfig.Validate(); err != nil {
		return nil, fmt.Errorf("%w %s: consumer configuration: %w", ErrInvalidURL, opts.name, err)
	}
	// The producer connects (fetches metadata) right away.
	pub, err := within(ctx, func() (*wkafka.Publisher, error) {
		return wkafka.NewPublisher(pubCfg, wlog)
	}, func(p *wkafka.Publisher) { _ = p.Close() })
	if err != nil {
		return nil, fmt.Errorf("accord broker: connect to Kafka at %s: %w", opts.name, err)
	}
	sub, err := wkafka.NewSubscriber(subCfg, wlog)
	if err != nil {
		_ = pub.Close()
		return nil, fmt.Errorf("accord broker: Kafka subscriber: %w", err)
	}
	ks := kafkaSubscriber{sub}
	return &Broker{
		Publisher:  pub,
		Subscriber: ks,
		Name:       opts.name,
		closers:    []func() error{ks.Close, pub.Close},
	}, nil
}

// kafkaSubscriber hides watermill-kafka's SubscribeInitialize, which needs
// topic details Accord does not have and always fails without them.
type kafkaSubscriber struct{ inner *wkafka.Subscriber }

func (s kafkaSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	return s.inner.Subscribe(ctx, topic)
}

func (s kafkaSubscriber) Close() error { return s.inner.Close() }

// kafkaMarshaler is watermill-kafka's default marshaler with the Kafka key
// set to the message's accord_key metadata (outbox.MetadataKey), which the
// relay sets on every message; a message without it gets the empty key.
type kafkaMarshaler struct{ wkafka.DefaultMarshaler }

func (m kafkaMarshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	pm, err := m.DefaultMarshaler.Marshal(topic, msg)
	if err != nil {
		return nil, err
	}
	pm.Key = sarama.StringEncoder(msg.Metadata.Get(outbox.MetadataKey))
	return pm, nil
}

// kafkaPartitioner maps a message to the partition CRC-32 (IEEE) of its key
// modulo the partition count: librdkafka's "consistent" partitioner, and
// sarama's NewConsistentCRCHashPartitioner for keyed messages. Unlike
// sarama's hash partitioners it never picks a random partition: a message
// without a key is treated as having the empty key, so events without a key
// (which share one lane in the relay) also share one partition and keep
// their order. Every event of a key goes to one partition as long as the
// topic's partition count does not change.
type kafkaPartitioner struct{}

func newKafkaPartitioner(string) sarama.Partitioner { return kafkaPartitioner{} }

func (kafkaPartitioner) Partition(m *sarama.ProducerMessage, numPartitions int32) (int32, error) {
	if numPartitions < 1 {
		return -1, fmt.Errorf("accord broker: topic %q has %d partitions", m.Topic, numPartitions)
	}
	var key []byte
	if m.Key != nil {
		var err error
		if key, err = m.Key.Encode(); err != nil {
			return -1, err
		}
	}
	return int32(crc32.ChecksumIEEE(key) % uint32(numPartitions)), nil
}

// RequiresConsistency tells sarama to keep a key's partition while brokers
// fail over, instead of moving messages to another partition.
func (kafkaPartitioner) RequiresConsistency() bool { return true }
