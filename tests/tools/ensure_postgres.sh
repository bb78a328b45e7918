#!/bin/sh
# Make sure a PostgreSQL server (initdb, pg_ctl, postgres) is installed, for tests/test_gateway_store*.py:
# they start a throwaway cluster of their own (tests/postgres_server.py), never a system service.
# Idempotent: does nothing when the binaries are found on PATH, under `pg_config --bindir` or under
# /usr/lib/postgresql/*/bin. Otherwise installs Debian's `postgresql` package, which needs root and the
# Debian archive. Services are not started: images and CI runners deny it via policy-rc.d, and we never
# enable it.
set -eu
found() {
    command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1 && return 0
    if command -v pg_config >/dev/null 2>&1; then
        bindir=$(pg_config --bindir)
        [ -x "$bindir/initdb" ] && [ -x "$bindir/pg_ctl" ] && return 0
    fi
    for bindir in /usr/lib/postgresql/*/bin; do
        [ -x "$bindir/initdb" ] && [ -x "$bindir/pg_ctl" ] && return 0
    done
    return 1
}
if found; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_postgres: PostgreSQL's initdb/pg_ctl are missing and installing them needs root (apt-get install postgresql)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
found
