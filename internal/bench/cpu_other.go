//go:build !unix

package bench

import "time"

// processCPUTime is not implemented on this platform: the idle phase reports
// no figure.
func processCPUTime() (time.Duration, bool) { return 0, false }
