# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= etc/mtaserver.conf
PYTEST_ARGS ?= -n 2

.PHONY: run test lint install system-deps bench clean wheel-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

# The development install is editable in "compat" mode because twistd finds plugins
# by scanning every sys.path entry for a twisted/plugins/ folder: compat mode puts
# the checkout on sys.path, the import-hook modes do not, and twistd would not see
# the plugin. `make wheel-check` proves the built wheel works without the checkout.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

# Debian packages the test suite talks to: slapd (LDAP tests), postfix
# (smtp-source and smtp-sink for benchmarks), chromium and chromium-driver (the web
# console's browser tests), installed only when missing.
system-deps:
	@missing=""; \
	command -v slapd >/dev/null 2>&1 || [ -x /usr/sbin/slapd ] || missing="$$missing slapd ldap-utils"; \
	command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ] || missing="$$missing postfix"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
		(apt-get update -qq || true) && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

run: install
	mkdir -p var
	$(BIN)/twistd -n --pidfile= mtaserver --config $(CONFIG)

test: install system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS) -q

lint: install
	$(BIN)/ruff check mtaserver tests twisted bench
	$(BIN)/mypy

wheel-check:
	PYTHON=$(PYTHON) .ci/wheel-check

bench: install system-deps
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
