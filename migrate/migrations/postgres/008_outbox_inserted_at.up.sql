-- Nothing to do here: this version adds the outbox's inserted_at column on
-- MySQL/MariaDB only (see mysql/008_outbox_inserted_at.up.sql). PostgreSQL
-- makes a commit visible before it releases its locks, and SQLite has one
-- writer at a time.
SELECT 1;
