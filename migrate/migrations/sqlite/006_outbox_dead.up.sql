-- Dead letters of the relay (see the PostgreSQL migration for the model).
CREATE TABLE {{table "outbox_dead"}} (
    seq               INTEGER PRIMARY KEY,
    id                TEXT NOT NULL,
    topic             TEXT NOT NULL,
    partition_key     TEXT NOT NULL DEFAULT '',
    shard             INTEGER NOT NULL,
    aggregate_version INTEGER,
    payload           BLOB NOT NULL,
    metadata          TEXT NOT NULL DEFAULT '{}',
    created_at        INTEGER NOT NULL, -- Unix microseconds, UTC
    attempts          INTEGER NOT NULL,
    last_error        TEXT NOT NULL DEFAULT '',
    parked            INTEGER NOT NULL,
    dead_at           INTEGER NOT NULL
);
CREATE INDEX {{ident "outbox_dead_key"}} ON {{table "outbox_dead"}} (partition_key) WHERE parked = 1;
