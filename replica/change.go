package replica

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/accordgo/accord/internal/sqlstore"
	"github.com/accordgo/accord/outbox"
)

// Change is one change to apply to a replica.
type Change struct {
	// Key identifies the replicated entity (the outbox partition key).
	// Positions are kept per key. Required; at most KeyMaxLength
	// characters.
	Key string

	// Version is the aggregate version (ByVersion) or the producer's
	// sequence number for the key (BySequence), starting at 1. Required in
	// those modes; ByTimestamp stores it for inspection only.
	Version int64

	// Timestamp is when the change was made, at its origin. Required in
	// ByTimestamp mode, where it decides (at microsecond precision);
	// stored for inspection otherwise.
	Timestamp time.Time

	// Origin names the writer that made the change (for example the
	// producing service or region). ByTimestamp breaks timestamp ties on
	// it. Optional; must not contain the byte 0x1f.
	Origin string

	// Message is the message that carries the change. ByTimestamp breaks
	// (timestamp, origin) ties on its UUID; BySequence requires it, because
	// a change that arrives early is stored (payload and metadata) and
	// applied later from the stored copy.
	Message *message.Message
}

func (c Change) messageID() string {
	if c.Message == nil {
		return ""
	}
	return c.Message.UUID
}

// ChangeFromMessage builds a Change from a message published by the relay
// (or anything that sets the same metadata):
//
//   - Key from accord_key ([outbox.MetadataKey]); a message without it
//     returns an error wrapping [ErrMissingKey];
//   - Version from accord_version ([outbox.MetadataVersion]), an integer;
//   - Timestamp from accord_created_at ([outbox.MetadataCreatedAt]), RFC 3339.
//
// A missing version or timestamp is left zero, because not every mode needs
// both; applying the change then fails with [ErrMissingVersion] or
// [ErrMissingTimestamp], naming the message. A malformed value returns an
// error wrapping [ErrInvalidChange]. Origin is left empty: set it when the
// replica is ByTimestamp and several writers change the same keys.
func ChangeFromMessage(msg *message.Message) (Change, error) {
	if msg == nil {
		return Change{}, invalidChange("message is nil")
	}
	c := Change{Key: msg.Metadata.Get(outbox.MetadataKey), Message: msg}
	if c.Key == "" {
		return Change{}, fmt.Errorf("%w: message %s has no %s metadata", ErrMissingKey, msg.UUID, outbox.MetadataKey)
	}
	if v := msg.Metadata.Get(outbox.MetadataVersion); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return Change{}, invalidChange("message %s: metadata %s=%q is not a non-negative integer", msg.UUID, outbox.MetadataVersion, v)
		}
		c.Version = n
	}
	if v := msg.Metadata.Get(outbox.MetadataCreatedAt); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return Change{}, invalidChange("message %s: metadata %s=%q is not an RFC 3339 time", msg.UUID, outbox.MetadataCreatedAt, v)
		}
		c.Timestamp = t.UTC()
	}
	return c, nil
}

// describe names a change in error messages.
func (c Change) describe() string {
	if id := c.messageID(); id != "" {
		return fmt.Sprintf("change of key %q (message %s)", c.Key, id)
	}
	return fmt.Sprintf("change of key %q", c.Key)
}

// check validates c for mode before anything is written.
func (c Change) check(mode Mode) error {
	if c.Key == "" {
		if id := c.messageID(); id != "" {
			return fmt.Errorf("%w: message %s (set %s metadata or Change.Key)", ErrMissingKey, id, outbox.MetadataKey)
		}
		return ErrMissingKey
	}
	if n := utf8.RuneCountInString(c.Key); n > KeyMaxLength {
		return invalidChange("key of %d characters, over %d", n, KeyMaxLength)
	}
	if !storable(c.Key) {
		return invalidChange("key %q: must be valid UTF-8 without NUL bytes", c.Key)
	}
	if c.Version < 0 {
		return invalidChange("%s: version %d is negative", c.describe(), c.Version)
	}
	if strings.ContainsRune(c.Origin, originSep) || !storable(c.Origin) {
		return invalidChange("%s: origin %q must be valid UTF-8 without NUL or 0x1f bytes", c.describe(), c.Origin)
	}
	id := c.messageID()
	if strings.ContainsRune(id, originSep) || !storable(id) {
		return invalidChange("%s: message id must be valid UTF-8 without NUL or 0x1f bytes", c.describe())
	}
	if n := utf8.RuneCountInString(encodeOrigin(c.Origin, id)); n > OriginMaxLength {
		return invalidChange("%s: origin and message id take %d characters, over %d", c.describe(), n, OriginMaxLength)
	}
	switch mode {
	case ByVersion, BySequence:
		if c.Version == 0 {
			if c.Message != nil {
				return fmt.Errorf("%w: %s: the %s replica needs the message's %s metadata (the producer's outbox.Event.Version) or Change.Version",
					ErrMissingVersion, c.describe(), mode, outbox.MetadataVersion)
			}
			return fmt.Errorf("%w: %s: the %s replica needs Change.Version", ErrMissingVersion, c.describe(), mode)
		}
	case ByTimestamp:
		if c.Timestamp.IsZero() || c.Timestamp.UnixMicro() <= 0 {
			return fmt.Errorf("%w: %s: the timestamp replica needs Change.Timestamp after 1970 (the message's %s metadata)",
				ErrMissingTimestamp, c.describe(), outbox.MetadataCreatedAt)
		}
	}
	if mode == BySequence {
		if c.Message == nil {
			return invalidChange("%s: the sequence replica needs Change.Message, stored when the change arrives early", c.describe())
		}
		if n := utf8.RuneCountInString(id); n > MessageIDMaxLength {
			return invalidChange("%s: message id of %d characters, over %d", c.describe(), n, MessageIDMaxLength)
		}
	}
	return nil
}

// micros is the change's timestamp in Unix microseconds, 0 for none.
func (c Change) micros() int64 {
	if c.Timestamp.IsZero() {
		return 0
	}
	return c.Timestamp.UnixMicro()
}

// originSep separates the origin from the message id in the origin column,
// which holds both: ByTimestamp breaks ties on the message id.
const originSep = '\x1f'

func encodeOrigin(origin, messageID string) string {
	if messageID == "" {
		return origin
	}
	return origin + string(originSep) + messageID
}

func decodeOrigin(s string) (origin, messageID string) {
	origin, messageID, _ = strings.Cut(s, string(originSep))
	return origin, messageID
}

func microsTime(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}

// Metadata keys added to a parked change's stored metadata to keep the
// Change fields that a message does not carry. They are removed again when
// the change is applied.
const (
	parkedTimestampKey = "accord_replica_timestamp"
	parkedOriginKey    = "accord_replica_origin"
)

// parkedRow stores c (which has a Message) for replica_parked.
func (c Change) parkedRow(now time.Time) (sqlstore.ReplicaParkedRow, error) {
	md := make(map[string]string, len(c.Message.Metadata)+2)
	for k, v := range c.Message.Metadata {
		if !storable(k) || !storable(v) {
			return sqlstore.ReplicaParkedRow{}, invalidChange("%s: metadata %q must be valid UTF-8 without NUL bytes", c.describe(), k)
		}
		md[k] = v
	}
	if !c.Timestamp.IsZero() {
		md[parkedTimestampKey] = c.Timestamp.UTC().Format(time.RFC3339Nano)
	}
	if c.Origin != "" {
		md[parkedOriginKey] = c.Origin
	}
	js, err := json.Marshal(md)
	if err != nil {
		return sqlstore.ReplicaParkedRow{}, invalidChange("%s: metadata: %v", c.describe(), err)
	}
	return sqlstore.ReplicaParkedRow{
		Version:   c.Version,
		MessageID: c.Message.UUID,
		Payload:   c.Message.Payload,
		Metadata:  js,
		ParkedAt:  now,
	}, nil
}

// changeFromParked rebuilds the Change stored by parkedRow.
func changeFromParked(key string, r sqlstore.ReplicaParkedRow) (Change, error) {
	var md map[string]string
	if err := json.Unmarshal(r.Metadata, &md); err != nil {
		return Change{}, fmt.Errorf("parked change %d of key %q: metadata: %w", r.Version, key, err)
	}
	c := Change{Key: key, Version: r.Version, Origin: md[parkedOriginKey]}
	if ts := md[parkedTimestampKey]; ts != "" {
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			return Change{}, fmt.Errorf("parked change %d of key %q: timestamp %q: %w", r.Version, key, ts, err)
		}
		c.Timestamp = t
	}
	delete(md, parkedOriginKey)
	delete(md, parkedTimestampKey)
	msg := message.NewMessage(r.MessageID, r.Payload)
	for k, v := range md {
		msg.Metadata.Set(k, v)
	}
	c.Message = msg
	return c, nil
}
