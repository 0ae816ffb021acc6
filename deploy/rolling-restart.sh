#!/usr/bin/env bash
# Replace whatsorder's replicas one at a time, each ready before the next goes (docs/deployment.md).
#
#   deploy/rolling-restart.sh 8001 8002 8003
#
# For each port: run the restart command (default: systemctl restart whatsorder@PORT, which
# sends SIGTERM, waits for the drain to end and starts the new release), wait until
# http://127.0.0.1:PORT/readyz answers 200, then wait SETTLE seconds so nginx, whose passive
# health check left the replica out while it restarted, takes it back before the next one goes.
# Needs bash and curl. Refuses to start while the schema is behind the code: run `whatsorder migrate` first.
#
# Environment:
#   WHATSORDER_RESTART  the restart command, {port} replaced by the port
#                       [default: systemctl restart whatsorder@{port}]
#   WHATSORDER_BIN      the whatsorder command [default: whatsorder on PATH, else
#                       /opt/whatsorder/venv/bin/whatsorder]
#   WHATSORDER_ENV_FILE a file of WHATSORDER_* settings to read first, as the units do
#                       (e.g. /etc/whatsorder/whatsorder.env) [default: the environment as is]
#   READY_TIMEOUT       seconds to wait for a replica to be ready [default: 60]
#   SETTLE              seconds between replicas; at least nginx's fail_timeout [default: 2]
set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: $0 PORT..." >&2
    exit 2
fi
restart=${WHATSORDER_RESTART:-"systemctl restart whatsorder@{port}"}
whatsorder=${WHATSORDER_BIN:-$(command -v whatsorder || echo /opt/whatsorder/venv/bin/whatsorder)}
ready_timeout=${READY_TIMEOUT:-60}
settle=${SETTLE:-2}

if [ -n "${WHATSORDER_ENV_FILE:-}" ]; then
    set -a
    # shellcheck disable=SC1090
    . "$WHATSORDER_ENV_FILE"
    set +a
fi

# The new release must find the schema it expects; replicas on a behind schema are not ready.
$whatsorder migrate --check

ready() {
    curl --silent --fail --output /dev/null --max-time 2 "http://127.0.0.1:$1/readyz"
}

seconds_since() {
    awk -v from="$1" -v to="$EPOCHREALTIME" 'BEGIN { printf "%.1f", to - from }'
}

left=$#
for port in "$@"; do
    left=$(( left - 1 ))
    started=$EPOCHREALTIME
    echo "replica $port: restarting"
    sh -c "${restart//\{port\}/$port}"
    restarted_in=$(seconds_since "$started")
    stopped=$EPOCHREALTIME
    deadline=$(( SECONDS + ready_timeout ))
    until ready "$port"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "replica $port: not ready after ${ready_timeout} s; stopping the roll here" >&2
            exit 1
        fi
        sleep 0.2
    done
    echo "replica $port: restart command took $restarted_in s, ready $(seconds_since "$stopped") s later"
    if [ "$left" -gt 0 ]; then sleep "$settle"; fi
done
echo "all $# replicas replaced"
