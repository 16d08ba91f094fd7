#!/usr/bin/env bash
# Installs the Debian packages a profile needs, and nothing when they are all there already (a no-op costs one
# dpkg-query). `npm test` runs it as its pretest step, `npm run demo` as its predemo step, and .ci/run calls the
# very same script, so a fresh Debian 12 or 13 machine needs no hand-written apt-get line.
#
#   bash build/system-deps.sh build   # toolchain for `npm run build` (node-gyp addon, strip)
#   bash build/system-deps.sh test    # build + everything the unit and E2E suites drive
#   bash build/system-deps.sh bench   # test + the C reference loop's compiler and headers, GNU time
#
# Package installs must not start daemons: the tests run their own containerd and registry on private sockets and
# ports. policy-rc.d (exit 101) is what invoke-rc.d and deb-systemd-invoke consult; only ours is removed again.
set -euo pipefail

profile=${1:-test}

BUILD_PACKAGES=(
	python3 make g++                               # node-gyp: the TEE addon
	binutils                                       # strip (the SEA is stripped before injection)
	openssl ca-certificates                        # the demo's and the tests' PKI
)
TEST_PACKAGES=(
	containerd docker-registry skopeo              # e2e: real containerd, registry and image encryption
	rpm lintian rpmlint dpkg-dev                   # packaging and its checks
	zstd                                           # checks the zstd fixture layer
	swtpm swtpm-tools tpm2-tools                   # a real TPM 2.0 simulator for the Azure vTPM attester
)

BENCH_PACKAGES=(
	gcc libssl-dev                                 # test/bench/evp-decode.c, the C reference loop
	time                                           # GNU time: CPU and peak RSS of each run
)

case "$profile" in
build) wanted=("${BUILD_PACKAGES[@]}") ;;
test) wanted=("${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
bench) wanted=("${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}" "${BENCH_PACKAGES[@]}") ;;
*)
	echo "system-deps: unknown profile '${profile}' (build | test | bench)" >&2
	exit 2
	;;
esac

if ! command -v dpkg-query >/dev/null; then
	echo "system-deps: not a Debian system (no dpkg-query); install the equivalents of: ${wanted[*]}" >&2
	exit 0
fi

missing=()
for pkg in "${wanted[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
	[[ $status == "install ok installed" ]] || missing+=("$pkg")
done
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) != 0 ]]; then
	echo "system-deps: missing Debian packages: ${missing[*]}" >&2
	echo "system-deps: run as root (the E2E suite needs root for containerd anyway), or: apt-get install -y ${missing[*]}" >&2
	exit 1
fi

echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d ours=
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	ours=1
fi
rc=0
log=$(mktemp)
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1 </dev/null || rc=$?
if [[ -n $ours ]]; then rm -f "$policy"; fi
if ((rc != 0)); then
	tail -n 30 "$log" >&2
	echo "system-deps: apt-get failed (exit ${rc}) installing: ${missing[*]}" >&2
fi
rm -f "$log"
exit "$rc"
