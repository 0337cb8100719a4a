-- Dead letters of the relay: outbox rows that failed to publish too many
-- times, moved here with their last error. While a row of a key is here with
-- parked = true, the relay holds back the key's later rows, so per-key order
-- holds; requeue moves the row back with its original seq.
CREATE TABLE {{table "outbox_dead"}} (
    seq               BIGINT PRIMARY KEY,
    id                UUID NOT NULL,
    topic             TEXT NOT NULL,
    partition_key     TEXT NOT NULL DEFAULT '',
    shard             INTEGER NOT NULL,
    aggregate_version BIGINT,
    payload           BYTEA NOT NULL,
    metadata          JSONB NOT NULL DEFAULT '{}',
    created_at        TIMESTAMPTZ NOT NULL,
    attempts          INTEGER NOT NULL,
    last_error        TEXT NOT NULL DEFAULT '',
    parked            BOOLEAN NOT NULL,
    dead_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX {{ident "outbox_dead_key"}} ON {{table "outbox_dead"}} (partition_key) WHERE parked;
