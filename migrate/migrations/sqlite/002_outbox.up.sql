-- The outbox: one row per event, written in the producer's transaction and
-- deleted by the relay once the broker has accepted it. AUTOINCREMENT keeps
-- seq from ever being reused after deletes.
CREATE TABLE {{table "outbox"}} (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL,
    topic             TEXT NOT NULL CHECK (length(topic) BETWEEN 1 AND 1024),
    partition_key     TEXT NOT NULL DEFAULT '',
    shard             INTEGER NOT NULL CHECK (shard >= 0),
    aggregate_version INTEGER,
    payload           BLOB NOT NULL,
    metadata          TEXT NOT NULL DEFAULT '{}',
    created_at        INTEGER NOT NULL, -- Unix microseconds, UTC
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT
);
