-- Event retention: the log stays append-only, except that the oldest
-- events past a deployment's retention are removed, after they have been
-- archived, by the controller's retention step alone. That step sets
-- 'prunable_through' to the newest id it removes, deletes, and sets it back
-- to 0, all in one transaction; any other DELETE is refused as before.
INSERT INTO meta (key, value) VALUES ('prunable_through', 0);

DROP TRIGGER events_are_append_only_delete;
CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
WHEN OLD.id > (SELECT value FROM meta WHERE key = 'prunable_through')
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
