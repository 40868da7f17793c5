# Two commands: `make run` (install everything, serve on https://127.0.0.1:8443)
# and `make test` (the same set-up plus the test tools, then the whole suite).  Run as root.

VENV ?= $(shell /usr/bin/python3 scripts/default-venv)
PYTHON := $(VENV)/bin/python
SERVICE_USER ?= retrace
# The installed copy of config/retrace-server.conf, refreshed by every make
# (readable by the service user even when the checkout is not).
CONFIG ?= $(VENV)/share/retrace-server/retrace-server.conf
LISTEN ?= 127.0.0.1:8443
PYTEST_ARGS ?=

.PHONY: run test setup system-packages test-packages venv install service-user test-tools lint unit integration bench dist

run: setup
	$(VENV)/bin/retrace-server-httpd --config $(CONFIG) --listen $(LISTEN) --user $(SERVICE_USER)

test: setup test-tools lint
	$(PYTHON) -m pytest $(PYTEST_ARGS) tests

unit: setup test-tools
	$(PYTHON) -m pytest $(PYTEST_ARGS) tests/unit

integration: setup test-tools
	$(PYTHON) -m pytest $(PYTEST_ARGS) tests/integration

# The linter over the checkout; the type checker over the installed package, as Apache imports it
# (pyproject.toml holds both configurations).
lint: setup test-tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --config-file pyproject.toml --python-executable $(PYTHON) -p retrace_server

setup: system-packages install service-user

# What the server needs; test-packages adds what only the suite uses (scripts/install-system-packages lists both).
system-packages:
	sh scripts/install-system-packages

test-packages:
	sh scripts/install-system-packages --test

$(PYTHON):
	mkdir -p $(dir $(VENV)) && /usr/bin/python3 -m venv --system-site-packages $(VENV)

venv: $(PYTHON)

# Reinstalled on every run (a second or two) so that Apache's daemon
# processes, which import the installed copy, always serve this checkout.
install: venv
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "celery>=5.4,<6"
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation --disable-pip-version-check .
	rm -rf build retrace_server.egg-info
	$(PYTHON) scripts/make-manpages $(VENV)/share/man >/dev/null
	$(PYTHON) scripts/make-completions $(VENV)/share/bash-completion/completions >/dev/null

# What only the suite uses, pinned: `make run` never installs it.
test-tools: venv test-packages
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "vermin==1.9.2" "ruff==0.17.6" "mypy==2.4.1"

# The source tarball retrace-server.spec builds from (SOURCES/retrace-server-VERSION.tar.gz; MANIFEST.in says
# what it holds).
dist: venv
	$(PYTHON) -m build --sdist --no-isolation --outdir dist .
	rm -rf retrace_server.egg-info

service-user:
	id -u $(SERVICE_USER) >/dev/null 2>&1 || useradd --system --user-group \
		--home-dir /var/lib/$(SERVICE_USER) --shell /usr/sbin/nologin $(SERVICE_USER)
	id -u retrace-debuginfod >/dev/null 2>&1 || useradd --system --user-group \
		--home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin retrace-debuginfod

bench: setup test-tools
	$(PYTHON) -m bench.api
	$(PYTHON) -m bench.retrace
	$(PYTHON) -m bench.environments
	$(PYTHON) -m bench.mock
	$(PYTHON) -m bench.debuginfod
	$(PYTHON) -m bench.cluster
	$(PYTHON) -m bench.vmcore
	$(PYTHON) -m bench.dispatch
	$(PYTHON) -m bench.reposync
	$(PYTHON) -m bench.debian
	$(PYTHON) -m bench.corpus
	$(PYTHON) -m bench.long_poll
	$(PYTHON) -m bench.metadata_only
	$(PYTHON) -m bench.architectures
	$(PYTHON) -m bench.interact
	$(PYTHON) -m bench.vmcore_intake
	$(PYTHON) -m bench.manager
	$(PYTHON) -m bench.reports
	$(PYTHON) -m bench.slow_clients
