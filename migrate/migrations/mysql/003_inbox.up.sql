-- The inbox: one row per (consumer, message id) a consumer has applied,
-- written in the same transaction as the consumer's own changes.
CREATE TABLE {{table "inbox"}} (
    consumer    VARCHAR(255) NOT NULL,
    message_id  VARCHAR(255) NOT NULL,
    received_at BIGINT NOT NULL, -- Unix microseconds, UTC
    PRIMARY KEY (consumer, message_id),
    KEY {{ident "inbox_received_at"}} (received_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE {{table "inbox_attempt"}} (
    consumer   VARCHAR(255) NOT NULL,
    message_id VARCHAR(255) NOT NULL,
    attempts   INT NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE {{table "dead_letter"}} (
    seq        BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    consumer   VARCHAR(255) NOT NULL,
    message_id VARCHAR(255) NOT NULL,
    topic      VARCHAR(1024) NOT NULL DEFAULT '',
    payload    LONGBLOB NOT NULL,
    metadata   LONGTEXT NOT NULL,
    reason     TEXT NOT NULL,
    attempts   INT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    KEY {{ident "dead_letter_consumer"}} (consumer, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
