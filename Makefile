# Two commands do all the set-up on a fresh machine:
#   make book   creates .venv if needed, then builds the book into _build/html
#   make test   creates .venv if needed, then runs every test
# While working: make lint (ruff, as CI runs it first) and make test-fast
# (every test but the slow ones: no book build, browser or nbgrader; < 2 min).
# Everything is pinned by constraints.txt (torch==2.13.0, a CPU build here).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# pytest's own options for a run by hand, e.g. make test PYTEST_ARGS="-k staged"
PYTEST_ARGS ?=

.PHONY: all venv test test-fast lint book pdf clean help mathjax chromium

all: test

help:
	@echo "make book   build the book into _build/html (open _build/html/index.html)"
	@echo "make pdf    the whole book as one PDF: _build/pdf/book.pdf"
	@echo "make test   run every test"
	@echo "make test-fast  every test but the slow ones (no book build, browser or nbgrader)"
	@echo "make lint   ruff check (pyproject.toml's rules), as CI runs it first"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# MathJax 3 from npm, pinned by package-lock.json, copied where the book serves
# it from (html_extra_path), so that no page needs the network.
MATHJAX     := book/_extra/mathjax/tex-mml-chtml.js
MATHJAX_SRC := node_modules/mathjax/es5
$(MATHJAX): package.json package-lock.json
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq npm)
	npm ci --no-audit --no-fund --loglevel=error
	rm -rf book/_extra/mathjax
	mkdir -p book/_extra/mathjax/output/chtml/fonts book/_extra/mathjax/input/tex
	cp $(MATHJAX_SRC)/tex-mml-chtml.js book/_extra/mathjax/
	cp -r $(MATHJAX_SRC)/output/chtml/fonts/woff-v2 book/_extra/mathjax/output/chtml/fonts/
	cp -r $(MATHJAX_SRC)/input/tex/extensions book/_extra/mathjax/input/tex/
	cp node_modules/mathjax/LICENSE book/_extra/mathjax/
	@touch $(MATHJAX)

mathjax: $(MATHJAX)

# Headless Chromium for the browser test and make pdf, pdftotext for the PDF
# test: Debian's packages (CI runs as root).
chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium) \
	  || echo "warning: could not install chromium; the browser test will be skipped"
	@test -x /usr/bin/pdftotext || (apt-get update -qq && apt-get install -y -qq poppler-utils) \
	  || echo "warning: could not install poppler-utils; the PDF test will be skipped"

book: $(STAMP) $(MATHJAX)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going --all
	@echo "The book is in _build/html/index.html"

# The whole book as one PDF, offline: the single-page HTML (same strict flags,
# same execution cache as make book) printed by Debian's chromium once MathJax
# has typeset it (book/_ext/book_pdf.py).
pdf: $(STAMP) $(MATHJAX) chromium
	$(VENV)/bin/jupyter-book build . --builder custom --custom-builder singlehtml -W -n --keep-going
	$(PY) book/_ext/book_pdf.py _build/singlehtml _build/pdf/book.pdf
	@echo "The book is in _build/pdf/book.pdf"

# Two pytest-xdist workers (the 2 cores CI has), one test module per worker at a
# time (--dist loadfile: a module-scoped fixture, e.g. a graded course, is made
# once), the longest modules first (tests/conftest.py's LONGEST_FIRST; xdist's
# own reordering is off). The book's readers take turns on one build (tests/_book.py's lock).
# (--dist loadgroup would be finer, but with pytest 9.2 and xdist 3.8 it ignores
# xdist_group marks: measured.)
TEST_WORKERS ?= 2
test: $(STAMP) $(MATHJAX) chromium bwrap
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

# Needs neither MathJax nor chromium: the slow tests are the ones that would.
# Two pytest-xdist workers: the 2 cores CI and the team machines have.
FAST_WORKERS ?= 2
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" -n $(FAST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf _build .pytest_cache .hypothesis book/_extra/mathjax test-artifacts

# ---- The nbgrader course (assignments/README.md). Plain nbgrader, run in
# assignments/ with the venv's tools on PATH; A picks the assignment.
A ?= bn_forward
COURSE_ASSIGNMENTS := bn_forward bn_backward_graph bn_backward_fast bn_spatial_layernorm
IN_COURSE = cd $(COURSE) && PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

.PHONY: grade-demo generate autograde feedback export-grades bwrap bench-autograde report

grade-demo: $(STAMP)   ## the whole cycle on sample submissions, in /tmp/bnkit-grade-demo
	$(PY) assignments/course.py demo --dest /tmp/bnkit-grade-demo

generate: $(STAMP)     ## release/<A>/ for every assignment (solutions, hidden tests removed)
	$(IN_COURSE) && for a in $(COURSE_ASSIGNMENTS); do nbgrader generate_assignment $$a --force || exit 1; done

# The course's kernels run in bubblewrap with a seccomp filter compiled by libseccomp at run time
# (bngrade/sandbox*.py): Debian's bubblewrap and libseccomp2 (CI runs as root).
bwrap:
	@test -x /usr/bin/bwrap || (apt-get update -qq && apt-get install -y -qq bubblewrap) \
	  || echo "warning: could not install bubblewrap; autograde will refuse to run (see assignments/README.md)"
	@ldconfig -p | grep -q 'libseccomp\.so\.2' || (apt-get update -qq && apt-get install -y -qq libseccomp2) \
	  || echo "warning: could not install libseccomp2; autograde will refuse to run (see assignments/README.md)"

# Parallel autograde: JOBS students at a time, each in a scratch copy of COURSE,
# a progress bar, then the results merged into COURSE/gradebook.db by nbgrader.
JOBS   ?= $(shell nproc 2>/dev/null || echo 1)
COURSE ?= assignments
# ENGINE=dask SCHEDULER=tcp://host:8786 grades on a Dask cluster instead; a killed run resumes
# (results kept in $(COURSE)/.bngrade-results; FRESH=1 grades everyone again).
ENGINE    ?= local
SCHEDULER ?=
FRESH     ?=
autograde: $(STAMP) bwrap  ## autograde $(COURSE)/submitted/*/$(A), $(JOBS) at a time (or ENGINE=dask), then the grades
	$(PY) -m bngrade.autograde run $(A) --course $(COURSE) --jobs $(JOBS) --engine $(ENGINE) \
	  $(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(if $(FRESH),--fresh)

# JOBS=1 against JOBS=2 (alternating rounds, CPU seconds from a cgroup), then synthetic classes of
# SIZES students (time, median/p95 per submission, merge per student, memory) with a plot.
SIZES ?= 100,300,1000
bench-autograde: $(STAMP) bwrap  ## JOBS=1 vs 2, then classes of $(SIZES) -> test-artifacts/bench-*.json, .png
	@mkdir -p test-artifacts
	$(PY) -m bngrade.autograde bench $(A) --course $(COURSE) --students 20 --out test-artifacts/bench-autograde.json
	$(PY) -m bngrade.bench $(A) --course $(COURSE) --sizes $(SIZES) --out test-artifacts/bench-class.json

report: $(STAMP)  ## reports/$(A)/index.html: the class report (scores, cases, mistakes, integrity, near-copies)
	$(PY) -m bngrade.report $(A) --course $(COURSE) --out reports/$(A)/index.html

feedback: $(STAMP)     ## feedback/<student>/$(A)/*.html, hidden tests removed
	$(IN_COURSE) && nbgrader generate_feedback $(A) --force

# ROSTER=<the CSV Canvas exports from its Gradebook>: also $(COURSE)/canvas_grades.csv, Canvas's import file
ROSTER ?=
export-grades: $(STAMP) ## $(COURSE)/grades.csv (nbgrader's); with ROSTER=canvas.csv also canvas_grades.csv
	$(IN_COURSE) && nbgrader export $(if $(ROSTER),--exporter=bngrade.export_canvas.CanvasExportPlugin \
	  --CanvasExportPlugin.roster=$(abspath $(ROSTER)))
# ---- The course on a real JupyterHub (hub/hub.py; README "Running the course for a class").
# As root: creates the demo's Unix accounts (printed passwords), a venv for the hub and the users'
# servers from Debian's python3, the course directory and the exchange; installs python3-venv,
# bubblewrap and nodejs with apt-get when missing. Ctrl-C stops everything it started.
HUB_ROOT        ?= /srv/bnkit-hub
HUB_VENV        ?= /opt/bnkit-hub/venv
HUB_PORT        ?= 8000
HUB_USER_PREFIX ?= bnk-
HUB_STUDENTS    ?= 3
HUB_ENV = HUB_ROOT=$(HUB_ROOT) HUB_VENV=$(HUB_VENV) HUB_PORT=$(HUB_PORT) \
          HUB_USER_PREFIX=$(HUB_USER_PREFIX) HUB_STUDENTS=$(HUB_STUDENTS)
CHP := node_modules/.bin/configurable-http-proxy
$(CHP): package.json package-lock.json
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq npm)
	npm ci --no-audit --no-fund --loglevel=error
	@touch $(CHP)

.PHONY: hub hub-detach hub-stop hub-clean hub-load
hub: $(STAMP) $(CHP) bwrap   ## JupyterHub for the course on http://127.0.0.1:$(HUB_PORT)/ (Ctrl-C stops it)
	$(HUB_ENV) $(PY) hub/hub.py start

hub-detach: $(STAMP) $(CHP) bwrap  ## the same, in the background (make hub-stop)
	$(HUB_ENV) $(PY) hub/hub.py start --detach

hub-stop:              ## stop a detached hub and every server it started
	$(HUB_ENV) $(PY) hub/hub.py stop

hub-clean:             ## stop, then remove the accounts, their homes and $(HUB_ROOT)
	$(HUB_ENV) $(PY) hub/hub.py clean

# Load: N simulated students log in, fetch and submit at once (N = 10 30 60), against 127.0.0.1 only.
hub-load: $(STAMP) $(CHP) bwrap
	$(PY) hub/load.py --out-dir test-artifacts/hub
