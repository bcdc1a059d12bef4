-- coalmine controller schema.

-- Global counters (the split table epoch).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('epoch', 0);

-- One row per deployment: the engine's state as JSON (policy, baseline,
-- canary, pinned, cooldown, health mark).
CREATE TABLE deployments (
    name       TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The version registry.
CREATE TABLE versions (
    deployment    TEXT NOT NULL REFERENCES deployments (name),
    version       TEXT NOT NULL,
    cluster       TEXT NOT NULL,
    state         TEXT NOT NULL,
    healthy       INTEGER NOT NULL,
    pinned        INTEGER NOT NULL,
    metadata      TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    PRIMARY KEY (deployment, version)
);

-- The timeline: append-only. The database itself refuses to change history.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment TEXT NOT NULL,
    at         INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    numbers    TEXT NOT NULL
);
CREATE INDEX events_by_deployment ON events (deployment, id);

CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
