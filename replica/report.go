package replica

import (
	"context"
	"log/slog"
)

type noticeKind int

const (
	kindApplied noticeKind = iota
	kindStale
	kindGap
	kindParked
	kindResync
)

type notice struct {
	kind noticeKind
	o    Observation
}

// notices collects what a transaction decided, to be logged and reported
// when the caller's contract says so.
type notices []notice

func (ns *notices) add(k noticeKind, o Observation) { *ns = append(*ns, notice{k, o}) }

// report logs ns and hands it to the Observer.
func (r *Replica) report(ctx context.Context, ns notices) {
	obs := r.cfg.Observer
	for _, n := range ns {
		o := n.o
		attrs := []any{"key", o.Key, "version", o.Version, "position", o.Position}
		if o.MessageID != "" {
			attrs = append(attrs, "message_id", o.MessageID)
		}
		switch n.kind {
		case kindApplied:
			if r.log.Enabled(ctx, slog.LevelDebug) {
				r.log.DebugContext(ctx, "change applied", append(attrs, "drained", o.Drained)...)
			}
			obs.Applied(ctx, o)
		case kindStale:
			if r.cfg.Mode == ByTimestamp && (o.Origin != o.PositionOrigin || !o.Timestamp.Equal(o.PositionTimestamp)) {
				r.log.InfoContext(ctx, "write lost to a newer one (last writer wins)", append(attrs,
					"timestamp", o.Timestamp, "origin", o.Origin,
					"winner_timestamp", o.PositionTimestamp, "winner_origin", o.PositionOrigin)...)
			} else if r.log.Enabled(ctx, slog.LevelDebug) {
				r.log.DebugContext(ctx, "stale change skipped", attrs...)
			}
			obs.Stale(ctx, o)
		case kindGap:
			switch o.Outcome {
			case Gap:
				r.log.WarnContext(ctx, "versions missing before change; applied it, the missing ones will be skipped", attrs...)
			case Rejected:
				r.log.WarnContext(ctx, "versions missing before change; rejected it until they arrive", attrs...)
			default:
				r.log.WarnContext(ctx, "gap did not fill within GapTimeout; resync needed", append(attrs,
					"parked", o.Parked, "since", o.Since)...)
			}
			obs.Gap(ctx, o)
		case kindParked:
			r.log.InfoContext(ctx, "change parked until the gap before it fills", attrs...)
			obs.Parked(ctx, o)
		case kindResync:
			r.log.WarnContext(ctx, "key resynchronized from a snapshot", append(attrs, "dropped", o.Dropped)...)
			obs.Resync(ctx, o)
		}
	}
}
