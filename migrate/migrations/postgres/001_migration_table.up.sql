{{if .Schema}}CREATE SCHEMA IF NOT EXISTS {{.QSchema}};
{{end}}CREATE TABLE IF NOT EXISTS {{table "migration"}} (
    version    BIGINT PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
