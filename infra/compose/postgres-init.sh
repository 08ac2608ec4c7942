#!/bin/sh
# First start of the PostgreSQL container: Prefect's own database and the dashboard's
# read-only role (it may read every table the migrations create, now and later).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE DATABASE prefect OWNER $POSTGRES_USER;
CREATE ROLE optengine_dashboard LOGIN PASSWORD '$DASHBOARD_DB_PASSWORD';
GRANT CONNECT ON DATABASE $POSTGRES_DB TO optengine_dashboard;
GRANT USAGE ON SCHEMA public TO optengine_dashboard;
ALTER DEFAULT PRIVILEGES FOR ROLE $POSTGRES_USER IN SCHEMA public
    GRANT SELECT ON TABLES TO optengine_dashboard;
ALTER ROLE optengine_dashboard SET default_transaction_read_only = on;
SQL
