CREATE TABLE {{table "replica_position"}} (
    replica    TEXT NOT NULL,
    entity_key TEXT NOT NULL,
    version    INTEGER NOT NULL DEFAULT 0,
    ts_micros  INTEGER NOT NULL DEFAULT 0,
    origin     TEXT NOT NULL DEFAULT '',
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (replica, entity_key)
);

CREATE TABLE {{table "replica_parked"}} (
    replica    TEXT NOT NULL,
    entity_key TEXT NOT NULL,
    version    INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    payload    BLOB NOT NULL,
    metadata   TEXT NOT NULL DEFAULT '{}',
    parked_at  INTEGER NOT NULL,
    PRIMARY KEY (replica, entity_key, version)
);
CREATE INDEX {{ident "replica_parked_at"}} ON {{table "replica_parked"}} (replica, parked_at);
