# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
DEV_TWILIO_TOKEN := dev-twilio-auth-token
DEV_ADMIN_TOKEN := dev-admin-token
DEV_META_SECRET := dev-meta-app-secret
DEV_STRIPE_SECRET := whsec_dev_stripe_secret
DEV_RAZORPAY_SECRET := dev-razorpay-webhook-secret
DEV_CONSOLE_SECRET := dev-console-secret-only-for-make-run
DEV_OPERATOR_PASSWORD := dev-admin-password

.PHONY: run test faults bench lint typecheck pytest install install-dev system-packages clean messages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The engine (engine/, its own distribution) is installed from this checkout, with whatsorder.
$(STAMP): pyproject.toml engine/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ./engine -e .
	touch $@

$(DEV_STAMP): pyproject.toml engine/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e './engine[test]' -e '.[dev]'
	touch $@ $(STAMP)

install: $(STAMP)
install-dev: $(DEV_STAMP)

## make run: the service on SQLite under ./var/ with the demo catalogue, on 127.0.0.1:8000.
run: $(STAMP)
	@mkdir -p var
	WHATSORDER_REQUIRE_HTTPS=false $(BIN)/whatsorder migrate
	WHATSORDER_REQUIRE_HTTPS=false $(BIN)/whatsorder seed-demo
	@WHATSORDER_REQUIRE_HTTPS=false $(BIN)/whatsorder operator add dev-admin --role admin \
		--password $(DEV_OPERATOR_PASSWORD) >/dev/null 2>&1 || true
	@echo
	@echo "  whatsorder on http://127.0.0.1:8000  (docs: http://127.0.0.1:8000/docs)"
	@echo "  development Twilio auth token: $(DEV_TWILIO_TOKEN)"
	@echo "  development admin token:       $(DEV_ADMIN_TOKEN)"
	@echo "  development Meta app secret:   $(DEV_META_SECRET)"
	@echo "  operator console:              http://127.0.0.1:8000/console"
	@echo "    a development operator:      dev-admin / $(DEV_OPERATOR_PASSWORD) (add your own:"
	@echo "                                 $(BIN)/whatsorder operator add NAME --role admin)"
	@echo "  try it from another shell:     $(BIN)/whatsorder send \"ORDER 2 x ATTA-5KG\""
	@echo "    then a (development) link:   $(BIN)/whatsorder send \"PAY ORD-000001\""
	@echo "    and move the order on:       $(BIN)/whatsorder order confirm ORD-000001"
	@echo
	WHATSORDER_REQUIRE_HTTPS=false \
	WHATSORDER_TWILIO_AUTH_TOKEN=$${WHATSORDER_TWILIO_AUTH_TOKEN:-$(DEV_TWILIO_TOKEN)} \
	WHATSORDER_ADMIN_TOKEN=$${WHATSORDER_ADMIN_TOKEN:-$(DEV_ADMIN_TOKEN)} \
	WHATSORDER_META_APP_SECRET=$${WHATSORDER_META_APP_SECRET:-$(DEV_META_SECRET)} \
	WHATSORDER_STRIPE_WEBHOOK_SECRET=$${WHATSORDER_STRIPE_WEBHOOK_SECRET:-$(DEV_STRIPE_SECRET)} \
	WHATSORDER_RAZORPAY_WEBHOOK_SECRET=$${WHATSORDER_RAZORPAY_WEBHOOK_SECRET:-$(DEV_RAZORPAY_SECRET)} \
	WHATSORDER_PUBLIC_URL=$${WHATSORDER_PUBLIC_URL:-http://127.0.0.1:8000} \
	WHATSORDER_CONSOLE_SECRET=$${WHATSORDER_CONSOLE_SECRET:-$(DEV_CONSOLE_SECRET)} \
	WHATSORDER_PAYMENT_LINK_PROVIDER=$${WHATSORDER_PAYMENT_LINK_PROVIDER-development} \
	$(BIN)/whatsorder serve --host 127.0.0.1 --port 8000

## make test: lint, format check, type check, the import rules and the whole test suite (the quick mode of the fault suite
## included; nginx, for the replica tests, and prometheus, which checks and unit-tests the rules and scrapes a real
## whatsorder in tests/test_prometheus_live.py, are installed from
## Debian's packages when missing, and chromium for the console's browser tests); then both wheels are
## built and the engine's own tests run in a virtualenv that holds only the engine.
test: $(DEV_STAMP) system-packages
	$(BIN)/ruff check src tests examples engine deploy
	$(BIN)/ruff format --check src tests examples engine deploy
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest
	bash scripts/engine-wheels.sh $(PYTHON)

system-packages:
	@bash scripts/system-packages.sh nginx prometheus chromium

## make faults: the full fault-injection and adversarial suite (hundreds of SIGKILLs, outages, fuzzing).
faults: $(DEV_STAMP) system-packages
	WHATSORDER_FAULTS=full $(BIN)/pytest tests/faults

## make bench: the benchmark suite against the peer idempotency layers; writes bench/results/ and the plots.
bench: $(DEV_STAMP)
	@bash scripts/system-packages.sh wrk
	$(BIN)/python -m bench

## make messages: extract the customer-facing strings into the catalogues' template and merge
## them into every language's .po (a changed string turns fuzzy, and English stands in until a
## translator fixes it; tests/test_catalogues.py fails meanwhile).
LOCALE := src/whatsorder/locale
messages: $(DEV_STAMP)
	$(BIN)/pybabel extract -F babel.cfg --add-location=file --sort-output --add-comments=Translators: \
		--project=whatsorder --copyright-holder="the whatsorder authors" --no-wrap -o $(LOCALE)/messages.pot src/whatsorder
	$(BIN)/pybabel update -i $(LOCALE)/messages.pot -d $(LOCALE) -D messages --no-wrap

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
