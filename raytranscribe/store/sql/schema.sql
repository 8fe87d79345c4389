-- The schema's own bookkeeping: migrations run under Alembic, one upgrader at a time.

-- name: migration_lock
-- Held to the end of the upgrade's transaction: a second upgrader waits, then finds nothing to do.
SELECT pg_advisory_xact_lock(:k)

-- name: has_version_table
SELECT to_regclass('alembic_version') IS NOT NULL

-- name: version
SELECT version_num FROM alembic_version
