#!/usr/bin/env bash
# Installs the Debian packages named on the command line that are not installed yet (nginx for the
# replica tests, wrk for the benchmarks). Needs root or sudo and apt-get; elsewhere it says what is
# missing and carries on, and the tests that need the package skip (or fail under CI=true).
set -euo pipefail
missing=()
for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "system-packages: please install ${missing[*]} (no apt-get here)" >&2
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
        echo "system-packages: please install ${missing[*]} (needs root: sudo apt-get install ${missing[*]})" >&2
        exit 0
    fi
fi
echo "system-packages: installing ${missing[*]}"
$sudo apt-get update -qq
# policy-rc.d keeps the package's own service (nginx on port 80) from starting: tests start their own.
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && created_policy=1
fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
[ -n "$created_policy" ] && $sudo rm -f "$policy"
exit 0
