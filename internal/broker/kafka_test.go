package broker

import (
	"context"
	"fmt"
	"hash/crc32"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/outbox"
)

// There is no Kafka server on the machines these tests run on: they check
// the configuration Open builds, the URL parsing, the marshaler and the
// partitioner, without a broker.

func TestKafkaURL(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		url     string
		brokers []string
		group   string
		version sarama.KafkaVersion
	}{
		{"kafka://broker1:9092", []string{"broker1:9092"}, "accord", sarama.V2_1_0_0},
		{"kafka://broker1:9092,broker2:9093", []string{"broker1:9092", "broker2:9093"}, "accord", sarama.V2_1_0_0},
		{"KAFKA://broker1,broker2", []string{"broker1:9092", "broker2:9092"}, "accord", sarama.V2_1_0_0},
		{"kafka://b1:9092,kafka://b2:9092", []string{"b1:9092", "b2:9092"}, "accord", sarama.V2_1_0_0},
		{"kafka://10.0.0.1:9092, 10.0.0.2", []string{"10.0.0.1:9092", "10.0.0.2:9092"}, "accord", sarama.V2_1_0_0},
		{"kafka://[::1]:9094,[fe80::1]", []string{"[::1]:9094", "[fe80::1]:9092"}, "accord", sarama.V2_1_0_0},
		{"kafka://b1:9092?consumer_group=billing&version=3.6.0", []string{"b1:9092"}, "billing", sarama.V3_6_0_0},
	} {
		o, err := parseKafkaURL(tt.url)
		require.NoError(t, err, "url %q", tt.url)
		require.Equal(t, tt.brokers, o.brokers, "url %q", tt.url)
		require.Equal(t, tt.group, o.consumerGroup, "url %q", tt.url)
		require.Equal(t, tt.version, o.version, "url %q", tt.url)
	}
}

func TestKafkaInvalidURL(t *testing.T) {
	t.Parallel()
	for _, url := range []string{
		"kafka://",
		"kafka://b1:9092,",
		"kafka://b1:9092,,b2:9092",
		"kafka://b1:notaport",
		"kafka://b1:0",
		"kafka://b1:70000",
		"kafka://:9092",
		"kafka://user:hunter2@b1:9092",
		"kafka://b1:9092/orders",
		"kafka://b1:9092?consumer_group=",
		"kafka://b1:9092?version=banana",
		"kafka://b1:9092?version=0.10.2.0", // too old for the idempotent producer
		"kafka://b1:9092?acks=1",
		"kafka://b1:9092?%zz",
	} {
		_, err := Open(context.Background(), url, nil)
		require.ErrorIs(t, err, ErrInvalidURL, "url %q", url)
		require.NotContains(t, err.Error(), "hunter2")
	}
}

func TestKafkaPublisherConfig(t *testing.T) {
	t.Parallel()
	o, err := parseKafkaURL("kafka://b1:9092,b2:9092")
	require.NoError(t, err)
	cfg := kafkaPublisherConfig(o)
	require.Equal(t, []string{"b1:9092", "b2:9092"}, cfg.Brokers)
	require.IsType(t, kafkaMarshaler{}, cfg.Marshaler)

	c := cfg.OverwriteSaramaConfig
	require.NoError(t, c.Validate(), "sarama accepts the configuration")
	require.Equal(t, sarama.WaitForAll, c.Producer.RequiredAcks, "acks=all")
	require.True(t, c.Producer.Idempotent, "idempotent producer")
	require.Equal(t, 1, c.Net.MaxOpenRequests, "one request in flight keeps the order on retries")
	require.Positive(t, c.Producer.Retry.Max)
	require.True(t, c.Producer.Return.Successes, "needed by the sync producer")
	require.Equal(t, sarama.V2_1_0_0, c.Version)
	require.Equal(t, "accord", c.ClientID)
	_, ok := c.Producer.Partitioner("orders").(kafkaPartitioner)
	require.True(t, ok, "the partitioner is kafkaPartitioner")

	sub := kafkaSubscriberConfig(o)
	require.NoError(t, sub.OverwriteSaramaConfig.Validate())
	require.Equal(t, "accord", sub.ConsumerGroup)
	require.Equal(t, sarama.OffsetOldest, sub.OverwriteSaramaConfig.Consumer.Offsets.Initial, "a new group reads from the start")
	require.Equal(t, sarama.V2_1_0_0, sub.OverwriteSaramaConfig.Version)
	require.IsType(t, kafkaMarshaler{}, sub.Unmarshaler)
}

func relayMessage(key string, version int) *message.Message {
	m := message.NewMessage(uuid.NewString(), fmt.Appendf(nil, `{"v":%d}`, version))
	m.Metadata.Set(outbox.MetadataKey, key)
	m.Metadata.Set(outbox.MetadataVersion, fmt.Sprint(version))
	m.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	return m
}

func TestKafkaMarshaler(t *testing.T) {
	t.Parallel()
	m := relayMessage("order-42", 3)
	pm, err := kafkaMarshaler{}.Marshal("orders", m)
	require.NoError(t, err)
	require.Equal(t, "orders", pm.Topic)
	key, err := pm.Key.Encode()
	require.NoError(t, err)
	require.Equal(t, "order-42", string(key), "the Kafka key is the accord_key")
	value, err := pm.Value.Encode()
	require.NoError(t, err)
	require.Equal(t, `{"v":3}`, string(value))

	// What a consumer reads back: the UUID, the payload and all metadata.
	cm := &sarama.ConsumerMessage{Topic: pm.Topic, Key: key, Value: value}
	for _, h := range pm.Headers {
		cm.Headers = append(cm.Headers, &sarama.RecordHeader{Key: h.Key, Value: h.Value})
	}
	got, err := kafkaMarshaler{}.Unmarshal(cm)
	require.NoError(t, err)
	require.Equal(t, m.UUID, got.UUID)
	require.Equal(t, string(m.Payload), string(got.Payload))
	require.Equal(t, m.Metadata, got.Metadata)

	// No accord_key: the empty key, not a missing one.
	pm, err = kafkaMarshaler{}.Marshal("orders", message.NewMessage(uuid.NewString(), nil))
	require.NoError(t, err)
	require.NotNil(t, pm.Key)
	key, err = pm.Key.Encode()
	require.NoError(t, err)
	require.Empty(t, key)
}

func TestKafkaPartitioner(t *testing.T) {
	t.Parallel()
	const partitions = 12
	o, err := parseKafkaURL("kafka://b1:9092")
	require.NoError(t, err)
	newPartitioner := kafkaPublisherConfig(o).OverwriteSaramaConfig.Producer.Partitioner
	partitionOf := func(p sarama.Partitioner, m *message.Message) int32 {
		t.Helper()
		pm, err := kafkaMarshaler{}.Marshal("orders", m)
		require.NoError(t, err)
		n, err := p.Partition(pm, partitions)
		require.NoError(t, err)
		require.True(t, n >= 0 && n < partitions, "partition %d", n)
		return n
	}

	p := newPartitioner("orders")
	require.True(t, p.RequiresConsistency(), "a key keeps its partition while brokers fail over")
	used := map[int32]bool{}
	crc := sarama.NewConsistentCRCHashPartitioner("orders")
	for i := range 200 {
		key := fmt.Sprintf("order-%d", i)
		want := int32(crc32.ChecksumIEEE([]byte(key)) % partitions)
		// Every event of the key, from any partitioner instance (one per
		// topic in sarama), goes to the same partition.
		for v := 1; v <= 5; v++ {
			require.Equal(t, want, partitionOf(p, relayMessage(key, v)), "key %s", key)
		}
		require.Equal(t, want, partitionOf(newPartitioner("other"), relayMessage(key, 6)), "key %s", key)
		// The same partition as librdkafka's "consistent" partitioner.
		pm, err := kafkaMarshaler{}.Marshal("orders", relayMessage(key, 1))
		require.NoError(t, err)
		ref, err := crc.Partition(pm, partitions)
		require.NoError(t, err)
		require.Equal(t, ref, want, "key %s", key)
		used[want] = true
	}
	require.Len(t, used, partitions, "200 keys spread over all partitions")

	// Events without a key share one partition (sarama's hash partitioners
	// would pick a random one for a nil key).
	noKey := partitionOf(p, message.NewMessage(uuid.NewString(), nil))
	for range 50 {
		require.Equal(t, noKey, partitionOf(p, message.NewMessage(uuid.NewString(), nil)))
		require.Equal(t, noKey, partitionOf(p, relayMessage("", 1)))
		n, err := p.Partition(&sarama.ProducerMessage{Topic: "orders"}, partitions)
		require.NoError(t, err)
		require.Equal(t, noKey, n, "a nil key is the empty key")
	}

	_, err = p.Partition(&sarama.ProducerMessage{Topic: "orders"}, 0)
	require.Error(t, err)
}

func TestKafkaUnreachable(t *testing.T) {
	t.Parallel()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	_, err := Open(ctx, "kafka://127.0.0.1:1?consumer_group=billing", nil)
	require.ErrorContains(t, err, "connect to Kafka at kafka://127.0.0.1:1?consumer_group=billing")
	require.NotErrorIs(t, err, ErrInvalidURL)
	t.Logf("failed after %s", time.Since(start).Round(time.Millisecond))

	// Open gives up when its context ends, whatever sarama's retries.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	_, err = Open(ctx, "kafka://127.0.0.1:1", nil)
	require.ErrorIs(t, err, context.Canceled)
}
