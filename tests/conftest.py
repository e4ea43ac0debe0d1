"""Shared test set-up: a reproducible hypothesis profile.

CI (CI set in the environment) uses the derandomized 'ci' profile, so the
same examples run on every machine; by hand, 'dev' explores new ones.
"""
import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, max_examples=60, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# Without a GPU, bnkit's Triton kernels run in Triton's interpreter on CPU
# tensors. Triton reads TRITON_INTERPRET once, when it is first imported, so it
# is set here, before any test module can import triton (tests/_triton.py).
if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch

        _CUDA = torch.cuda.is_available()
    except ImportError:
        _CUDA = False
    if not _CUDA:
        os.environ["TRITON_INTERPRET"] = "1"


# `make test` runs on two pytest-xdist workers with --dist loadgroup. A module's
# tests stay together on one worker (their module-scoped fixtures, e.g. a graded
# course, are made once), and every module that builds the book shares one
# group, so the strict build runs once (tests/_book.py) and its readers follow it.
@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config, items):
    uses_book = {}
    for item in items:
        path = item.path
        if path not in uses_book:
            uses_book[path] = "import _book" in path.read_text()
        item.add_marker(pytest.mark.xdist_group("book" if uses_book[path] else path.stem))
