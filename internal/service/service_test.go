package service_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord/internal/service"
)

func TestLifecycle(t *testing.T) {
	t.Parallel()
	l := service.New()
	ctx, finish, first, ok := l.Start(context.Background())
	require.True(t, first)
	require.True(t, ok)
	_, _, first, ok = l.Start(context.Background())
	require.False(t, first, "a second Start must be refused")
	require.False(t, ok)
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
	_, _, first, ok := l.Start(context.Background())
	require.True(t, first)
	require.False(t, ok, "a closed lifecycle must not start")
}
