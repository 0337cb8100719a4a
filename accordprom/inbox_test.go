package accordprom_test

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/accordprom"
	"github.com/accordgo/accord/inbox"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
)

// A real inbox on SQLite counts every outcome per consumer: applied,
// duplicate, failed, then dead_lettered after MaxAttempts.
func TestInboxMetrics(t *testing.T) {
	t.Parallel()
	env := dbtest.SQLite(t)
	reg := prometheus.NewRegistry()
	m, err := accordprom.NewInboxMetrics(reg, nil)
	require.NoError(t, err)
	newInbox := func(consumer string) *inbox.Inbox {
		ib, err := inbox.New(env.DB, &inbox.Config{Dialect: accord.SQLite, Consumer: consumer, MaxAttempts: 2,
			Observer: m, Logger: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		return ib
	}
	billing, shipping := newInbox("billing"), newInbox("shipping")
	ctx := context.Background()
	ok := func(context.Context, *sql.Tx, *message.Message) error { return nil }
	broken := func(context.Context, *sql.Tx, *message.Message) error { return errors.New("handler bug") }

	good := message.NewMessage(outbox.NewID(), []byte("{}"))
	bad := message.NewMessage(outbox.NewID(), []byte("{}"))
	for _, step := range []struct {
		ib   *inbox.Inbox
		msg  *message.Message
		h    inbox.HandlerFunc
		want inbox.Result
	}{
		{billing, good, ok, inbox.ResultApplied},
		{billing, good, ok, inbox.ResultDuplicate},
		{billing, good, ok, inbox.ResultDuplicate},
		{billing, bad, broken, inbox.ResultFailed},
		{billing, bad, broken, inbox.ResultDeadLettered},
		{billing, bad, ok, inbox.ResultDuplicate}, // parked: redeliveries are duplicates
		{shipping, good, ok, inbox.ResultApplied},
	} {
		res, _ := step.ib.Handle(ctx, step.msg, step.h)
		require.Equal(t, step.want, res)
	}

	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP accord_inbox_messages_total Messages handled by the inbox, by consumer and outcome (applied, duplicate, failed, dead_lettered).
# TYPE accord_inbox_messages_total counter
accord_inbox_messages_total{consumer="billing",outcome="applied"} 1
accord_inbox_messages_total{consumer="billing",outcome="dead_lettered"} 1
accord_inbox_messages_total{consumer="billing",outcome="duplicate"} 3
accord_inbox_messages_total{consumer="billing",outcome="failed"} 1
accord_inbox_messages_total{consumer="shipping",outcome="applied"} 1
`), "accord_inbox_messages_total"))
	require.Equal(t, 6.0, value(t, reg, "accord_inbox_handle_duration_seconds", "consumer", "billing"))
	require.Equal(t, 1.0, value(t, reg, "accord_inbox_handle_duration_seconds", "consumer", "shipping"))
	require.Positive(t, sum(t, reg, "accord_inbox_handle_duration_seconds", "consumer", "billing"))

	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}

func TestNewInboxMetrics_Errors(t *testing.T) {
	t.Parallel()
	_, err := accordprom.NewInboxMetrics(prometheus.NewRegistry(), &accordprom.Opts{DurationBuckets: []float64{0.1, 0.01}})
	require.ErrorIs(t, err, accordprom.ErrInvalidOpts)
	require.ErrorContains(t, err, "DurationBuckets [0.1 0.01]: must be strictly increasing")

	reg := prometheus.NewRegistry()
	_, err = accordprom.NewInboxMetrics(reg, nil)
	require.NoError(t, err)
	_, err = accordprom.NewInboxMetrics(reg, nil)
	var are prometheus.AlreadyRegisteredError
	require.ErrorAs(t, err, &are)
}
