-- Other hosts learn of registry changes at once: every change a pipeline
-- depends on (a subscription created, deleted or given a new revision; the
-- admin switch) notifies the channel wasmhook_changes, which every host
-- LISTENs on. Health and counter updates do not touch the revision, so they
-- notify nobody.
CREATE OR REPLACE FUNCTION wasmhook_notify_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('wasmhook_changes', TG_TABLE_NAME);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER subscriptions_changed
    AFTER INSERT OR DELETE OR UPDATE OF revision ON subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION wasmhook_notify_change();

CREATE TRIGGER admin_state_changed
    AFTER INSERT OR UPDATE ON admin_state
    FOR EACH STATEMENT EXECUTE FUNCTION wasmhook_notify_change();
