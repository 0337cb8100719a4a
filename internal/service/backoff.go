package service

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff returns the wait before retry number attempt (0-based):
// exponential from lo to hi, with ±10 % jitter so that many clients do not
// retry in step.
func Backoff(attempt int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 0; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	jitter := time.Duration(rand.Int64N(int64(d)/5+1)) - d/10
	return max(d+jitter, 0)
}

// Sleep waits for d or until ctx ends, and reports whether d elapsed.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
