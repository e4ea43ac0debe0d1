"""Build the book once, for test_book_build.py and test_book_browser.py.

The strict build (`jupyter-book build . -W -n --keep-going`, as `make book`)
runs at most once per pytest process. A file lock makes concurrent processes
(pytest-xdist) take turns; the second one finds the notebooks cached and
Sphinx's environment up to date, so its build is incremental and quick.

The book goes to the default `_build/html`; set BNKIT_BOOK_OUT to build
somewhere else (it then lands in $BNKIT_BOOK_OUT/_build/html).
"""
import fcntl
import functools
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("BNKIT_BOOK_OUT", ROOT)).resolve()
HTML = OUT / "_build" / "html"
ARTIFACTS = ROOT / "test-artifacts"
MATHJAX = ROOT / "book" / "_extra" / "mathjax" / "tex-mml-chtml.js"
BUILD_TIMEOUT_S = 25 * 60


@dataclass
class Build:
    returncode: int
    log: str
    seconds: float
    html: Path


def jupyter_book():
    """The jupyter-book script of this interpreter's environment."""
    here = Path(sys.executable).parent / "jupyter-book"
    return str(here) if here.exists() else shutil.which("jupyter-book")


def ensure_mathjax():
    """The local MathJax copy the book serves; `make mathjax` creates it."""
    if not MATHJAX.exists():
        subprocess.run(["make", "-s", "mathjax"], cwd=ROOT, check=False)
    return MATHJAX.exists()


def run_build(source, out=None, timeout=BUILD_TIMEOUT_S):
    """Run a strict jupyter-book build of `source`; return (returncode, log)."""
    # --all: a fresh Sphinx environment, so no page keeps stale cross-references
    # (sphinxcontrib-bibtex numbers citations per build); notebooks still come
    # from the execution cache.
    cmd = [jupyter_book(), "build", str(source), "-W", "-n", "--keep-going", "--all"]
    if out is not None:
        cmd += ["--path-output", str(out)]
    proc = subprocess.run(cmd, cwd=source, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@functools.lru_cache(maxsize=None)
def build_book():
    """Build the whole book strictly, once per process; returns a Build."""
    if not ensure_mathjax():
        return Build(2, f"MathJax is missing ({MATHJAX}) and `make mathjax` could not create it "
                        "(it needs npm)", 0.0, HTML)
    (OUT / "_build").mkdir(parents=True, exist_ok=True)
    with open(OUT / "_build" / ".bnkit-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        print(f"\nbuilding the book into {HTML} (a few minutes from scratch) ...", file=sys.stderr)
        start = time.perf_counter()
        returncode, log = run_build(ROOT, None if OUT == ROOT else OUT)
        seconds = time.perf_counter() - start
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "book-build.log").write_text(log)
    (ARTIFACTS / "book-build-seconds.txt").write_text(f"{seconds:.1f}\n")
    print(f"book build: exit code {returncode} after {seconds:.0f} s", file=sys.stderr)
    return Build(returncode, log, seconds, HTML)


def toc_files():
    """Every document named in _toc.yml, in reading order (the book extension's own walk)."""
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        from bnkit_book import toc_docnames
    finally:
        sys.path.pop(0)
    return toc_docnames(ROOT)

def html_pages(html=HTML):
    """The book's pages: one per document in the toc, plus the pages Sphinx
    adds (index, genindex, search). Stale files of an old build are ignored."""
    names = [f"{f}.html" for f in toc_files()] + ["index.html", "genindex.html", "search.html"]
    return [html / name for name in names]
