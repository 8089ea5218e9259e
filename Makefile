# kakuin: two commands on a fresh Debian machine.
#   make run   set everything up (apt packages, venv, key ceremony under ./var) and serve
#   make test  same setup, then the whole test suite
PYTHON ?= python3
VENV   ?= .venv
HOME_DIR ?= var
BIN    := $(VENV)/bin
# Test processes (pytest-xdist; files stay whole on one worker, each worker its own token).
TEST_WORKERS ?= 2
APT_PACKAGES := softhsm2 opensc openssl poppler-utils qpdf fonts-ipaexfont-gothic
# Only for the test suite (headless browser checks of /verify and the console; Node.js 20
# with npm (NodeSource, or Debian 13's nodejs + npm) for the test OpenID Connect provider in
# tests/oidc; certutil for the pdfsig trust check; nginx for tests/test_cluster.py) and
# bench/ocsp.py.
APT_TEST_PACKAGES := chromium chromium-driver nodejs wrk libnss3-tools nginx
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test setup apt venv init lint bench demo clean cluster cluster-stop

run: setup init
	$(BIN)/kakuin --home $(HOME_DIR) serve

test: setup
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(APT_TEST_PACKAGES)"
	@test tests/oidc/node_modules/.package-lock.json -nt tests/oidc/package-lock.json || \
	  (cd tests/oidc && npm ci --no-audit --no-fund --silent)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

setup: apt venv

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

# The key ceremony runs once; afterwards `kakuin init` would refuse to overwrite.
init: setup
	@test -f $(HOME_DIR)/pki/chain.pem || $(BIN)/kakuin --home $(HOME_DIR) init

lint: venv
	$(BIN)/ruff check hsm ca signing kakuin tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/hsm_sign.py

# Two regions end to end; leaves sealed files and report.html under var/demo/.
demo: setup
	$(BIN)/python scripts/demo.py

# nginx on 127.0.0.1:8080 in front of 3 nodes on 8081-8083 sharing $$KAKUIN_DATABASE_URL
# (default: PostgreSQL database "kakuin" on 127.0.0.1, created if missing) and one token
# under $(CLUSTER_HOME). Pids in $(CLUSTER_HOME)/cluster/*.pid; cluster-stop stops those.
CLUSTER_HOME ?= var/cluster
cluster: setup
	@$(MAKE) --no-print-directory apt APT_PACKAGES=nginx
	$(BIN)/python scripts/cluster.py start --home $(CLUSTER_HOME)

cluster-stop:
	$(BIN)/python scripts/cluster.py stop --home $(CLUSTER_HOME)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
