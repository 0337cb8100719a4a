ALTER TABLE {{table "outbox"}} DROP COLUMN inserted_at;
