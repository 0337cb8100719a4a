-- The outbox: one row per event, written in the producer's transaction and
-- deleted by the relay once the broker has accepted it. InnoDB keeps the
-- AUTO_INCREMENT counter across restarts (MySQL 8, MariaDB 10.2.4+), so seq
-- is never reused.
CREATE TABLE {{table "outbox"}} (
    seq               BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id                CHAR(36) NOT NULL,
    topic             VARCHAR(1024) NOT NULL,
    partition_key     VARCHAR(1024) NOT NULL DEFAULT '',
    shard             INT NOT NULL,
    aggregate_version BIGINT NULL,
    payload           LONGBLOB NOT NULL,
    metadata          LONGTEXT NOT NULL,
    created_at        BIGINT NOT NULL, -- Unix microseconds, UTC
    attempts          INT NOT NULL DEFAULT 0,
    last_error        TEXT NULL,
    CONSTRAINT {{ident "outbox_topic_length"}} CHECK (CHAR_LENGTH(topic) BETWEEN 1 AND 1024),
    CONSTRAINT {{ident "outbox_shard_range"}} CHECK (shard >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
