-- When each outbox row was inserted, on the database's clock (UTC). InnoDB
-- can release a committing transaction's locks a moment before its commit is
-- visible to other reads, so a writer serialized behind it (by a row lock on
-- the aggregate) may commit a later event of the same key that the relay sees
-- first. The relay publishes a row only once it was inserted at least
-- relay.Config.VisibilityDelay ago (50 ms by default), by when every commit
-- that released its locks before the insert is visible.
ALTER TABLE {{table "outbox"}}
    ADD COLUMN inserted_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6));
