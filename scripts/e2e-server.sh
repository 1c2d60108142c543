#!/usr/bin/env bash
# e2e-server.sh — end-to-end suite of `cocoon server` with the official e2b SDK,
# for every runtime x database: {qemu, gvisor} x {sqlite, postgres}.
#
#   make build && scripts/e2e-server.sh
#
# Builds nothing: the caller ran `make build` (COCOON_BIN, default bin/cocoon).
# For each combination it makes a fresh data dir
# ${COCOON_TEST_DATA_DIR:-/var/lib/cocoon-test}/e2e-<runtime>-<db> (the template
# cache and runsc are hard-linked from $COCOON_TEST_DATA_DIR or /var/lib/cocoon
# when present), builds the base template for that runtime, starts the server
# on its own ports and network prefix/pool, runs tests/e2e/server.test.mjs
# (whose restart test kill -9s the server and starts it again, recording the
# new pid in <data dir>/server.pid), stops the server, and checks that nothing
# is left behind: no process naming the data dir (qemu, runsc), no network
# namespace, link or nftables table with the server's prefix, no sandbox
# directory. PostgreSQL runs from scripts/pg-test.sh in its own cluster
# (COCOON_PG_DIR=/tmp/cocoon-pg-e2e, port 55433), one fresh database per run.
#
# Environment:
#   E2E_MATRIX   combinations to run (default "qemu:sqlite gvisor:sqlite qemu:postgres gvisor:postgres")
#   E2E_SUBSET   full | short (passed to the test as COCOON_E2E_SUBSET)
#   E2E_ACCEL    --accel of the server (default auto)
#   E2E_KEEP=1   keep the data dirs after a passing run
#   E2E_CODEINTERP=1  also build code-interpreter-v1 and run codeinterp.test.mjs (gvisor:sqlite)
# Exit status: non-zero when any combination failed or leaked.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin="${COCOON_BIN:-$root/bin/cocoon}"
base="${COCOON_TEST_DATA_DIR:-/var/lib/cocoon-test}"
matrix="${E2E_MATRIX:-qemu:sqlite gvisor:sqlite qemu:postgres gvisor:postgres}"
subset="${E2E_SUBSET:-full}"
accel="${E2E_ACCEL:-auto}"
export COCOON_PG_DIR="${COCOON_PG_DIR_E2E:-/tmp/cocoon-pg-e2e}"
export COCOON_PG_PORT="${COCOON_PG_PORT_E2E:-55433}"

[[ -x "$bin" ]] || { echo "e2e-server: $bin is missing: run make build" >&2; exit 2; }
[[ -x "$root/bin/envd" ]] || { echo "e2e-server: bin/envd is missing: run make build" >&2; exit 2; }
[[ -x "$root/bin/test-registry" ]] || { echo "e2e-server: bin/test-registry is missing: run make build" >&2; exit 2; }
[[ -d tests/e2e/node_modules/e2b ]] || (cd tests/e2e && npm ci --no-audit --no-fund) || exit 2
mkdir -p "$base"

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

pg_started=""
server_pid=""
cleanup() {
	if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then kill -9 "$server_pid" 2>/dev/null; fi
	[[ -n "$pg_started" ]] && scripts/pg-test.sh stop >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# leftovers D PREFIX: prints what the server with data dir D and network prefix P left behind.
leftovers() {
	local d=$1 p=$2
	ps -eo pid=,args= | grep -F -- "$d/" | grep -v -e grep -e "e2e-server.sh" | sed 's/^/  process: /'
	ip netns list 2>/dev/null | awk -v p="$p-" 'index($1, p) == 1 {print "  netns: " $1}'
	ip -o link show 2>/dev/null | awk -F': ' -v p="$p-" 'index($2, p) == 1 {print "  link: " $2}'
	nft list tables 2>/dev/null | grep -w -- "$p" | sed 's/^/  nft: /'
	nft list tables 2>/dev/null | grep -- " $p[-_]" | sed 's/^/  nft: /'
	if [[ -d "$d/sandboxes" ]]; then
		find "$d/sandboxes" -mindepth 1 -maxdepth 1 | sed 's/^/  sandbox dir: /'
	fi
	# Paused state and runsc's records (issue 20: nothing owned by nothing).
	if [[ -d "$d/snapshots" ]]; then
		find "$d/snapshots" -mindepth 1 -maxdepth 1 | sed 's/^/  snapshot dir: /'
	fi
	if [[ -d "$d/gvisor/state" ]]; then
		find "$d/gvisor/state" -mindepth 1 -maxdepth 1 | sed 's/^/  runsc state: /'
	fi
}

# force_clean D P: removes what leftovers found (all of it was started by this script's server).
force_clean() {
	local d=$1 p=$2 pid
	for pid in $(ps -eo pid=,args= | grep -F -- "$d/" | grep -v -e grep -e "e2e-server.sh" | awk '{print $1}'); do
		kill -9 "$pid" 2>/dev/null
	done
	for ns in $(ip netns list 2>/dev/null | awk -v p="$p-" 'index($1, p) == 1 {print $1}'); do ip netns del "$ns" 2>/dev/null; done
	for l in $(ip -o link show 2>/dev/null | awk -F': ' -v p="$p-" 'index($2, p) == 1 {sub(/@.*/, "", $2); print $2}'); do ip link del "$l" 2>/dev/null; done
}

results=()
failed=0
i=0
for combo in $matrix; do
	rt=${combo%%:*}
	db=${combo##*:}
	i=$((i + 1))
	name="e2e-$rt-$db"
	d="$base/$name"
	prefix="e2e${rt:0:1}${db:0:1}"
	pool="10.$((211 + i)).0.0/16"
	api_port=$((3900 + 10 * i))
	proxy_port=$((api_port + 1))
	t0=$(date +%s)
	status=PASS
	why=""
	log "== $name: data dir $d, ports $api_port/$proxy_port, net $prefix $pool"

	# A fresh data dir; nothing of a previous run may be running from it.
	if [[ -n "$(leftovers "$d" "$prefix")" ]]; then
		log "cleaning what a previous run left:"; leftovers "$d" "$prefix" >&2
		force_clean "$d" "$prefix"
	fi
	rm -rf "$d"
	mkdir -p "$d"
	for src in "$base/cache" /var/lib/cocoon/cache; do
		if [[ -d "$src" ]]; then cp -al "$src" "$d/cache"; break; fi
	done
	for src in "$base/bin" /var/lib/cocoon/bin; do
		if [[ -x "$src/runsc" ]]; then mkdir -p "$d/bin" && cp -al "$src/." "$d/bin/"; break; fi
	done
	netflags=(--net-prefix "$prefix" --net-pool "$pool")

	dbflags=()
	dbname=""
	if [[ "$db" == postgres ]]; then
		if [[ -z "$pg_started" ]]; then
			dsn=$(scripts/pg-test.sh start) || { log "PostgreSQL did not start"; results+=("$name FAIL (postgres did not start)"); failed=1; continue; }
			pg_started=1
		fi
		dbname="e2e_${rt}_$(date +%s)_$$"
		psql=$(ls -d /usr/lib/postgresql/*/bin/psql | sort -V | tail -n1)
		if ! "$psql" "$dsn" -qc "CREATE DATABASE $dbname" >&2; then
			results+=("$name FAIL (create database)"); failed=1; continue
		fi
		dbflags=(--db "${dsn/\/postgres\?/\/$dbname?}")
	fi

	log "building the base template for $rt"
	tb0=$(date +%s)
	if ! "$bin" template build base --data-dir "$d" --runtimes "$rt" "${netflags[@]}" >"$d/template.log" 2>&1; then
		tail -20 "$d/template.log" >&2
		results+=("$name FAIL (template build, see $d/template.log)"); failed=1; continue
	fi
	tb=$(($(date +%s) - tb0))

	args=("$bin" server --data-dir "$d" --runtime "$rt" --accel "$accel" --listen "127.0.0.1:$api_port"
		--proxy-listen "127.0.0.1:$proxy_port" --metrics-addr "127.0.0.1:$((api_port + 2))" "${netflags[@]}" "${dbflags[@]}")
	"${args[@]}" >>"$d/server.log" 2>&1 &
	server_pid=$!
	disown "$server_pid" # the restart test kill -9s it: no job notice
	echo "$server_pid" >"$d/server.pid"
	up=""
	for _ in $(seq 1 240); do
		kill -0 "$server_pid" 2>/dev/null || break
		code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$api_port/v2/sandboxes" || true)
		if [[ "$code" == 401 && -f "$d/sdk.env" ]]; then up=1; break; fi
		sleep 0.5
	done
	if [[ -z "$up" ]]; then
		tail -30 "$d/server.log" >&2
		results+=("$name FAIL (server did not start, see $d/server.log)"); failed=1
		kill -9 "$server_pid" 2>/dev/null; server_pid=""
		continue
	fi

	log "running tests/e2e/server.test.mjs ($rt, $db)"
	tt0=$(date +%s)
	(
		unset E2B_API_KEY E2B_API_URL E2B_SANDBOX_URL E2B_DOMAIN E2B_DEBUG
		export COCOON_E2E_RUNTIME="$rt" COCOON_E2E_DATA_DIR="$d" COCOON_E2E_PID_FILE="$d/server.pid"
		export COCOON_E2E_SERVER_LOG="$d/server.log" COCOON_E2E_SUBSET="$subset" COCOON_BIN="$bin"
		COCOON_E2E_SERVER_ARGS=$(node -e 'console.log(JSON.stringify(process.argv.slice(1)))' -- "${args[@]}")
		export COCOON_E2E_SERVER_ARGS
		cd tests/e2e && timeout 900 node --test --test-reporter=spec server.test.mjs
	) 2>&1 | tee "$d/test.log"
	rc=${PIPESTATUS[0]}
	# Custom templates (the SDK's Template builder, an image from the
	# in-test registry bin/test-registry, a Dockerfile through the CLI)
	# once, on the default runtime.
	if [[ "$rt" == gvisor && "$db" == sqlite && "$rc" == 0 && "$subset" == full ]]; then
		log "running tests/e2e/template.test.mjs ($rt, $db)"
		(
			unset E2B_DOMAIN E2B_DEBUG
			# shellcheck disable=SC1091
			source "$d/sdk.env"
			export COCOON_E2E_DATA_DIR="$d" COCOON_BIN="$bin"
			cd tests/e2e && timeout 900 node --test --test-reporter=spec template.test.mjs
		) 2>&1 | tee -a "$d/test.log"
		rc=${PIPESTATUS[0]}
	fi
	# The code interpreter (@e2b/code-interpreter) once, on the default
	# runtime: `cocoon template build code-interpreter` inside the test. Its
	# slow layer (code-interpreter-deps: Debian's Python data stack, ≈ 13 min
	# of apt under gVisor on a loaded host) is kept across runs in
	# $base/codeinterp-cache/layers (hard links, the newest only; its key
	# does not depend on the database). Snapshots are not kept: they name
	# the data dir's paths. Opt-in (E2E_CODEINTERP=1) until the cold build
	# is measured on a quiet host: under load its apt step alone took 23 min.
	if [[ "${E2E_CODEINTERP:-0}" == 1 && "$rt" == gvisor && "$db" == sqlite && "$rc" == 0 && "$subset" == full ]]; then
		log "running tests/e2e/codeinterp.test.mjs ($rt, $db)"
		ci_cache="$base/codeinterp-cache"
		if [[ -d "$ci_cache/layers" ]]; then mkdir -p "$d/templates/layers" && cp -al "$ci_cache/layers/." "$d/templates/layers/"; fi
		(
			unset E2B_DOMAIN E2B_DEBUG
			# shellcheck disable=SC1091
			source "$d/sdk.env"
			export COCOON_E2E_DATA_DIR="$d" COCOON_BIN="$bin"
			cd tests/e2e && timeout 2400 node --test --test-reporter=spec codeinterp.test.mjs
		) 2>&1 | tee -a "$d/test.log"
		rc=${PIPESTATUS[0]}
		if [[ "$rc" == 0 ]]; then
			rm -rf "$ci_cache.new" && mkdir -p "$ci_cache.new/layers"
			# code-interpreter-deps: ipykernel installed, no server binary yet.
			newest=$(ls -td "$d/templates/layers"/*/ 2>/dev/null | while read -r t; do
				[[ -d "$t/rootfs/usr/lib/python3/dist-packages/ipykernel" && ! -e "$t/rootfs/usr/local/bin/code-interpreter" ]] && echo "$t"
			done | head -n1)
			[[ -n "$newest" ]] && cp -al "${newest%/}" "$ci_cache.new/layers/"
			rm -rf "$ci_cache" && mv "$ci_cache.new" "$ci_cache"
		fi
	fi
	# Prometheus (Debian's) scrapes the server: counts after creates and
	# kills, and the dashboard's and alert rules' metrics (issue 15; ≈ 10 s).
	if [[ "$rt" == gvisor && "$db" == sqlite && "$rc" == 0 ]]; then
		log "running tests/metrics with Prometheus ($rt, $db)"
		(
			unset E2B_DOMAIN E2B_DEBUG
			# shellcheck disable=SC1091
			source "$d/sdk.env"
			export COCOON_METRICS_E2E=1 COCOON_METRICS_URL="http://127.0.0.1:$((api_port + 2))/metrics"
			go test -count=1 -timeout 5m ./tests/metrics
		) 2>&1 | tee -a "$d/test.log"
		rc=${PIPESTATUS[0]}
	fi
	# sdk/go, the `cocoon sandbox` CLI (tmux drives its shell) and the
	# README's examples, once, on the default runtime, in both subsets
	# (issue 16; ≈ 60 s).
	if [[ "$rt" == gvisor && "$db" == sqlite && "$rc" == 0 ]]; then
		log "running sdk/go, cocoon sandbox and README end to end ($rt, $db)"
		(
			unset E2B_DOMAIN E2B_DEBUG
			# shellcheck disable=SC1091
			source "$d/sdk.env"
			export COCOON_SDK_E2E=1 COCOON_BIN="$bin"
			(cd sdk/go && go test -count=1 -timeout 10m -run '^TestE2E' .) &&
				go test -count=1 -timeout 10m -run '^TestSandbox(CLI|Shell)$' ./cmd/cocoon &&
				go test -count=1 -timeout 10m ./tests/readme
		) 2>&1 | tee -a "$d/test.log"
		rc=${PIPESTATUS[0]}
	fi
	tt=$(($(date +%s) - tt0))
	# Summed over the test files that ran (server, then templates).
	npass=$(grep -oP '^ℹ pass \K\d+' "$d/test.log" | awk '{s += $1} END {if (NR) print s}')
	nfail=$(grep -oP '^ℹ fail \K\d+' "$d/test.log" | awk '{s += $1} END {if (NR) print s}')
	[[ "$rc" == 0 ]] || { status=FAIL; why="tests failed (exit $rc)"; }

	# The restart test may have replaced the server: stop the one in the pid file.
	server_pid=$(cat "$d/server.pid")
	if kill -0 "$server_pid" 2>/dev/null; then
		# Sandboxes outlive the server: kill what the tests did not (and say so).
		key=$(sed -n 's/^export E2B_API_KEY=//p' "$d/sdk.env")
		left=$(curl -s -H "X-API-KEY: $key" "http://127.0.0.1:$api_port/v2/sandboxes?state=running,paused" |
			node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{for(const x of JSON.parse(s))console.log(x.sandboxID)}catch{}})')
		for id in $left; do
			log "sandbox $id was left by the tests; killing it"
			curl -s -o /dev/null -X DELETE -H "X-API-KEY: $key" "http://127.0.0.1:$api_port/sandboxes/$id"
			status=FAIL; why="${why:+$why; }sandboxes left running"
		done
		kill -TERM "$server_pid"
		for _ in $(seq 1 60); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
		if kill -0 "$server_pid" 2>/dev/null; then
			log "server did not stop on SIGTERM in 30 s; SIGKILL"
			kill -9 "$server_pid"; status=FAIL; why="${why:+$why; }server ignored SIGTERM"
		fi
	else
		log "the server (pid $server_pid) is not running at the end of the tests"
		status=FAIL; why="${why:+$why; }server died"
	fi
	server_pid=""

	# Nothing may be left: give asynchronous teardown a few seconds.
	leak=""
	for _ in $(seq 1 20); do
		leak=$(leftovers "$d" "$prefix")
		[[ -z "$leak" ]] && break
		sleep 0.5
	done
	if [[ -n "$leak" ]]; then
		log "LEAK after stopping the server:"; echo "$leak" >&2
		status=FAIL; why="${why:+$why; }leaked: $(echo "$leak" | awk '{print $1}' | sort | uniq -c | xargs)"
		force_clean "$d" "$prefix"
	fi
	if [[ -n "$dbname" ]]; then "$psql" "$dsn" -qc "DROP DATABASE IF EXISTS $dbname" >&2 || true; fi

	total=$(($(date +%s) - t0))
	[[ "$status" == PASS ]] || failed=1
	results+=("$(printf '%-22s %s  pass=%s fail=%s  template %ss, tests %ss, total %ss%s' "$name" "$status" "${npass:-?}" "${nfail:-?}" "$tb" "$tt" "$total" "${why:+  ($why)}")")
	if [[ "$status" == PASS && "${E2E_KEEP:-}" != 1 ]]; then rm -rf "$d"; fi
done

echo
echo "== cocoon server end to end: summary"
for r in "${results[@]}"; do echo "  $r"; done
exit $failed
