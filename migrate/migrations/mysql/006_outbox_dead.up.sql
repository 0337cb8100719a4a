-- Dead letters of the relay (see the PostgreSQL migration for the model).
CREATE TABLE {{table "outbox_dead"}} (
    seq               BIGINT NOT NULL PRIMARY KEY,
    id                CHAR(36) NOT NULL,
    topic             VARCHAR(1024) NOT NULL,
    partition_key     VARCHAR(1024) NOT NULL DEFAULT '',
    shard             INT NOT NULL,
    aggregate_version BIGINT NULL,
    payload           LONGBLOB NOT NULL,
    metadata          LONGTEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    attempts          INT NOT NULL,
    last_error        TEXT NOT NULL,
    parked            BOOLEAN NOT NULL,
    dead_at           BIGINT NOT NULL,
    KEY {{ident "outbox_dead_key"}} (partition_key(255), parked)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
