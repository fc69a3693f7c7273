#!/bin/sh
# The login roles the service runs as, made once when the database is first created (the
# postgres image runs this from /docker-entrypoint-initdb.d; run it by hand elsewhere, as the
# database's owner, with the same variables). Migrations run as the owner (POSTGRES_USER) and
# grant the two group roles what they need; every role but the owner is refused UPDATE and
# DELETE on audit rows by a trigger, whatever is granted.
#   audit_api    in audit_reader: SELECT (queries, exports, verification, key lookups)
#   audit_worker in audit_writer: SELECT and INSERT on audit rows and the ledger, partition upkeep
# Safe to run again: what exists is left as it is.
set -eu
: "${POSTGRES_USER:?}" "${POSTGRES_DB:?}"
: "${AUDIT_API_DB_PASSWORD:?set AUDIT_API_DB_PASSWORD}"
: "${AUDIT_WORKER_DB_PASSWORD:?set AUDIT_WORKER_DB_PASSWORD}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v api_password="$AUDIT_API_DB_PASSWORD" -v worker_password="$AUDIT_WORKER_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I NOLOGIN', name)
FROM unnest(ARRAY['audit_reader', 'audit_writer']) AS name
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name)
\gexec
SELECT format('CREATE ROLE audit_api LOGIN PASSWORD %L IN ROLE audit_reader', :'api_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_api')
\gexec
SELECT format('CREATE ROLE audit_worker LOGIN PASSWORD %L IN ROLE audit_writer', :'worker_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_worker')
\gexec
SQL
