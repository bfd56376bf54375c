-- Secrets at rest: signing secrets and the secret values inside `spec`
-- (header values, secret plugin config) are stored sealed (`enc:v1:…`,
-- XChaCha20-Poly1305 under the platform's secret key); rows written before
-- are sealed at start-up. A rotated-out signing secret keeps signing, beside
-- the new one, until its overlap window ends (ms since the Unix epoch).

ALTER TABLE subscriptions ADD COLUMN previous_signing_secret TEXT;
ALTER TABLE subscriptions ADD COLUMN previous_secret_expires_at BIGINT;
