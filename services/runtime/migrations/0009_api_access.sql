-- The authenticated API: every request leaves an audit row (who, roles, tenant, what, outcome,
-- request id), and the audit log is append-only for everyone: the services' role may only
-- insert and read it, and a trigger refuses UPDATE, DELETE and TRUNCATE even to its owner.

ALTER TABLE audit_log ADD COLUMN outcome INTEGER;
ALTER TABLE audit_log ADD COLUMN request_id TEXT;
ALTER TABLE audit_log ADD COLUMN roles TEXT;
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, id DESC);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM gmmas_service;

-- Tenants are created by an administrator (an upload no longer creates one).
ALTER TABLE tenants ADD COLUMN created_by TEXT;
