#!/usr/bin/env bash
# cluster-test.sh — a real Cocoon fleet on one machine (issue 14), tested with
# the official e2b SDK (tests/e2e/cluster.test.mjs):
#   PostgreSQL (scripts/pg-test.sh, its own cluster), `cocoon api --fleet`,
#   two `cocoon proxy --fleet`, three `cocoon orchestrator` nodes (gVisor),
#   each with its own data dir, network prefix and pool, heartbeating to the
#   api. The nodes share the host's network namespace (see docs/fleet.md).
#   Beside it one `cocoon server` on the same base build, the single-node
#   figure the fleet's create p50 is compared with.
#
#   make build && scripts/cluster-test.sh        (or: make cluster-test)
#
# The base template is built once (cache hard-linked from
# $COCOON_TEST_DATA_DIR) in the first node's data dir; the other nodes name
# the same build (same inputs, same build ID) by its path. At the end every
# process is stopped and nothing may be left: no process naming a data dir,
# no network namespace or link of the nodes' prefixes, no sandbox dir.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin="${COCOON_BIN:-$root/bin/cocoon}"
base="${COCOON_TEST_DATA_DIR:-/var/lib/cocoon-test}"
d="$base/cluster"
export COCOON_PG_DIR="${COCOON_PG_DIR_CLUSTER:-/tmp/cocoon-pg-cluster}"
export COCOON_PG_PORT="${COCOON_PG_PORT_CLUSTER:-55434}"
api_port=3960
single_port=3966
proxy_ports=(3961 3962)
node_ids=(n1 n2 n3)

[[ -x "$bin" ]] || { echo "cluster-test: $bin is missing: run make build" >&2; exit 2; }
[[ -d tests/e2e/node_modules/e2b ]] || (cd tests/e2e && npm ci --no-audit --no-fund) || exit 2
log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

pids=()
pg_started=""
leftovers() {
	ps -eo pid=,args= | grep -F -- "$d/" | grep -v -e grep -e cluster-test.sh | sed 's/^/  process: /'
	for i in 1 2 3 4; do
		ip netns list 2>/dev/null | awk -v p="clu$i-" 'index($1, p) == 1 {print "  netns: " $1}'
		ip -o link show 2>/dev/null | awk -F': ' -v p="clu$i-" 'index($2, p) == 1 {print "  link: " $2}'
	done
	for n in "${node_ids[@]}" single; do
		[[ -d "$d/$n/sandboxes" ]] && find "$d/$n/sandboxes" -mindepth 1 -maxdepth 1 | sed 's/^/  sandbox dir: /'
	done
}
force_clean() {
	for pid in $(ps -eo pid=,args= | grep -F -- "$d/" | grep -v -e grep -e cluster-test.sh | awk '{print $1}'); do kill -9 "$pid" 2>/dev/null; done
	for i in 1 2 3 4; do
		for ns in $(ip netns list 2>/dev/null | awk -v p="clu$i-" 'index($1, p) == 1 {print $1}'); do ip netns del "$ns" 2>/dev/null; done
		for l in $(ip -o link show 2>/dev/null | awk -F': ' -v p="clu$i-" 'index($2, p) == 1 {sub(/@.*/, "", $2); print $2}'); do ip link del "$l" 2>/dev/null; done
	done
}
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
	for n in "${node_ids[@]}"; do [[ -f "$d/$n.pid" ]] && kill "$(cat "$d/$n.pid")" 2>/dev/null; done
	[[ -n "$pg_started" ]] && scripts/pg-test.sh stop >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n "$(leftovers)" ]]; then log "cleaning what a previous run left"; force_clean; fi
rm -rf "$d"
mkdir -p "$d"

dsn=$(scripts/pg-test.sh start) || { log "PostgreSQL did not start"; exit 1; }
pg_started=1
psql=$(ls -d /usr/lib/postgresql/*/bin/psql | sort -V | tail -n1)
dbname="cluster_$(date +%s)_$$"
"$psql" "$dsn" -qc "CREATE DATABASE $dbname" || exit 1
db="${dsn/\/postgres\?/\/$dbname?}"

# The base template, once, in n1's data dir.
n1="$d/n1"
mkdir -p "$n1"
for src in "$base/cache" /var/lib/cocoon/cache; do [[ -d "$src" ]] && { cp -al "$src" "$n1/cache"; break; }; done
for src in "$base/bin" /var/lib/cocoon/bin; do [[ -x "$src/runsc" ]] && { mkdir -p "$n1/bin" && cp -al "$src/." "$n1/bin/"; break; }; done
log "building the base template (gvisor)"
"$bin" template build base --data-dir "$n1" --runtimes gvisor --net-prefix clu1 --net-pool 10.241.0.0/16 >"$d/template.log" 2>&1 ||
	{ tail -20 "$d/template.log" >&2; exit 1; }
tdir=$(cat "$n1/templates/base/current")

export COCOON_NODE_TOKEN COCOON_ADMIN_TOKEN
COCOON_NODE_TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
COCOON_ADMIN_TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')

mkdir -p "$d/api"
"$bin" api --fleet --db "$db" --listen "127.0.0.1:$api_port" --data-dir "$d/api" >"$d/api.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
	[[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$api_port/health")" == 200 && -f "$d/api/sdk.env" ]] && break
	sleep 0.5
done
for i in 0 1; do
	# Every proxy shares the api's database and secrets key.
	mkdir -p "$d/proxy$i" && cp "$d/api/secrets.key" "$d/proxy$i/"
	# COCOON_PROXY1_BIN: another build for the second proxy (before/after figures).
	pbin="$bin"
	[[ $i == 1 ]] && pbin="${COCOON_PROXY1_BIN:-$bin}"
	"$pbin" proxy --fleet --db "$db" --proxy-listen "127.0.0.1:${proxy_ports[$i]}" --data-dir "$d/proxy$i" >"$d/proxy$i.log" 2>&1 &
	pids+=($!)
done

nodes_json="{"
for i in 1 2 3; do
	n="n$i"
	nd="$d/$n"
	mkdir -p "$nd/templates/base" "$nd/bin"
	[[ $i == 1 ]] || { echo "$tdir" >"$nd/templates/base/current"; cp -al "$n1/bin/." "$nd/bin/"; }
	args=("$bin" orchestrator --data-dir "$nd" --node-id "$n" --node-listen "127.0.0.1:$((3962 + i))"
		--control-url "http://127.0.0.1:$api_port" --runtime gvisor --install-runsc=false
		--net-prefix "clu$i" --net-pool "10.24$i.0.0/16" --prewarm 1)
	"${args[@]}" >"$nd.log" 2>&1 &
	echo $! >"$nd.pid"
	argv=$(node -e 'console.log(JSON.stringify(process.argv.slice(1)))' -- "${args[@]}")
	nodes_json+="\"$n\":{\"pidFile\":\"$nd.pid\",\"log\":\"$nd.log\",\"args\":$argv}"
	[[ $i == 3 ]] || nodes_json+=","
done
nodes_json+="}"

# One box (`cocoon server`, SQLite) beside the fleet on the same base build:
# the create p50 through the fleet is compared with it in the same run.
sd="$d/single"
mkdir -p "$sd/templates/base" "$sd/bin"
echo "$tdir" >"$sd/templates/base/current"
cp -al "$n1/bin/." "$sd/bin/"
"$bin" server --data-dir "$sd" --listen "127.0.0.1:$single_port" --proxy-listen "127.0.0.1:$((single_port + 1))" \
	--runtime gvisor --install-runsc=false --net-prefix clu4 --net-pool 10.244.0.0/16 --prewarm 1 --node-id single \
	--metrics-addr "" >"$d/single.log" 2>&1 &
pids+=($!)

log "running tests/e2e/cluster.test.mjs"
(
	# shellcheck disable=SC1091
	source "$d/api/sdk.env"
	export E2B_API_KEY COCOON_BIN="$bin" COCOON_CLUSTER_API="http://127.0.0.1:$api_port"
	export COCOON_CLUSTER_PROXIES="[\"http://127.0.0.1:${proxy_ports[0]}\",\"http://127.0.0.1:${proxy_ports[1]}\"]"
	export COCOON_CLUSTER_NODES="$nodes_json" COCOON_CLUSTER_DSN="$db" COCOON_CLUSTER_PSQL="$psql"
	export COCOON_CLUSTER_SINGLE="$sd/sdk.env"
	# COCOON_CLUSTER_ONLY: a --test-name-pattern (a subset, by hand).
	cd tests/e2e && timeout 1200 node --test --test-reporter=spec \
		${COCOON_CLUSTER_ONLY:+--test-name-pattern "$COCOON_CLUSTER_ONLY"} cluster.test.mjs
) 2>&1 | tee "$d/test.log"
rc=${PIPESTATUS[0]}

log "stopping the fleet"
for n in "${node_ids[@]}"; do kill "$(cat "$d/$n.pid")" 2>/dev/null; done
for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
for _ in $(seq 1 60); do
	# The nodes stop their warm pools as they go; sandboxes' runsc stay.
	[[ -z "$(ps -eo args= | grep -F -- "$d/" | grep -v -e grep -e cluster-test.sh | awk '$1 !~ /^runsc/')" ]] && break
	sleep 0.5
done
# gVisor sandboxes outlive their node by design; the tests killed theirs,
# so none may be left.
left=$(leftovers)
if [[ -n "$left" ]]; then
	log "LEAKED:"; echo "$left" >&2
	force_clean
	rc=1
fi
[[ "$rc" == 0 ]] && log "PASS" || log "FAIL (logs in $d)"
exit "$rc"
