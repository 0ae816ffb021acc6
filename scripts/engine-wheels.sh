#!/usr/bin/env bash
# Builds the wheels of both distributions (the engine, engine/, and whatsorder), then proves the
# engine stands alone: a virtualenv with nothing but the engine's wheel and its test extra
# (pytest, an ASGI app to guard) runs the engine's own tests, engine/tests. whatsorder, Twilio,
# Stripe and Razorpay are not installed there, so an import of any of them fails the run.
#   usage: scripts/engine-wheels.sh PYTHON   (the interpreter to make the virtualenv with)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
out=$(mktemp -d "${TMPDIR:-/tmp}/engine-wheels.XXXXXX")
trap 'rm -rf "$out"' EXIT

"$python" -m venv "$out/venv"
"$out/venv/bin/pip" install --quiet --upgrade pip
"$out/venv/bin/pip" wheel --quiet --no-deps --wheel-dir "$out/wheels" ./engine .
ls "$out/wheels"
engine_wheel=$(ls "$out"/wheels/whatsorder_idempotency-*.whl)
"$out/venv/bin/pip" install --quiet "${engine_wheel}[test]"

# What the engine's install pulled in: none of the web framework's or the providers' packages.
# (FastAPI comes with the test extra only, as the app under test.)
"$out/venv/bin/pip" install --quiet --dry-run --report "$out/engine-only.json" "${engine_wheel}[all]" \
    --ignore-installed >/dev/null 2>&1
"$out/venv/bin/python" - "$out/engine-only.json" <<'PY'
import json, sys
names = sorted(item["metadata"]["name"].lower() for item in json.load(open(sys.argv[1]))["install"])
print("the engine's install:", ", ".join(names))
banned = {"whatsorder", "fastapi", "starlette", "twilio", "stripe", "razorpay"} & set(names)
if banned:
    sys.exit(f"the engine's install pulls in {sorted(banned)}")
PY
if "$out/venv/bin/python" -c "import whatsorder" 2>/dev/null; then
    echo "whatsorder is importable in the engine's virtualenv" >&2
    exit 1
fi
# Run from a copy of the tests, away from the checkout: the engine is imported from the wheel.
cp -r engine/tests engine/pyproject.toml "$out/"
cd "$out"
"$out/venv/bin/python" -m pytest -q -p no:cacheprovider tests
