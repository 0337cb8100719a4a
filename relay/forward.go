package relay

import (
	"time"

	"github.com/accordgo/accord/internal/sqlstore"
)

// holeTimeout is how long the reader keeps re-reading from a hole (a
// sequence number below rows it has read that it never saw) before it gives
// the hole up as a rolled-back transaction. A hole only costs re-reads of
// the rows in flight above it; it never holds delivery back.
const holeTimeout = time.Minute

// forward tracks how far the reader may read forward from where it is.
//
// Sequence numbers are taken at insert, so a transaction can commit after
// rows with larger numbers were read. If the reader then read on from the
// largest number it saw, the late row would only be found by the next sweep,
// after a later row of the same key that its writer committed afterwards:
// order per key would break. So forward reads start at the floor, the lowest
// number the reader has not seen, and the rows between the floor and the
// largest number seen (rows in flight, skipped) are read again until the
// hole fills or holeTimeout passes. Without holes, a forward read starts
// right after the largest number seen.
//
// Reads return the rows of parked keys as thin rows (numbers only), so that
// they are not taken for holes. The floor is only kept while the relay
// holds every lease slot: a number missing from a read of some slots may be
// a row another instance deleted as well as a hole, so then every read is a
// sweep from the start of the table.
type forward struct {
	floor   int64 // every row below floor was read or given up; 0: not known yet
	maxSeen int64
	seen    map[int64]struct{} // numbers >= floor that a read returned
	gapAt   int64              // the floor when it stopped at a hole
	since   time.Time          // when it stopped there
}

func (f *forward) reset() { *f = forward{} }

// ready reports whether the floor is known (after a sweep).
func (f *forward) ready() bool { return f.floor > 0 }

// holes reports whether the floor is below rows already seen.
func (f *forward) holes() bool { return f.floor > 0 && f.floor <= f.maxSeen }

// observe records the rows a read of every slot returned, in sequence
// order, and moves the floor up.
func (f *forward) observe(rows []sqlstore.Row, now time.Time) {
	if len(rows) == 0 {
		return
	}
	if f.seen == nil {
		f.seen = map[int64]struct{}{}
	}
	if f.floor == 0 {
		// The first read is a sweep: its first row is the lowest one the
		// table shows.
		f.floor = rows[0].Seq
	}
	for _, row := range rows {
		if row.Seq >= f.floor {
			f.seen[row.Seq] = struct{}{}
			f.maxSeen = max(f.maxSeen, row.Seq)
		}
	}
	f.advance(now)
}

func (f *forward) advance(now time.Time) {
	for {
		for f.floor <= f.maxSeen {
			if _, ok := f.seen[f.floor]; !ok {
				break
			}
			delete(f.seen, f.floor)
			f.floor++
		}
		if f.floor > f.maxSeen {
			f.gapAt = 0
			return
		}
		if f.gapAt != f.floor {
			f.gapAt, f.since = f.floor, now
			return
		}
		if now.Sub(f.since) < holeTimeout {
			return
		}
		// Given up: a rolled-back transaction, or one open so long that
		// the sweeps find its rows.
		next := f.maxSeen
		for s := range f.seen {
			next = min(next, s)
		}
		f.floor = next
	}
}
