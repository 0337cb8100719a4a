{{if .Schema}}CREATE DATABASE IF NOT EXISTS {{.QSchema}};
{{end}}CREATE TABLE IF NOT EXISTS {{table "migration"}} (
    version    BIGINT PRIMARY KEY,
    name       VARCHAR(255) NOT NULL,
    -- UTC whatever the session time zone, as the driver reads DATETIME (loc=UTC).
    applied_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))
) ENGINE = InnoDB;
