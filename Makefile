# The two commands of the README are `make demo` and `make test`.
BIN := .venv/bin
DEMO := data/demo
export PYSPARK_PYTHON := $(CURDIR)/$(BIN)/python

.PHONY: setup demo test lint ui cassandra spark-cluster

setup:
	@scripts/setup.sh

## Simulate the demo world and materialize the weekly graph for its last training week.
demo: setup
	$(BIN)/dw simulate --out $(DEMO) --preset small
	$(BIN)/dw run --lake $(DEMO)

## Set up, start the single-node Cassandra the store tests use, and run the whole test suite (what CI runs).
test: setup
	$(BIN)/ruff check dw_assets dw_assets_tests
	$(BIN)/dagster definitions validate -w workspace.yaml
	@scripts/cassandra.sh start
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check dw_assets dw_assets_tests

## Browse the demo's runs, assets, partitions and checks at http://127.0.0.1:3000
ui: setup
	DAGSTER_HOME=$(CURDIR)/$(DEMO)/dagster_home DW_LAKE=$(CURDIR)/$(DEMO) $(BIN)/dagster dev -w workspace.yaml

## Start the project's single-node Cassandra 5.0 on 127.0.0.1:9042 (scripts/cassandra.sh; also stop|status).
cassandra:
	@scripts/cassandra.sh start

## Start a Spark standalone cluster on loopback from the pinned pyspark: master spark://127.0.0.1:7077, three 1-core
## workers (scripts/spark-cluster.sh; also stop|status). Run on it: DW_SPARK_MASTER=spark://127.0.0.1:7077 dw run ...
spark-cluster: setup
	@scripts/spark-cluster.sh start
