// Package service is the run-once lifecycle Accord's long-running workers
// share (the relay, the feed puller): Run blocks and runs at most once,
// Running is closed once the worker is up, and Close cancels Run and waits
// for it, idempotently and safely before Run.
package service

import (
	"context"
	"sync"
	"sync/atomic"
)

// Lifecycle is embedded (as a value) in a worker. Its zero value is not
// ready: use New.
type Lifecycle struct {
	started atomic.Bool
	running chan struct{}
	done    chan struct{}

	mu     sync.Mutex
	cancel context.CancelFunc
	closed bool
}

// New returns a ready Lifecycle.
func New() *Lifecycle {
	return &Lifecycle{running: make(chan struct{}), done: make(chan struct{})}
}

// Start begins a run. When it returns ok=false the caller's Run returns
// err at once: alreadyRunning when Run was called before, nil when Close
// came first. Otherwise it returns the run's context, cancelled by Close,
// and finish, which the caller defers to mark the end of the run.
func (l *Lifecycle) Start(ctx context.Context, alreadyRunning error) (runCtx context.Context, finish func(), ok bool, err error) {
	if !l.started.CompareAndSwap(false, true) {
		return nil, nil, false, alreadyRunning
	}
	ctx, cancel := context.WithCancel(ctx)
	finish = func() {
		cancel()
		close(l.done)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		finish()
		return nil, nil, false, nil
	}
	l.cancel = cancel
	return ctx, finish, true, nil
}

// MarkRunning closes the Running channel.
func (l *Lifecycle) MarkRunning() { close(l.running) }

// Running is closed once the worker is up.
func (l *Lifecycle) Running() chan struct{} { return l.running }

// Close cancels a run and waits for it to finish. It is idempotent and safe
// before Start.
func (l *Lifecycle) Close() {
	l.mu.Lock()
	wasClosed := l.closed
	l.closed = true
	cancel := l.cancel
	l.mu.Unlock()
	if cancel != nil {
		cancel()
		if !wasClosed {
			<-l.done
		}
	}
}
