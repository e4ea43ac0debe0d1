# Two commands do all the set-up on a fresh machine:
#   make book   creates .venv if needed, then builds the book into _build/html
#   make test   creates .venv if needed, then runs every test
# Everything is pinned by constraints.txt (torch==2.13.0, a CPU build here).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# pytest's own options for a run by hand, e.g. make test PYTEST_ARGS="-k staged"
PYTEST_ARGS ?=

.PHONY: all venv test book clean help

all: test

help:
	@echo "make book   build the book into _build/html (open _build/html/index.html)"
	@echo "make test   run every test"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The book is in _build/html/index.html"

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf _build .pytest_cache .hypothesis
