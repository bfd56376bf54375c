-- The subscription registry, its recent activity and the platform's admin switch.
-- Times are milliseconds since the Unix epoch (UTC), so both databases order them alike.

CREATE TABLE subscriptions (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    spec              TEXT NOT NULL,          -- the validated subscription, JSON, secrets in full
    signing_secret    TEXT NOT NULL,
    health            TEXT NOT NULL DEFAULT 'healthy',
    status_changed_at BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    revision          BIGINT NOT NULL DEFAULT 1,
    -- Messages that reached each final outcome, across all hosts.
    delivered_messages     BIGINT NOT NULL DEFAULT 0,
    filtered_messages      BIGINT NOT NULL DEFAULT 0,
    dead_lettered_messages BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX subscriptions_created_at ON subscriptions (created_at, id);

CREATE TABLE activity (
    id              BIGSERIAL PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    at              BIGINT NOT NULL,
    event           TEXT NOT NULL,           -- api_call | active | inactive
    detail          TEXT                     -- JSON, for api_call
);

CREATE INDEX activity_by_subscription ON activity (subscription_id, id);

CREATE TABLE admin_state (
    singleton       INTEGER PRIMARY KEY CHECK (singleton = 1),
    id              TEXT NOT NULL,
    status          TEXT NOT NULL,           -- online | offline
    offline_message TEXT NOT NULL DEFAULT '',
    updated_at      BIGINT NOT NULL
);

-- Batches whose retries were exhausted and that went to the dead-letter topic.
CREATE TABLE dead_letters (
    id              BIGSERIAL PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    at              BIGINT NOT NULL,
    delivery_id     TEXT NOT NULL,
    topic           TEXT NOT NULL,           -- the dead-letter topic
    messages        BIGINT NOT NULL,
    reason          TEXT NOT NULL
);

CREATE INDEX dead_letters_by_subscription ON dead_letters (subscription_id, id);
