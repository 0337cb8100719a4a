-- The change feed a producer exposes to pull consumers. Positions are
-- assigned by one writer at a time (under an advisory lock), so they grow in
-- commit order and a cursor never skips a row that commits late.
CREATE TABLE {{table "feed"}} (
    position   BIGINT PRIMARY KEY,
    id         TEXT NOT NULL,
    topic      TEXT NOT NULL,
    partition_key TEXT NOT NULL DEFAULT '',
    version    BIGINT,
    payload    BYTEA NOT NULL,
    metadata   JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX {{ident "feed_created_at"}} ON {{table "feed"}} (created_at);

-- A pull consumer's cursor, stored with the changes it applied.
CREATE TABLE {{table "feed_cursor"}} (
    consumer   TEXT NOT NULL,
    feed       TEXT NOT NULL,
    cursor_value TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, feed)
);
