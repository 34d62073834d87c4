# recstack developer entry points. Everything runs inside .venv (created by `make install`).
#   make install   venv + torch (CPU) + recstack[dev,bench] pinned by constraints.txt; no-op when up to date
#   make test      the whole suite: unit, integration (real Redis/Kafka/gRPC) and e2e
#   make demo      train if needed, run the stack, show recommendations change with events (ARGS=...)
#   make up        the stack in the foreground until Ctrl-C (ARGS="--free-ports" ...)
#   make lint | protos | bench | k8s | tools | image | lock | clean | distclean
#   make k8s       render every overlay, validate it (kubernetes-validate --strict + CRD schemas), checkov
#   make bench     every `recstack bench` command, JSON into reports/bench/NAME.json

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.recstack-install.stamp
TORCH_VERSION := 2.13.0
# Extra pip arguments for the torch step, e.g. TORCH_PIP_ARGS="--index-url <PyTorch CPU wheel index>"
# on a machine whose registries would otherwise hand out the multi-GB CUDA build.
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
ARGS ?=
BENCH_OUT ?= reports/bench
# Python sources only (ruff would also format the Python blocks inside docs/*.md).
PY_PATHS := $(wildcard recstack services tests scripts bench)
# Manifest checkers (checkov, kubernetes-validate) live in their own venv: checkov's pins clash with
# constraints.txt. The CRD schemas for Strimzi/KEDA custom resources are npm packages (deploy/schemas).
TOOLS_VENV ?= .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.recstack-tools.stamp
SCHEMAS_STAMP := deploy/schemas/node_modules/.recstack-schemas.stamp
K8S_TARGETS := $(patsubst %/,%,$(wildcard deploy/k8s/overlays/*/)) deploy/k8s/train-distributed

.PHONY: install test test-redis-cluster demo up lint format protos bench k8s tools image lock clean distclean

install: $(STAMP) tools

tools: $(TOOLS_STAMP) $(SCHEMAS_STAMP)

$(TOOLS_STAMP): deploy/tools-requirements.txt
	@test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r deploy/tools-requirements.txt
	@touch $@

$(SCHEMAS_STAMP): deploy/schemas/package.json deploy/schemas/package-lock.json
	cd deploy/schemas && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	@touch $(STAMP)

test: install
	$(BIN)/pytest tests $(PYTEST_ARGS)

# The stream's exactly-once / dead-letter / rebuild tests, the bandit's Redis tests and the gateway
# with the bandit, against an embedded 3-master Redis Cluster instead of one redis-server.
REDIS_CLUSTER_TESTS = tests/integration/test_redis_cluster.py \
	tests/integration/test_stream_exactly_once.py \
	tests/integration/test_stream_worker.py::test_worker_writes_features_dead_letters_and_dedups \
	tests/integration/test_stream_worker.py::test_an_event_of_a_megabyte_is_dead_lettered_truncated_and_never_stalls_the_partition \
	tests/integration/test_stream_fuzz.py tests/integration/test_stream_rebuild.py \
	tests/integration/test_stream_two_workers.py tests/integration/test_bandit_rewards.py \
	tests/integration/test_linucb_redis.py tests/integration/test_ab_report_redis.py \
	tests/integration/test_bandit_online.py
test-redis-cluster: install
	RECSTACK_TEST_REDIS=cluster $(BIN)/pytest $(REDIS_CLUSTER_TESTS) $(PYTEST_ARGS)

demo: install
	$(BIN)/recstack demo $(ARGS)

up: install
	$(BIN)/recstack up $(ARGS)

lint: install
	$(BIN)/ruff check $(PY_PATHS)
	$(BIN)/ruff format --check $(PY_PATHS)

format: install
	$(BIN)/ruff format $(PY_PATHS)
	$(BIN)/ruff check --fix $(PY_PATHS)

protos: install
	$(BIN)/python scripts/gen_protos.py

bench: install
	@mkdir -p $(BENCH_OUT)
	$(BIN)/recstack bench --help >/dev/null
	@for cmd in $$($(BIN)/python -c "from recstack.cli import bench_app; print(' '.join(n for c in bench_app.registered_commands if (n := c.name or c.callback.__name__.replace('_', '-')) != 'doc'))"); do \
		echo "recstack bench $$cmd"; \
		$(BIN)/recstack bench $$cmd --json $(ARGS) > $(BENCH_OUT)/$$cmd.json || exit 1; \
	done

# Render every kustomize overlay and the distributed training Job (kubectl has kustomize built in),
# validate each (built-in kinds strictly, Strimzi/KEDA resources against their CRD schemas) and run
# checkov on it (0 failed checks; skips only by annotations with a reason in the manifests).
k8s: install
	@mkdir -p reports/k8s
	@for t in $(K8S_TARGETS); do \
		name=$$(basename $$t); $(BIN)/kubectl kustomize $$t > reports/k8s/$$name.yaml || exit 1; \
		echo "reports/k8s/$$name.yaml"; \
	done
	$(TOOLS_VENV)/bin/python scripts/k8s_validate.py --quiet $(foreach t,$(K8S_TARGETS),reports/k8s/$(notdir $(t)).yaml)
	@for t in $(K8S_TARGETS); do \
		name=$$(basename $$t); echo "checkov reports/k8s/$$name.yaml"; \
		$(TOOLS_VENV)/bin/checkov --framework kubernetes --skip-download -f reports/k8s/$$name.yaml --quiet --compact || exit 1; \
	done

# One image for all processes; needs a Docker engine (none on the CI machines).
image:
	docker build -f deploy/Dockerfile -t recstack:$(or $(TAG),dev) .

# Regenerate the lock from the current venv (local version labels such as +cpu are dropped so that
# the pins also match the same release from another index).
lock:
	@test -x $(BIN)/python || { echo "no $(VENV); run make install first" >&2; exit 1; }
	@{ echo "# Generated by \`make lock\` from a working .venv; \`make install\` installs with -c constraints.txt."; \
	   $(BIN)/python -m pip freeze --exclude-editable --disable-pip-version-check \
	     | grep -v -i -E '^(recstack|pip|setuptools|wheel)==' | sed -E 's/\+[A-Za-z0-9.]+$$//'; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt
	@echo "constraints.txt: $$(grep -c '==' constraints.txt) pins"

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info .stack reports/bench
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(TOOLS_VENV) deploy/schemas/node_modules
