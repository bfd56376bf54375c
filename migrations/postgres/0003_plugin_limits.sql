-- Limits a plugin asked for at upload (NULL: the host's default), and why a
-- subscription is unhealthy (the failure that turned it so, e.g. which
-- plugin keeps failing), shown by its status.

ALTER TABLE plugins ADD COLUMN memory_bytes BIGINT;
ALTER TABLE plugins ADD COLUMN cpu_deadline_ms BIGINT;
ALTER TABLE plugins ADD COLUMN wall_deadline_ms BIGINT;

ALTER TABLE subscriptions ADD COLUMN status_reason TEXT;
