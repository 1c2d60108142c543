#!/usr/bin/env bash
# pg-test.sh start|stop|dsn — a throwaway PostgreSQL for Cocoon's store tests (CI).
#
#   export COCOON_TEST_PG_DSN="$(scripts/pg-test.sh start)"
#   COCOON_REQUIRE_PG=1 go test ./internal/store/
#   scripts/pg-test.sh stop
#
# Installs Debian's postgresql package if missing, runs a cluster in
# $COCOON_PG_DIR (default /tmp/cocoon-pg) on 127.0.0.1:$COCOON_PG_PORT (default
# 55432) with trust auth and fsync off, as the postgres user when run as root.
# The DSN goes to stdout, everything else to stderr.
set -euo pipefail

dir="${COCOON_PG_DIR:-/tmp/cocoon-pg}"
port="${COCOON_PG_PORT:-55432}"
dsn="postgres://postgres@127.0.0.1:${port}/postgres?sslmode=disable"

pgbin() {
	local initdb
	initdb="$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1 || true)"
	if [[ -z "$initdb" ]]; then
		echo "pg-test: installing postgresql" >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2 ||
			{ apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2; }
		# The package starts a system cluster; the tests do not need it.
		if command -v pg_ctlcluster >/dev/null; then
			for c in /etc/postgresql/*/main; do
				[[ -d "$c" ]] && pg_ctlcluster "$(basename "$(dirname "$c")")" main stop >&2 || true
			done
		fi
		initdb="$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n1)"
	fi
	dirname "$initdb"
}

# as_pg runs a command as the postgres user if we are root (initdb refuses root).
as_pg() {
	if [[ "$(id -u)" == 0 ]]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

start() {
	local bin
	bin="$(pgbin)"
	if [[ -f "$dir/data/postmaster.pid" ]] && as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
		echo "pg-test: already running in $dir" >&2
		echo "$dsn"
		return
	fi
	rm -rf "$dir"
	mkdir -p "$dir/sock"
	chmod 0777 "$dir/sock"
	[[ "$(id -u)" == 0 ]] && chown -R postgres: "$dir"
	as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >&2
	if ! as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
		-o "-F -k $dir/sock -h 127.0.0.1 -p $port" start >&2; then
		cat "$dir/log" >&2
		exit 1
	fi
	echo "$dsn"
}

stop() {
	[[ -d "$dir/data" ]] || { echo "pg-test: nothing in $dir" >&2; return; }
	local bin
	bin="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n1)")"
	as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
	rm -rf "$dir"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
dsn) echo "$dsn" ;;
*)
	echo "usage: $0 start|stop|dsn" >&2
	exit 2
	;;
esac
