package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable writes res as a human-readable table.
func (res *Result) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(name, format string, args ...any) {
		fmt.Fprintf(tw, "%s\t%s\n", name, fmt.Sprintf(format, args...))
	}
	fmt.Fprintf(tw, "Accord relay benchmark: PostgreSQL %s, %s, %d CPUs, destination %s, %s (%d lanes, batch %d)\n\n",
		res.PostgresVersion, res.GoVersion, res.CPUs, res.Destination, plural(res.Relays, "relay"), res.Lanes, res.BatchSize)
	row("Figure", "Value")
	row("------", "-----")
	if res.PublishLatencyMS > 0 {
		row("injected publish latency", "%.3g ms per publish call (Accord and forwarder)", res.PublishLatencyMS)
	}
	row("Accord drain", "%s events/s (%d events in %.3f s)", thousands(res.DrainEventsPerSec), res.Backlog, res.DrainSeconds)
	if res.Destination != DestinationInProcess {
		if res.Relays > 1 {
			row("  relays held their lease shares after", "%.3f s (the drain rate counts from then)", res.DrainBalancedAfterSeconds)
		}
		row("  relays deleted every row after", "%.3f s (drain ends when that is done and every event was received)", res.DrainRelaySeconds)
	}
	if res.ForwarderEventsPerSec > 0 {
		row("watermill forwarder drain", "%s events/s (%d events in %.3f s)", thousands(res.ForwarderEventsPerSec), res.Events, res.ForwarderSeconds)
		row("ratio (Accord / forwarder)", "%.1f×", res.Ratio)
	} else {
		row("watermill forwarder drain", "skipped")
	}
	if res.LatencyEvents > 0 {
		row(fmt.Sprintf("latency p50 at %d/s", res.Rate), "%.2f ms", res.LatencyP50Ms)
		row(fmt.Sprintf("latency p99 at %d/s", res.Rate), "%.2f ms", res.LatencyP99Ms)
		row(fmt.Sprintf("latency max at %d/s", res.Rate), "%.2f ms", res.LatencyMaxMs)
		row("achieved write rate", "%.1f events/s (%d events, %d writes late)", res.AchievedRate, res.LatencyEvents, res.LateWrites)
		if res.OpenTransactionXID != "" {
			row("  while a transaction was open", "xid %s in another database (xmin held back: %v)", res.OpenTransactionXID, res.OpenTransactionHeldXmin)
		}
		row("  of which writer COMMIT p50 / p99", "%.2f ms / %.2f ms", res.CommitP50Ms, res.CommitP99Ms)
		row("  from COMMIT returning p50 / p99", "%.2f ms / %.2f ms", res.AfterCommitP50Ms, res.AfterCommitP99Ms)
	} else {
		row("latency", "skipped")
	}
	if res.IdleSeconds > 0 {
		row("idle relay CPU", "%.2f %% of one core (%s, %.1f s, whole process)", res.RelayCPUIdlePercent, plural(res.Relays, "relay"), res.IdleSeconds)
	} else {
		row("idle relay CPU", "skipped")
	}
	row("max RSS", "%.1f MiB", res.MaxRSSMiB)
	row("load average (1 min) start / end", "%.2f / %.2f", res.LoadAvgStart, res.LoadAvgEnd)
	row("Accord lost / duplicates / order", "%d / %d / %d", res.Lost, res.Duplicates, res.OrderViolations)
	if res.ForwarderLost != nil {
		row("forwarder lost / duplicates / order", "%d / %d / %d", *res.ForwarderLost, *res.ForwarderDuplicates, *res.ForwarderOrderViolations)
	}
	if res.Unexpected > 0 || res.ForwarderUnexpected > 0 {
		row("unexpected messages (Accord / forwarder)", "%d / %d", res.Unexpected, res.ForwarderUnexpected)
	}
	return tw.Flush()
}

// thousands formats v rounded to an integer with comma thousands
// separators.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
