-- Who may do what: tenants (a name and the topics they may read), API tokens
-- (stored hashed; tenant_id NULL means an admin token), and which tenant owns
-- each subscription and plugin.

CREATE TABLE tenants (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    topics           TEXT NOT NULL,          -- JSON array of exact names or prefixes ending in *
    mandatory_policy TEXT,                   -- JSON plugin attachment applied to all its subscriptions
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE INDEX tenants_created_at ON tenants (created_at, id);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    prefix     TEXT NOT NULL UNIQUE,         -- the public part of the token, for lookup
    hash       TEXT NOT NULL,                -- lowercase hex sha256 of the whole token
    tenant_id  TEXT,                         -- NULL: an admin token
    label      TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    expires_at BIGINT,                       -- NULL: never
    revoked_at BIGINT                        -- NULL: valid
);

CREATE INDEX tokens_created_at ON tokens (created_at, id);

ALTER TABLE subscriptions ADD COLUMN tenant_id TEXT;
CREATE INDEX subscriptions_by_tenant ON subscriptions (tenant_id, created_at, id);

-- Plugin names are per owner: '' is the shared (admin) namespace, else a tenant id.
CREATE TABLE plugins_owned (
    owner            TEXT NOT NULL DEFAULT '',
    name             TEXT NOT NULL,
    version          TEXT NOT NULL,
    role             TEXT NOT NULL,
    sha256           TEXT NOT NULL,
    size             BIGINT NOT NULL,
    wasm             BLOB NOT NULL,
    created_at       BIGINT NOT NULL,
    memory_bytes     BIGINT,
    cpu_deadline_ms  BIGINT,
    wall_deadline_ms BIGINT,
    PRIMARY KEY (owner, name, version)
);

INSERT INTO plugins_owned (owner, name, version, role, sha256, size, wasm, created_at,
                           memory_bytes, cpu_deadline_ms, wall_deadline_ms)
SELECT '', name, version, role, sha256, size, wasm, created_at,
       memory_bytes, cpu_deadline_ms, wall_deadline_ms FROM plugins;

DROP TABLE plugins;
ALTER TABLE plugins_owned RENAME TO plugins;
