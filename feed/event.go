package feed

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"
)

// Event is one event of a feed.
//
// Events read from a feed ([Source.Read], [Client.Read], a [Puller]'s
// handler) have every field set. Events appended with [Source.AppendTx]
// need ID (a new UUIDv7 when empty) and Topic; Position and CreatedAt are
// assigned by the feed and ignored on input.
type Event struct {
	// Position is the event's place in the feed: 1, 2, 3, ... in commit
	// order, without gaps.
	Position int64 `json:"position"`
	// ID is the event's unique id (the watermill message UUID when the
	// event came through the relay). A feed stores an id once: appending an
	// id that is already in the feed's recent window is a no-op.
	ID string `json:"id"`
	// Topic is the event's topic, as in the outbox.
	Topic string `json:"topic"`
	// Key is the partition key (outbox.MetadataKey); events of one key
	// are in the feed in the order the relay published them.
	Key string `json:"key"`
	// Version is the aggregate version (outbox.MetadataVersion); 0 means
	// none.
	Version int64 `json:"version"`
	// Payload is the event's body (base64 in JSON).
	Payload []byte `json:"payload"`
	// Metadata is the watermill message's metadata, including the accord_*
	// keys the relay sets (outbox.MetadataCreatedAt holds the time the event
	// was written to the outbox).
	Metadata map[string]string `json:"metadata"`
	// CreatedAt is the time the event was appended to the feed. Retention
	// (Source.Prune) is based on it.
	CreatedAt time.Time `json:"created_at"`
}

// Page is the result of one read of a feed.
type Page struct {
	// Events are the events after the cursor, in position order (empty, not
	// nil, when there are none).
	Events []Event `json:"events"`
	// Next is the cursor to read the following page with. With no events it
	// is the cursor that was read (normalised: an empty cursor becomes the
	// cursor of the feed's start).
	Next string `json:"next"`
	// More reports that more events were available than the page holds:
	// read again right away.
	More bool `json:"more"`
}

// cursorVersion prefixes every cursor; a new encoding gets a new prefix.
const cursorVersion = "v1"

// feedTag is the identity of a feed in its cursors.
func feedTag(name string) string {
	h := fnv.New32a()
	h.Write([]byte(name))
	return strconv.FormatUint(uint64(h.Sum32()), 36)
}

// encodeCursor returns the cursor after position pos of the feed tagged tag.
func encodeCursor(tag string, pos int64) string {
	return cursorVersion + "." + tag + "." + strconv.FormatInt(pos, 36)
}

// decodeCursor parses a cursor. It checks the syntax and the feed identity,
// not the position against the feed.
func decodeCursor(tag, cursor string) (int64, error) {
	parts := strings.Split(cursor, ".")
	if len(parts) != 3 || parts[0] != cursorVersion || parts[1] == "" || parts[2] == "" || len(cursor) > 64 {
		return 0, fmt.Errorf("%w: %q", ErrMalformedCursor, truncate(cursor, 80))
	}
	for _, c := range parts[1] + parts[2] {
		if (c < '0' || c > '9') && (c < 'a' || c > 'z') {
			return 0, fmt.Errorf("%w: %q", ErrMalformedCursor, truncate(cursor, 80))
		}
	}
	pos, err := strconv.ParseInt(parts[2], 36, 64)
	if err != nil || pos < 0 {
		return 0, fmt.Errorf("%w: %q", ErrMalformedCursor, truncate(cursor, 80))
	}
	if parts[1] != tag {
		return 0, fmt.Errorf("%w: cursor %q was issued by another feed", ErrCursorFromFuture, cursor)
	}
	return pos, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
