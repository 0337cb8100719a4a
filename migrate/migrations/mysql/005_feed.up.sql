CREATE TABLE {{table "feed"}} (
    position   BIGINT NOT NULL PRIMARY KEY,
    id         VARCHAR(255) NOT NULL,
    topic      VARCHAR(1024) NOT NULL,
    partition_key VARCHAR(1024) NOT NULL DEFAULT '',
    version    BIGINT NULL,
    payload    LONGBLOB NOT NULL,
    metadata   LONGTEXT NOT NULL,
    created_at BIGINT NOT NULL,
    KEY {{ident "feed_created_at"}} (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE {{table "feed_cursor"}} (
    consumer   VARCHAR(255) NOT NULL,
    feed       VARCHAR(255) NOT NULL,
    cursor_value VARCHAR(255) NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, feed)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
