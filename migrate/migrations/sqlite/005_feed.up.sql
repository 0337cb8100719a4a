CREATE TABLE {{table "feed"}} (
    position   INTEGER PRIMARY KEY,
    id         TEXT NOT NULL,
    topic      TEXT NOT NULL,
    partition_key TEXT NOT NULL DEFAULT '',
    version    INTEGER,
    payload    BLOB NOT NULL,
    metadata   TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL
);
CREATE INDEX {{ident "feed_created_at"}} ON {{table "feed"}} (created_at);

CREATE TABLE {{table "feed_cursor"}} (
    consumer   TEXT NOT NULL,
    feed       TEXT NOT NULL,
    cursor_value TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, feed)
);
