# Two commands: `make run` (install everything, serve on https://127.0.0.1:8443)
# and `make test` (the same set-up, then the whole suite).  Run as root.

VENV ?= $(shell /usr/bin/python3 scripts/default-venv)
PYTHON := $(VENV)/bin/python
SERVICE_USER ?= retrace
# The installed copy of config/retrace-server.conf, refreshed by every make
# (readable by the service user even when the checkout is not).
CONFIG ?= $(VENV)/share/retrace-server/retrace-server.conf
LISTEN ?= 127.0.0.1:8443
PYTEST_ARGS ?=

.PHONY: run test setup system-packages venv install service-user unit integration bench

run: setup
	$(VENV)/bin/retrace-server-httpd --config $(CONFIG) --listen $(LISTEN) --user $(SERVICE_USER)

test: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS) tests

unit: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS) tests/unit

integration: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS) tests/integration

setup: system-packages install service-user

system-packages:
	sh scripts/install-system-packages

$(PYTHON):
	mkdir -p $(dir $(VENV)) && /usr/bin/python3 -m venv --system-site-packages $(VENV)

venv: $(PYTHON)

# Reinstalled on every run (a second or two) so that Apache's daemon
# processes, which import the installed copy, always serve this checkout.
install: venv
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "celery>=5.4,<6" "vermin==1.9.2"
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation --disable-pip-version-check .
	rm -rf build retrace_server.egg-info
	$(PYTHON) scripts/make-manpages $(VENV)/share/man >/dev/null
	$(PYTHON) scripts/make-completions $(VENV)/share/bash-completion/completions >/dev/null

service-user:
	id -u $(SERVICE_USER) >/dev/null 2>&1 || useradd --system --user-group \
		--home-dir /var/lib/$(SERVICE_USER) --shell /usr/sbin/nologin $(SERVICE_USER)
	id -u retrace-debuginfod >/dev/null 2>&1 || useradd --system --user-group \
		--home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin retrace-debuginfod

bench: setup
	$(PYTHON) bench/api.py
	$(PYTHON) bench/retrace.py
	$(PYTHON) bench/environments.py
	$(PYTHON) bench/mock.py
	$(PYTHON) bench/debuginfod.py
	$(PYTHON) bench/cluster.py
	$(PYTHON) bench/vmcore.py
	$(PYTHON) bench/dispatch.py
	$(PYTHON) bench/reposync.py
	$(PYTHON) bench/debian.py
	$(PYTHON) bench/metadata_only.py
	$(PYTHON) bench/architectures.py
	$(PYTHON) bench/interact.py
	$(PYTHON) bench/vmcore_intake.py
	$(PYTHON) bench/manager.py
	$(PYTHON) bench/reports.py
	$(PYTHON) bench/slow_clients.py
