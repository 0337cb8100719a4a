package relay_test

import (
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// natsServer is a throwaway nats-server with JetStream on its own port and
// store directory, which the test can kill and restart.
type natsServer struct {
	t     *testing.T
	port  int
	store string
	cmd   *exec.Cmd
}

func startNATSServer(t *testing.T) *natsServer {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		bin = "/usr/sbin/nats-server"
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	s := &natsServer{t: t, port: port, store: t.TempDir()}
	s.cmd = exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", s.store)
	s.start(bin)
	t.Cleanup(s.kill)
	return s
}

func (s *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

func (s *natsServer) start(bin string) {
	s.t.Helper()
	if bin == "" {
		bin = s.cmd.Path
	}
	s.cmd = exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(s.port), "-js", "-sd", s.store)
	require.NoError(s.t, s.cmd.Start(), "start nats-server (Debian package nats-server)")
	waitFor(s.t, 20*time.Second, "nats-server to accept connections", func() bool {
		nc, err := nats.Connect(s.url(), nats.Timeout(200*time.Millisecond))
		if err != nil {
			return false
		}
		defer nc.Close()
		js, err := nc.JetStream()
		if err != nil {
			return false
		}
		_, err = js.AccountInfo()
		return err == nil
	})
}

func (s *natsServer) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
}

// The broker dies (kill -9) while events are being written and relayed, and
// comes back: every event reaches the stream once (JetStream deduplicates
// the retried publishes on the message UUID), in order per key, and the relay
// kept retrying instead of exiting or dropping rows.
func TestBrokerOutageNATS(t *testing.T) {
	t.Parallel()
	srv := startNATSServer(t)
	env := dbtest.PostgresSchema(t)
	ob := newOutbox(t, env)

	pub, err := wmnats.NewPublisher(wmnats.PublisherConfig{
		URL:         srv.url(),
		NatsOptions: []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)},
		Marshaler:   &wmnats.NATSMarshaler{},
		JetStream: wmnats.JetStreamConfig{
			AutoProvision:  true,
			TrackMsgId:     true,
			ConnectOptions: []nats.JSOpt{nats.MaxWait(time.Second)},
		},
	}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = pub.Close() })

	r := startRelay(t, env, pub, &relay.Config{RetryBackoffMin: 20 * time.Millisecond, RetryBackoffMax: 200 * time.Millisecond})
	topic := dbtest.RandomName("outage_")
	keys := []string{"a", "b", "c", "d"}
	var all []string
	write := func() {
		for _, k := range keys {
			for _, id := range writeEvents(t, env, ob, topic, k, 25) {
				all = append(all, id)
			}
		}
	}
	write()
	waitFor(t, 30*time.Second, "the first events to be published", func() bool { return r.Stats().Published >= 100 })

	srv.kill()
	write()
	waitFor(t, 30*time.Second, "publish failures while the broker is down", func() bool { return r.Stats().Failures > 0 })
	require.Positive(t, pending(t, env), "rows were deleted while the broker was down")

	srv.start("")
	waitFor(t, 60*time.Second, "the outbox to drain after the broker came back", func() bool { return pending(t, env) == 0 })

	nc, err := nats.Connect(srv.url())
	require.NoError(t, err)
	defer nc.Close()
	js, err := nc.JetStream()
	require.NoError(t, err)
	sub, err := js.SubscribeSync(topic, nats.DeliverAll(), nats.OrderedConsumer())
	require.NoError(t, err)
	seen := map[string]bool{}
	lastSeq := map[string]int{}
	for len(seen) < len(all) {
		m, err := sub.NextMsg(10 * time.Second)
		require.NoError(t, err, "received %d of %d", len(seen), len(all))
		id := m.Header.Get(wmnats.WatermillUUIDHdr)
		require.False(t, seen[id], "duplicate %s in the stream", id)
		seen[id] = true
		key := m.Header.Get(outbox.MetadataKey)
		n, err := strconv.Atoi(string(m.Data))
		require.NoError(t, err)
		// Payloads restart at 0 in each transaction of 25 events.
		if prev, ok := lastSeq[key]; ok && n != 0 {
			require.Equal(t, prev+1, n, "key %s out of order", key)
		}
		lastSeq[key] = n
	}
	for _, id := range all {
		require.True(t, seen[id], "event %s lost", id)
	}
}
