# platestream: the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell md5sum pyproject.toml | cut -c1-8)

.PHONY: setup demo test lint unit bench bench-ab soak chaos stack-up stack-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

# Python deps (venv), Debian's redis-server (apt, when missing), Kafka jars from Maven Central (cached).
setup: $(STAMP)
	$(PY) -c "from streams.stack import ensure_redis_server, ensure_kafka_jars; ensure_redis_server(); ensure_kafka_jars()"

demo: setup
	$(PY) -m streams.cli demo

lint: setup
	$(VENV)/bin/ruff check
	$(VENV)/bin/mypy

# The whole suite: lint, kernel unit tests, then integration tests on a real Kafka + Redis started by the fixtures.
test: lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=10

unit: setup
	$(PY) -m pytest -q -m "not integration"

bench: setup
	$(VENV)/bin/pip install -q -e '.[dev,bench]'
	$(PY) -m benchmarks

# Did a change make the worker faster? It and REF (a git ref) take turns on one pre-filled topic.
bench-ab: setup
	$(PY) -m benchmarks.ab $(REF)

# 15 minutes at 10,000 reads/s through one worker: RSS curve and consumer lag -> benchmarks/results/soak-<date>.*
soak: setup
	$(VENV)/bin/pip install -q -e '.[dev,bench]'
	$(PY) -m benchmarks.soak

# The crash-injection scenarios of the suite, with their produced/stored/merged/dead-lettered/lost/duplicated
# table -> benchmarks/results/chaos-<date>.*
chaos: setup
	$(PY) -m benchmarks.chaos

stack-up: setup
	$(PY) -m streams.cli stack up

stack-down:
	$(PY) -m streams.cli stack down

clean:
	-$(PY) -m streams.cli stack down --wipe
	rm -rf $(VENV) .platestream
