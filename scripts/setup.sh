#!/usr/bin/env bash
# Installs what Cocoon needs on a bare Debian 12 host (idempotent): host
# packages from the host's own apt configuration, and the npm packages of the
# end-to-end tests. Go modules come from the Go module proxy at build time.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	echo "setup: run as root (Cocoon manages VMs, network namespaces and cgroups)" >&2
	exit 1
fi

packages=(
	qemu-system-x86 qemu-utils   # the microVM runtime
	debootstrap e2fsprogs cpio busybox-static  # guest images
	iproute2 nftables iptables   # network slots
	runc                         # the container baseline of the benchmarks
	postgresql                   # the PostgreSQL store tests
	prometheus                   # the metrics e2e scrapes cocoon server (tests/metrics)
	tmux                         # drives `cocoon sandbox shell` in its e2e test
	ca-certificates procps psmisc
)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	# The test setup starts its own PostgreSQL clusters; the packaged one is not needed.
	if systemctl is-active --quiet postgresql 2>/dev/null; then systemctl stop postgresql || true; fi
	# Likewise Prometheus: tests/metrics starts its own.
	if systemctl is-active --quiet prometheus 2>/dev/null; then systemctl stop prometheus || true; fi
fi

if [ -f tests/e2e/package-lock.json ]; then
	(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: done"
