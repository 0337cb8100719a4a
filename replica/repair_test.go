package replica_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/replica"
)

// A repair from the source of truth is applied even when the replica's
// position is already at (or beyond) the snapshot's version; PositionTx
// reads the position inside the caller's transaction.
func TestRepairTxOverridesPosition(t *testing.T) {
	t.Parallel()
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		var applied []int64
		r, err := replica.New(env.DB, &replica.Config{Dialect: env.Dialect, Schema: env.Schema, Name: "users", Mode: replica.ByVersion},
			func(_ context.Context, _ *sql.Tx, c replica.Change) error {
				applied = append(applied, c.Version)
				return nil
			})
		require.NoError(t, err)
		for v := int64(1); v <= 3; v++ {
			o, err := r.Apply(ctx, replica.Change{Key: "u1", Version: v})
			require.NoError(t, err)
			require.Equal(t, replica.Applied, o)
		}
		snapshots := 0
		snap := func(context.Context, *sql.Tx) error { snapshots++; return nil }

		// A plain resync at the same version is stale: nothing happens.
		o, err := r.Resync(ctx, "u1", 3, snap)
		require.NoError(t, err)
		require.Equal(t, replica.Stale, o)
		require.Zero(t, snapshots)

		for _, v := range []int64{3, 2} { // same version (row edited behind our back), then a replica ahead
			tx, err := env.DB.BeginTx(ctx, nil)
			require.NoError(t, err)
			o, err := r.RepairTx(ctx, tx, "u1", v, snap)
			require.NoError(t, err)
			require.Equal(t, replica.Applied, o)
			pos, _, _, err := r.PositionTx(ctx, tx, "u1")
			require.NoError(t, err)
			require.Equal(t, v, pos)
			require.NoError(t, tx.Commit())
		}
		require.Equal(t, 2, snapshots)
		// The replica moves on from the repaired position.
		o, err = r.Apply(ctx, replica.Change{Key: "u1", Version: 3})
		require.NoError(t, err)
		require.Equal(t, replica.Applied, o)
		require.Equal(t, []int64{1, 2, 3, 3}, applied)
	})
}
