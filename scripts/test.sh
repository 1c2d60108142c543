#!/usr/bin/env bash
# Runs every test suite of Cocoon: static checks, Go unit and integration
# tests (real QEMU, gVisor, network namespaces, SQLite and PostgreSQL), and
# the end-to-end suites driven by the official e2b npm SDK. `make test` runs
# it after `scripts/setup.sh` and the build; CI runs `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export COCOON_TEST_DATA_DIR="${COCOON_TEST_DATA_DIR:-/var/lib/cocoon-test}"
export ENVD_BIN="$root/bin/envd"
export COCOON_BIN="$root/bin/cocoon"
mkdir -p "$COCOON_TEST_DATA_DIR"

step() { printf '\n==> %s\n' "$*"; }

step "static checks: gofmt, go vet"
unformatted=$(gofmt -l $(git ls-files '*.go') 2>/dev/null || true)
if [ -n "$unformatted" ]; then
	echo "gofmt needed on:"; echo "$unformatted"; exit 1
fi
go vet ./...

step "sdk/go (its own module): vet and unit tests (-count=3, ≈ 3 s)"
(cd sdk/go && go vet ./... && go test -count=3 ./...)

step "runtimes: runsc for gVisor (built once into \$COCOON_TEST_DATA_DIR/bin)"
"$COCOON_BIN" setup --data-dir "$COCOON_TEST_DATA_DIR"
export COCOON_RUNSC="$COCOON_TEST_DATA_DIR/bin/runsc"

step "PostgreSQL for the store tests"
COCOON_TEST_PG_DSN="$(./scripts/pg-test.sh start)"
export COCOON_TEST_PG_DSN
export COCOON_REQUIRE_PG=1
trap './scripts/pg-test.sh stop >/dev/null 2>&1 || true' EXIT

# Unit packages run three times so a test that races the clock or another
# goroutine fails here, before it lands; the integration packages, which
# start runtimes and build templates, run once (docs/decisions.md has the
# figures).
integration='^github\.com/cocoon-run/cocoon/internal/(orchestrator|gvisor|vmm|template(/.*)?)$'
mapfile -t unit_pkgs < <(go list ./... | grep -Ev "$integration")
mapfile -t integration_pkgs < <(go list ./... | grep -E "$integration")

step "Go unit tests (-count=3)"
go test -count=3 -timeout 20m "${unit_pkgs[@]}"

step "control plane under the race detector"
# The api's lifecycle, placement, the node registry, the store and the
# proxy are shared by many goroutines (and replicas): -race once (issue 14).
go test -race -count=1 -timeout 20m ./internal/api/ ./internal/control/... ./internal/store/ ./internal/proxy/ ./internal/nodeauth/

step "Go integration tests"
go test -count=1 -timeout 40m "${integration_pkgs[@]}"

step "fuzzing: each target for ${COCOON_FUZZTIME:-10s} (seed corpora in testdata/fuzz run in go test too)"
# New interesting inputs stay in Go's fuzz cache ($(go env GOCACHE)/fuzz);
# a failing input is written to the package's testdata/fuzz: commit it.
for target in \
	FuzzExtract:./internal/template/oci \
	FuzzParse:./internal/template/dockerfile \
	FuzzSpec:./internal/template/steps \
	FuzzRoute:./internal/proxy \
	FuzzAuthorized:./internal/envd/files \
	FuzzAbs:./internal/envd/identity; do
	go test -run '^$' -fuzz "^${target%%:*}\$" -fuzztime "${COCOON_FUZZTIME:-10s}" "${target#*:}"
done

step "envd end to end with the official e2b SDK (E2B_DEBUG=true)"
(cd tests/e2e && node --test --test-reporter=spec envd.test.mjs)

if [ -f tests/e2e/server.test.mjs ]; then
	step "cocoon server end to end with the official e2b SDK"
	./scripts/e2e-server.sh
fi
step "a fleet on one machine with the official e2b SDK (PostgreSQL, api, two proxies, three nodes)"
./scripts/cluster-test.sh

echo
echo "all test suites passed"
