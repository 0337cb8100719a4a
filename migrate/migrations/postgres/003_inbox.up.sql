-- The inbox: one row per (consumer, message id) a consumer has applied,
-- written in the same transaction as the consumer's own changes, so a
-- redelivered message is recognised and acknowledged without effect.
CREATE TABLE {{table "inbox"}} (
    consumer    TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX {{ident "inbox_received_at"}} ON {{table "inbox"}} (received_at);

-- Failed attempts of messages not applied yet (kept outside the handler's
-- transaction, which rolls back on failure).
CREATE TABLE {{table "inbox_attempt"}} (
    consumer   TEXT NOT NULL,
    message_id TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

-- Dead letters: messages a consumer parked with the reason, for an operator
-- to inspect, requeue or drop.
CREATE TABLE {{table "dead_letter"}} (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer   TEXT NOT NULL,
    message_id TEXT NOT NULL,
    topic      TEXT NOT NULL DEFAULT '',
    payload    BYTEA NOT NULL,
    metadata   JSONB NOT NULL DEFAULT '{}',
    reason     TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX {{ident "dead_letter_consumer"}} ON {{table "dead_letter"}} (consumer, seq);
