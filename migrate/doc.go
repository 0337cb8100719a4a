// Package migrate owns Accord's database schema: versioned, numbered up and
// down migrations for each dialect, embedded in the binary.
//
// The model follows river's rivermigrate: migration 001 creates the version
// table itself; every later migration runs in its own transaction together
// with the row that records it, so a failed migration leaves no half-applied
// state (on PostgreSQL and SQLite, where DDL is transactional). Concurrent
// migrators on PostgreSQL are serialized by an advisory lock.
//
// Tables are named TablePrefix + name ("accord_outbox") inside Schema
// (PostgreSQL only). Both come from configuration, so they are validated as
// plain lowercase identifiers at construction and quoted in every statement;
// no SQL is ever built from an unvalidated string.
//
// Teams with their own migration runner (goose, atlas, golang-migrate) print
// the SQL with [Migrator.SQL] or `accord migrate sql` and apply it themselves.
// Accord never runs DDL outside these migrations.
package migrate
