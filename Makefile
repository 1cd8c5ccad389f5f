# process-ai-tasks: an AI task queue for Supabase and plain PostgreSQL.
# `make` lists the targets. Everything installs what it needs on first use.

SHELL := /bin/bash
.DEFAULT_GOAL := help

DENO_VERSION := 2.9.6
DBMATE_VERSION := 2.36.0
TOOLS := $(CURDIR)/.tools
export PATH := $(TOOLS)/node_modules/.bin:$(CURDIR)/node_modules/.bin:$(PATH)
export DENO_NO_UPDATE_CHECK := 1

# Tests always run on the local cluster, in a scratch database they rebuild,
# never on DATABASE_URL (which may be a real project).
PGPORT ?= 54329
TEST_DB := ai_tasks_test
LOCAL_URL := postgres://postgres@127.0.0.1:$(PGPORT)
TEST_URL := $(LOCAL_URL)/$(TEST_DB)

.PHONY: help tools db db-stop migrate run seed worker lint test test-sql test-concurrency \
        test-fairness test-runner test-db clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' '{ printf "  make %-18s %s\n", $$1, $$2 }'

TOOLS_STAMP := $(TOOLS)/.deno-$(DENO_VERSION)-dbmate-$(DBMATE_VERSION)

tools: node_modules/.installed $(TOOLS_STAMP) ## Install npm packages, Deno and dbmate

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

# Deno and dbmate from npm, in a prefix of their own: in the project's
# node_modules `deno task` takes Deno's binary for a script, and dbmate's
# platform packages are not all on every registry mirror, which breaks the
# lock file for `npm ci`.
$(TOOLS_STAMP):
	npm install --prefix $(TOOLS) --no-audit --no-fund --no-save \
	  deno@$(DENO_VERSION) dbmate@$(DBMATE_VERSION)
	@touch $@

db: ## Start the local PostgreSQL 15 (installs it when missing)
	@scripts/db.sh start

db-stop: ## Stop the local PostgreSQL
	@scripts/db.sh stop

migrate: tools db ## Apply migrations and db/functions to DATABASE_URL or the local database
	@scripts/migrate.sh

seed: migrate ## Add a demo project with a queued chat_reply task when the database has none
	@deno task seed

run: seed ## The main job: start everything, then process tasks until Ctrl-C
	@deno task worker

test-db: tools
	@DATABASE_URL= scripts/db.sh start
	@psql -X -q "$(LOCAL_URL)/postgres" -c 'drop database if exists $(TEST_DB) with (force)' \
	  -c 'create database $(TEST_DB)'
	@DATABASE_URL="$(TEST_URL)" scripts/migrate.sh

test-sql: test-db ## pgTAP suite (db/tests) with pg_prove
	@psql -X -q "$(TEST_URL)" -c 'create extension if not exists pgtap'
	PGOPTIONS='--client-min-messages=error' \
	  pg_prove --dbname $(TEST_DB) --host 127.0.0.1 --port $(PGPORT) --username postgres \
	  --ext .sql -r db/tests

test-concurrency: test-db ## Many connections claiming and completing at once
	DATABASE_URL="$(TEST_URL)" deno task test:concurrency
	DATABASE_URL="$(TEST_URL)" deno task test:complete-batch

test-fairness: test-db ## Running caps, round-robin, model limits and 429 snoozes under load
	DATABASE_URL="$(TEST_URL)" deno task test:fairness

test-runner: test-db ## The runner's tests (deno test) against the local database
	DATABASE_URL="$(TEST_URL)" deno task test

lint: tools ## deno lint and deno fmt --check over the TypeScript
	deno lint
	deno fmt --check runner db chaos supabase bench/workers

test: lint test-sql test-concurrency test-fairness test-runner ## Everything, from nothing

# The chaos suite restarts the local cluster once (a few seconds): other
# users of the cluster see their connections drop. Its logs go to a temporary
# directory it prints; CHAOS_LOG_DIR chooses another.
CHAOS_DB := ai_tasks_chaos
.PHONY: test-chaos
test-chaos: tools ## Real workers vs. load, crashes, a DB restart, model faults, bad input (~6 min)
	@DATABASE_URL= scripts/db.sh start
	@psql -X -q "$(LOCAL_URL)/postgres" -c 'drop database if exists $(CHAOS_DB) with (force)' \
	  -c 'create database $(CHAOS_DB)'
	@DATABASE_URL="$(LOCAL_URL)/$(CHAOS_DB)" scripts/migrate.sh
	CHAOS_DATABASE_URL="$(LOCAL_URL)/$(CHAOS_DB)" deno run --allow-net --allow-env --allow-read \
	  --allow-write --allow-run --allow-sys chaos/run.ts

clean: db-stop ## Stop the database and remove it and the installed tools
	rm -rf .db $(TOOLS) node_modules

# The benchmark's peers are its own development dependencies (bench/package.json),
# never the project's.
.PHONY: bench
bench: tools bench/node_modules/.installed ## Benchmark against graphile-worker and pg-boss (figures, ~6 min)
	@DATABASE_URL= scripts/db.sh start
	node bench/run.mjs
	@echo "bench: EXPLAIN ANALYZE of the claim, 100,000 queued tasks over 1,000 projects"
	@psql -X -q "$(LOCAL_URL)/postgres" -c 'drop database if exists bench_claim with (force)' \
	  -c 'create database bench_claim'
	@DATABASE_URL="$(LOCAL_URL)/bench_claim" scripts/migrate.sh >/dev/null 2>&1
	@psql -X -q -v ON_ERROR_STOP=1 "$(LOCAL_URL)/bench_claim" -f db/fairness_bench.sql \
	  > bench/results/claim_explain.txt 2>&1
	@grep -A5 '=== mean of 200 claims' bench/results/claim_explain.txt
	@psql -X -q "$(LOCAL_URL)/postgres" -c 'drop database bench_claim with (force)'
	@echo "bench: plans in bench/results/claim_explain.txt"

bench/node_modules/.installed: bench/package.json bench/package-lock.json
	npm ci --prefix bench --no-audit --no-fund
	@touch $@
