#!/usr/bin/env bash
# The checks before and after a deployment, as commands (docs/deployment.md):
#
#   deploy/check.sh 8001 8002 8003
#
# - every replica on 127.0.0.1:PORT is alive (/healthz) and ready (/readyz: database answers,
#   schema current);
# - the schema is what this release expects (whatsorder migrate --check);
# - through the proxy at WHATSORDER_PUBLIC_URL: TLS works, /healthz answers, and an unsigned
#   Twilio webhook is refused 401 "signature missing" — not 403 "HTTPS required", which would
#   mean the replicas do not trust the proxy's X-Forwarded-Proto (WHATSORDER_TRUSTED_PROXIES);
# - which providers are configured (a provider without its secret answers 503);
# - the books agree (whatsorder audit).
# Exits 1 if any check fails. Needs bash and curl; reads the settings from the environment or
# from WHATSORDER_ENV_FILE. A self-signed proxy certificate: CURL_CA_BUNDLE=/path/to/cert.pem.
set -uo pipefail

if [ $# -eq 0 ]; then
    echo "usage: $0 PORT..." >&2
    exit 2
fi
if [ -n "${WHATSORDER_ENV_FILE:-}" ]; then
    set -a
    # shellcheck disable=SC1090
    . "$WHATSORDER_ENV_FILE"
    set +a
fi
whatsorder=${WHATSORDER_BIN:-$(command -v whatsorder || echo /opt/whatsorder/venv/bin/whatsorder)}
public=${WHATSORDER_PUBLIC_URL:?set WHATSORDER_PUBLIC_URL (or WHATSORDER_ENV_FILE)}
failed=0

check() {  # check DESCRIPTION COMMAND...
    local description=$1
    shift
    if output=$("$@" 2>&1); then
        echo "ok    $description"
    else
        echo "FAIL  $description"
        [ -n "$output" ] && echo "$output" | sed 's/^/      /'
        failed=1
    fi
}

status_is() {  # status_is CODE CURL-ARGS...
    local want=$1
    shift
    local got
    got=$(curl --silent --output /dev/null --max-time 5 --write-out '%{http_code}' "$@")
    [ "$got" = "$want" ] && return 0
    if [ "$got" = "000" ]; then
        echo "no answer: refused, timed out, or TLS failed (a self-signed certificate needs CURL_CA_BUNDLE)"
    else
        echo "HTTP $got, expected $want"
    fi
    return 1
}

for port in "$@"; do
    check "replica $port alive" status_is 200 "http://127.0.0.1:$port/healthz"
    check "replica $port ready" status_is 200 "http://127.0.0.1:$port/readyz"
done
check "schema current" $whatsorder migrate --check
check "proxy answers over TLS ($public)" status_is 200 "$public/healthz"
check "proxy trusted, signatures required" \
    status_is 401 -X POST --data "Body=check" "$public/api/v1/whatsapp/webhook"
providers=$(curl --silent --max-time 5 "$public/api/v1/whatsapp/test" \
    | sed -n 's/.*"providers":{\([^}]*\)}.*/\1/p')
echo "      providers configured: ${providers:-unknown} (false: its webhooks answer 503)"
check "books agree" $whatsorder audit
exit $failed
