package reconcile

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/accordgo/accord/outbox"
)

// Metadata keys on the events a repair re-emits.
const (
	// MetadataSnapshot is "true" on every repair event: consumers apply it
	// as a snapshot (replace the state, accept its version even when the
	// replica is ahead).
	MetadataSnapshot = "accord_snapshot"
	// MetadataTombstone is "true" when the key no longer exists at the
	// source: consumers delete their copy.
	MetadataTombstone = "accord_tombstone"
)

// LoadFunc loads the current state of key inside tx and returns it as an
// event payload with its version; found is false when the key no longer
// exists.
type LoadFunc func(ctx context.Context, tx *sql.Tx, key string) (payload []byte, version int64, found bool, err error)

// SnapshotEmitter re-emits snapshots of drifted keys through the producer's
// outbox, so the repair travels the normal delivery path (relay, broker or
// feed, consumer inbox, versioned replica).
type SnapshotEmitter struct {
	// DB is the producer's database. Required.
	DB *sql.DB
	// Outbox writes the snapshot events. Required.
	Outbox *outbox.Outbox
	// Topic the snapshots are published to. Required.
	Topic string
	// Load reads one key's current state. Required.
	Load LoadFunc
}

// snapshotChunk bounds the keys written per transaction.
const snapshotChunk = 500

// Repair is a RepairFunc: it writes one snapshot event per key, Key = key
// and Version = its current version, in transactions of up to 500 keys. A
// key that no longer exists at the source gets a tombstone event (empty
// payload, MetadataTombstone "true"), so replicas drop what the source does
// not have.
func (e *SnapshotEmitter) Repair(ctx context.Context, keys []string) error {
	if e.DB == nil || e.Outbox == nil || e.Topic == "" || e.Load == nil {
		return errors.New("accord reconcile: SnapshotEmitter needs DB, Outbox, Topic and Load")
	}
	for start := 0; start < len(keys); start += snapshotChunk {
		chunk := keys[start:min(start+snapshotChunk, len(keys))]
		if err := e.emit(ctx, chunk); err != nil {
			return err
		}
	}
	return nil
}

func (e *SnapshotEmitter) emit(ctx context.Context, keys []string) (err error) {
	tx, err := e.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	events := make([]outbox.Event, 0, len(keys))
	for _, k := range keys {
		payload, version, found, err := e.Load(ctx, tx, k)
		if err != nil {
			return fmt.Errorf("load %q: %w", k, err)
		}
		msg := outbox.NewMessage(payload)
		msg.Metadata.Set(MetadataSnapshot, "true")
		if !found {
			msg.Payload = nil
			msg.Metadata.Set(MetadataTombstone, "true")
		}
		events = append(events, outbox.Event{Topic: e.Topic, Key: k, Version: version, Message: msg})
	}
	if err := e.Outbox.WriteTx(ctx, tx, events...); err != nil {
		return err
	}
	return tx.Commit()
}
