-- Per-key position of each replica: the newest version, sequence number or
-- timestamp applied, so a replica only moves forward.
CREATE TABLE {{table "replica_position"}} (
    replica    TEXT NOT NULL,
    entity_key TEXT NOT NULL,
    version    BIGINT NOT NULL DEFAULT 0,
    ts_micros  BIGINT NOT NULL DEFAULT 0,
    origin     TEXT NOT NULL DEFAULT '',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (replica, entity_key)
);

-- Out-of-order changes held back until the gap before them fills.
CREATE TABLE {{table "replica_parked"}} (
    replica   TEXT NOT NULL,
    entity_key TEXT NOT NULL,
    version   BIGINT NOT NULL,
    message_id TEXT NOT NULL,
    payload   BYTEA NOT NULL,
    metadata  JSONB NOT NULL DEFAULT '{}',
    parked_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (replica, entity_key, version)
);
CREATE INDEX {{ident "replica_parked_at"}} ON {{table "replica_parked"}} (replica, parked_at);
