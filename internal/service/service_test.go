package service_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/service"
)

func TestLifecycle(t *testing.T) {
	t.Parallel()
	l := service.New()
	errAgain := errors.New("already running")
	ctx, finish, ok, err := l.Start(context.Background(), errAgain)
	require.True(t, ok)
	require.NoError(t, err)
	_, _, ok, err = l.Start(context.Background(), errAgain)
	require.False(t, ok, "a second Start must be refused")
	require.ErrorIs(t, err, errAgain)
	l.MarkRunning()
	<-l.Running()

	closed := make(chan struct{})
	go func() { l.Close(); close(closed) }()
	<-ctx.Done() // Close cancels the run
	select {
	case <-closed:
		t.Fatal("Close returned before the run finished")
	default:
	}
	finish()
	<-closed
	l.Close() // idempotent
}

func TestCloseBeforeStart(t *testing.T) {
	t.Parallel()
	l := service.New()
	l.Close()
	l.Close()
	_, _, ok, err := l.Start(context.Background(), errors.New("already running"))
	require.False(t, ok, "a closed lifecycle must not start")
	require.NoError(t, err)
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	lo, hi := 100*time.Millisecond, time.Second
	for attempt, base := range []time.Duration{lo, 2 * lo, 4 * lo, 8 * lo, hi, hi} {
		for range 50 {
			d := service.Backoff(attempt, lo, hi)
			require.GreaterOrEqual(t, d, base-base/10, "attempt %d", attempt)
			require.LessOrEqual(t, d, base+base/10, "attempt %d", attempt)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.False(t, service.Sleep(ctx, time.Hour))
	require.True(t, service.Sleep(context.Background(), time.Millisecond))
}
