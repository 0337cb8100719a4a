-- The inbox: one row per (consumer, message id) a consumer has applied,
-- written in the same transaction as the consumer's own changes.
CREATE TABLE {{table "inbox"}} (
    consumer    TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    received_at INTEGER NOT NULL, -- Unix microseconds, UTC
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX {{ident "inbox_received_at"}} ON {{table "inbox"}} (received_at);

CREATE TABLE {{table "inbox_attempt"}} (
    consumer   TEXT NOT NULL,
    message_id TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE {{table "dead_letter"}} (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer   TEXT NOT NULL,
    message_id TEXT NOT NULL,
    topic      TEXT NOT NULL DEFAULT '',
    payload    BLOB NOT NULL,
    metadata   TEXT NOT NULL DEFAULT '{}',
    reason     TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX {{ident "dead_letter_consumer"}} ON {{table "dead_letter"}} (consumer, seq);
