CREATE TABLE {{table "replica_position"}} (
    replica    VARCHAR(255) NOT NULL,
    entity_key VARCHAR(500) NOT NULL,
    version    BIGINT NOT NULL DEFAULT 0,
    ts_micros  BIGINT NOT NULL DEFAULT 0,
    origin     VARCHAR(255) NOT NULL DEFAULT '',
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (replica, entity_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE {{table "replica_parked"}} (
    replica    VARCHAR(255) NOT NULL,
    entity_key VARCHAR(500) NOT NULL,
    version    BIGINT NOT NULL,
    message_id VARCHAR(255) NOT NULL,
    payload    LONGBLOB NOT NULL,
    metadata   LONGTEXT NOT NULL,
    parked_at  BIGINT NOT NULL,
    PRIMARY KEY (replica, entity_key, version),
    KEY {{ident "replica_parked_at"}} (replica, parked_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
