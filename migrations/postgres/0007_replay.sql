-- Replay (as in SQLite): a subscription's consumer group is `webhooks-{id}` at generation 0
-- and `webhooks-{id}.r{n}` after its n-th replay. A replay commits the
-- positions to deliver again from to the next generation's group (which no
-- member has joined yet, so any broker accepts the commit), then moves the
-- generation and the revision: every host restarts its pipeline in the new group.
ALTER TABLE subscriptions ADD COLUMN consumer_generation BIGINT NOT NULL DEFAULT 0;
