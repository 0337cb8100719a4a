-- The outbox: one row per event, written in the producer's transaction and
-- deleted by the relay once the broker has accepted it. seq orders the rows;
-- it is never reused, so the relay's in-memory cursor cannot skip a row.
CREATE TABLE {{table "outbox"}} (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                UUID NOT NULL,
    topic             TEXT NOT NULL CHECK (length(topic) BETWEEN 1 AND 1024),
    partition_key     TEXT NOT NULL DEFAULT '',
    shard             INTEGER NOT NULL CHECK (shard >= 0),
    aggregate_version BIGINT,
    payload           BYTEA NOT NULL,
    metadata          JSONB NOT NULL DEFAULT '{}',
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT
);

-- Wakes the relay when a transaction that wrote outbox rows commits
-- (NOTIFY is delivered at commit and folded to one per transaction).
-- PostgreSQL serializes the commits of notifying transactions (a global lock
-- taken at commit), so write-heavy producers can turn it off with the
-- setting accord.notify = 'off' (per database, role or session); the relay
-- then finds rows by polling.
CREATE FUNCTION {{func "outbox_notify"}}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('accord.notify', true), '') <> 'off' THEN
        PERFORM pg_notify('{{.Channel}}', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER {{ident "outbox_notify"}} AFTER INSERT ON {{table "outbox"}}
    FOR EACH STATEMENT EXECUTE FUNCTION {{func "outbox_notify"}}();
