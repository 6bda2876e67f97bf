-- Least privilege: the services run as members of the group role gmmas_service, which may read
-- and write rows but owns nothing and cannot create, alter or drop anything. Migrations run as
-- the role that owns the schema (the migrations role). A DBA may create gmmas_service beforehand;
-- otherwise the migrations role creates it here (that needs CREATEROLE once).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gmmas_service') THEN
        BEGIN
            CREATE ROLE gmmas_service NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- created at the same moment by a migration of another database
        END;
    END IF;
END
$$;

-- Nobody but the schema's owner creates objects in it (the default from PostgreSQL 15 on; on
-- older servers this needs the schema's owner and is skipped with a notice otherwise).
DO $$
BEGIN
    REVOKE CREATE ON SCHEMA public FROM PUBLIC;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'could not revoke CREATE on schema public from PUBLIC; do it as the schema owner';
END
$$;

GRANT USAGE ON SCHEMA public TO gmmas_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO gmmas_service;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO gmmas_service;
-- Tables and sequences of later migrations (created by the same migrations role) get the same.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO gmmas_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO gmmas_service;
-- The migration history stays readable (services check the schema version) but not writable.
REVOKE INSERT, UPDATE, DELETE ON _sqlx_migrations FROM gmmas_service;
