-- coalmine controller schema on PostgreSQL: the same tables as on SQLite,
-- plus the leader's lease. Several controllers may share this database;
-- only the one holding the lease writes (store/postgres.rs).

-- Counters: the split table epoch, the last event id given out, and the
-- newest event id retention may remove (0: none).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('epoch', 0), ('event_id', 0), ('prunable_through', 0);

-- The leader's lease, on the database's clock. `term` grows by one with
-- every change of holder: every write checks it (fencing).
CREATE TABLE leader (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    url        TEXT NOT NULL,
    term       BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO leader (id, holder, url, term, expires_at) VALUES (1, '', '', 0, '-infinity');

-- One row per deployment: the engine's state as JSON.
CREATE TABLE deployments (
    name       TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The version registry.
CREATE TABLE versions (
    deployment    TEXT NOT NULL REFERENCES deployments (name),
    version       TEXT NOT NULL,
    cluster       TEXT NOT NULL,
    state         TEXT NOT NULL,
    healthy       BOOLEAN NOT NULL,
    pinned        BOOLEAN NOT NULL,
    metadata      TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    PRIMARY KEY (deployment, version)
);

-- The timeline. Ids come from meta 'event_id' in the writing transaction
-- (not a sequence, which leaves gaps on rollback): contiguous.
CREATE TABLE events (
    id         BIGINT PRIMARY KEY,
    deployment TEXT NOT NULL,
    at         BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    numbers    TEXT NOT NULL
);
CREATE INDEX events_by_deployment ON events (deployment, id);

-- Append-only, enforced by the database: no UPDATE, no TRUNCATE, and a
-- DELETE only of events retention marked (it sets 'prunable_through',
-- deletes, and sets it back to 0 in one transaction).
CREATE FUNCTION coalmine_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.id <= (SELECT value FROM meta WHERE key = 'prunable_through') THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'events are append-only';
END
$$;
CREATE TRIGGER events_are_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION coalmine_events_append_only();
CREATE TRIGGER events_are_never_truncated BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION coalmine_events_append_only();

-- Where each webhook receiver is in the timeline (SHA-256 of its URL).
CREATE TABLE webhook_cursors (
    receiver      TEXT PRIMARY KEY CHECK (length(receiver) = 64),
    last_event_id BIGINT NOT NULL
);
