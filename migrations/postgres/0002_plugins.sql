-- WebAssembly plugins, uploaded through POST /1/Plugin, and the count of
-- messages a policy plugin denied (a final outcome, like filtered).

CREATE TABLE plugins (
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    role       TEXT NOT NULL,            -- filter | serialiser | policy
    sha256     TEXT NOT NULL,            -- lowercase hex of wasm
    size       BIGINT NOT NULL,          -- bytes of wasm
    wasm       BYTEA NOT NULL,           -- the component as uploaded
    created_at BIGINT NOT NULL,          -- ms since the Unix epoch
    PRIMARY KEY (name, version)
);

ALTER TABLE subscriptions ADD COLUMN denied_messages BIGINT NOT NULL DEFAULT 0;
