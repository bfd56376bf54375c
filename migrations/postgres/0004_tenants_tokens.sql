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
ALTER TABLE plugins ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE plugins DROP CONSTRAINT plugins_pkey;
ALTER TABLE plugins ADD PRIMARY KEY (owner, name, version);
