-- Where each webhook receiver is in the timeline: the id of the last
-- notified event it acknowledged with a 2xx. Delivery resumes after it on
-- restart. Keyed by the SHA-256 (hex) of the receiver's URL, never the URL:
-- webhook URLs often carry a secret.
CREATE TABLE webhook_cursors (
    receiver      TEXT PRIMARY KEY CHECK (length(receiver) = 64),
    last_event_id INTEGER NOT NULL
);
