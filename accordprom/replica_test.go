package accordprom_test

import (
	"context"
	"database/sql"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/accordprom"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/replica"
)

// Replicas on SQLite in every mode of deciding: ByVersion with both gap
// policies, BySequence with parking, a gap that times out and a resync.
func TestReplicaMetrics(t *testing.T) {
	t.Parallel()
	env := dbtest.SQLite(t)
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	m, err := accordprom.NewReplicaMetrics(reg, nil)
	require.NoError(t, err)

	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	noop := func(context.Context, *sql.Tx, replica.Change) error { return nil }
	newReplica := func(cfg replica.Config) *replica.Replica {
		cfg.Dialect, cfg.Observer, cfg.Now, cfg.Logger = accord.SQLite, m, clock, slog.New(slog.DiscardHandler)
		r, err := replica.New(env.DB, &cfg, noop)
		require.NoError(t, err)
		return r
	}
	change := func(version int64) replica.Change {
		return replica.Change{Key: "customer-7", Version: version, Message: message.NewMessage(outbox.NewID(), []byte("{}"))}
	}
	apply := func(r *replica.Replica, want replica.Outcome, versions ...int64) {
		t.Helper()
		for _, v := range versions {
			got, _ := r.Apply(ctx, change(v))
			require.Equal(t, want, got, "version %d", v)
		}
	}

	customers := newReplica(replica.Config{Name: "customers", Mode: replica.ByVersion})
	apply(customers, replica.Gap, 2)
	apply(customers, replica.Stale, 1)
	apply(customers, replica.Applied, 3)
	apply(customers, replica.Stale, 3)

	strict := newReplica(replica.Config{Name: "strict", Mode: replica.ByVersion, GapPolicy: replica.Reject})
	apply(strict, replica.Applied, 1)
	apply(strict, replica.Rejected, 3)

	ledger := newReplica(replica.Config{Name: "ledger", Mode: replica.BySequence, GapTimeout: time.Minute})
	apply(ledger, replica.Applied, 1)
	apply(ledger, replica.Parked, 3, 4, 6)
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	gaps, err := ledger.CheckGaps(ctx)
	require.NoError(t, err)
	require.Len(t, gaps, 1)
	// A snapshot at version 4 contains the parked 3 and 4; 6 still waits
	// for 5.
	res, err := ledger.Resync(ctx, "customer-7", 4, nil)
	require.NoError(t, err)
	require.Equal(t, replica.Applied, res)
	apply(ledger, replica.Applied, 5) // and 6 with it

	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP accord_replica_changes_total Decisions of the replica on changes, by outcome (applied, stale, gap, rejected, parked, resync).
# TYPE accord_replica_changes_total counter
accord_replica_changes_total{outcome="applied",replica="customers"} 2
accord_replica_changes_total{outcome="gap",replica="customers"} 1
accord_replica_changes_total{outcome="stale",replica="customers"} 2
accord_replica_changes_total{outcome="applied",replica="ledger"} 3
accord_replica_changes_total{outcome="parked",replica="ledger"} 3
accord_replica_changes_total{outcome="resync",replica="ledger"} 1
accord_replica_changes_total{outcome="applied",replica="strict"} 1
accord_replica_changes_total{outcome="rejected",replica="strict"} 1
# HELP accord_replica_gap_timeouts_total Reports of keys whose parked changes waited longer than GapTimeout.
# TYPE accord_replica_gap_timeouts_total counter
accord_replica_gap_timeouts_total{replica="ledger"} 1
# HELP accord_replica_resync_dropped_total Parked changes dropped by resyncs because the snapshot contains them.
# TYPE accord_replica_resync_dropped_total counter
accord_replica_resync_dropped_total{replica="ledger"} 2
`)))

	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}
