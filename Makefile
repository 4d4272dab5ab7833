# Run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR := .cache/run
# The local stack (devstack) accepts any AWS credentials; real ones come from your AWS chain.
LOCAL_AWS := AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1

.PHONY: help install up down run run-bookings autoscale test test-guarantees test-unit test-kinesis test-image image chaos soak bench bench-peers lint fmt deploy clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PYTHONWARNINGS=ignore $(PY) -m pip install -q -e '.[dev]'  # quiet: setuptools warns on every editable install
	touch $@

# The optional native Kafka reader (native/, connectors/transports/kafka_native.py), built when cargo is
# on PATH: pyo3 only, librdkafka is confluent-kafka's own. Without cargo, install still succeeds; a
# failed build uninstalls the one built before, which would not match the sources.
NATIVE_SOURCES := native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs)
$(VENV)/.native: $(VENV)/.installed $(NATIVE_SOURCES)
	@if command -v cargo >/dev/null; then \
		rm -rf .cache/native-wheel && mkdir -p .cache \
		&& $(VENV)/bin/maturin build --release --locked -m native/Cargo.toml -i $(PY) -o .cache/native-wheel \
			> .cache/native-build.log 2>&1 \
		&& $(PY) -m pip install -q --no-deps --force-reinstall .cache/native-wheel/waxstreams_native-*.whl \
		&& touch $@ \
		|| { $(PY) -m pip uninstall -q -y waxstreams-native >/dev/null 2>&1; \
			echo "the optional native Kafka reader did not build (.cache/native-build.log): the default reader is used"; }; \
	else echo "cargo not on PATH: the optional native Kafka reader is not built (the default reader is used)"; fi

install: $(VENV)/.installed $(VENV)/.native ## Create .venv with the project and its dev tools (and the native reader if cargo is there)

up: install ## Start the local Kafka broker, S3 server and Kinesis (idempotent)
	$(PY) -m devstack up

down: ## Stop the local stack
	@if [ -x $(PY) ]; then $(PY) -m devstack down; fi

run: install ## Fresh local stack, 5,000 generated events over 2 h of event time, the job, its output
	$(PY) -m devstack reset
	$(PY) -m devstack up
	$(PY) -m producers.movie_impressions --count 5000 --rate 0 --start-minutes-ago 150 --step-ms 1440 \
		--movies 12 --users 40 --invalid-fraction 0.02 --late-fraction 0.01 --seed 7
	rm -rf $(RUN_DIR)/recovery
	$(PY) -m connectors.recovery_store init $(RUN_DIR)/recovery --partitions 1
	$(LOCAL_AWS) BOUNDED=true $(PY) -m bytewax.run dataflows.movie_impressions:flow -r $(RUN_DIR)/recovery -s 2 -b 0
	$(LOCAL_AWS) $(PY) -m devstack.report
	@echo "The local stack is still up: 'make down' stops it."

TRANSPORT ?= kafka
run-bookings: up ## 2,000 generated bookings through the booking-correlation job (TRANSPORT=kafka or kinesis)
	$(LOCAL_AWS) $(PY) -m producers.bookings --transport $(TRANSPORT) --count 2000 --rate 0 --start-minutes-ago 60 --step-ms 1000 \
		--invalid-fraction 0.01
	rm -rf $(RUN_DIR)/bookings
	$(PY) -m connectors.recovery_store init $(RUN_DIR)/bookings --partitions 1
	$(LOCAL_AWS) TRANSPORT=$(TRANSPORT) BOUNDED=true $(PY) -m bytewax.run dataflows.booking_correlation:flow \
		-r $(RUN_DIR)/bookings -s 2 -b 0
	$(LOCAL_AWS) TRANSPORT=$(TRANSPORT) $(PY) -m devstack.report bookings

autoscale: up ## JOB as local processes scaling on their CPU (KDA's rule, 5-s periods; load it with the producers)
	$(LOCAL_AWS) $(PY) -m devstack.autoscale --job $(JOB) --min 1 --max 2

TEST_WORKERS ?= 3  # most of a test's time is waiting on brokers, lateness bounds and restarts: 3 fill 2 cores
PYTEST_ARGS ?=  # e.g. PYTEST_ARGS="-x --durations=20"
test: lint ## Lint, then every test (unit, integration, e2e); starts and stops its own services
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)  # whole files per worker, each with its own services, slowest tiers first (tests/conftest.py)

test-guarantees: install ## Only the crash, lag, outage, bad-input and secrets tests, with 10,000 hostile messages per job
	HOSTILE_MESSAGES=10000 $(PY) -m pytest -m guarantees

test-unit: install ## The quick tier: tests that need no services (unit, and whole jobs in-process), ~1 min
	$(PY) -m pytest tests/unit tests/inprocess

test-kinesis: install ## Only the Kinesis connector tests (starts and stops its own kinesis-local)
	$(PY) -m pytest tests/unit/test_kinesis_connectors.py tests/unit/test_kinesis_shard_tracker.py \
		tests/unit/test_kinesis_reader.py tests/integration/test_kinesis_source.py tests/integration/test_kinesis_sink.py

CHAOS_MINUTES ?= 20
chaos: install ## Random crash, stall and outage sequences for every output kind, readers watching (CHAOS_MINUTES, default 20)
	CHAOS_MINUTES=$(CHAOS_MINUTES) $(PY) -m pytest tests/chaos -m chaos -n 2 --dist load -p no:cacheprovider

soak: install ## The local autoscaler under a load ramp: up while busy, down once quiet, output exact (a quiet machine)
	$(PY) -m pytest tests/soak -m soak -s -p no:cacheprovider

IMAGE ?= localhost/waxstreams:latest
image: ## Build the job image with buildah (installs buildah/debootstrap; a Debian-built base if the official cannot be pulled)
	IMAGE=$(IMAGE) image/build.sh $(IMAGE)

test-image: install ## Build the image and run both jobs from it as uid 10001 against a local Kafka and S3 (root, buildah)
	$(PY) -m pytest -m image tests/image

bench: up ## Throughput, memory, latency and the per-event cost breakdown vs the ceilings (about 20 min)
	$(PY) -m bench --out bench-results.json
	$(PY) -m bench.report  # the results into docs/performance.md

JOB ?= movie-impressions
deploy: ## Deploy JOB (movie-impressions | booking-correlation) with waxctl if installed, else kubectl -k
	PYTHON=$(PY) k8s/deploy.sh $(JOB)

PEERS := .cache/peers
FLINK := .cache/pyflink
FLINK_KAFKA_JAR := .cache/peer-jars/flink-sql-connector-kafka-5.0.0-2.2.jar
bench-peers: up ## Quix Streams and PyFlink SQL on the same topic as `make bench` (own venvs: heavy installs)
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q quixstreams==3.28.1  # not the project: Quix pins an older confluent-kafka
	PYTHONPATH=. $(PEERS)/bin/python -m bench.peers
	PYTHONPATH=. $(PEERS)/bin/python -m bench.peers --small-topic bench-high-2h-1000000  # steady state
	test -x $(FLINK)/bin/python || $(PYTHON) -m venv $(FLINK)
	$(FLINK)/bin/pip install -q apache-flink==2.3.0
	test -f $(FLINK_KAFKA_JAR) || mvn -q -B dependency:copy -Dartifact=org.apache.flink:flink-sql-connector-kafka:5.0.0-2.2 \
		-DoutputDirectory=.cache/peer-jars
	PYTHONPATH=. $(FLINK)/bin/python -m bench.flink_peer --jar $(abspath $(FLINK_KAFKA_JAR))
	PYTHONPATH=. $(FLINK)/bin/python -m bench.flink_peer --jar $(abspath $(FLINK_KAFKA_JAR)) \
		--small-topic bench-high-2h-1000000  # steady state

lint: install ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy dataflows connectors

fmt: install ## Format and auto-fix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: down ## Remove caches, the venv and local stack data
	rm -rf .cache $(VENV)
