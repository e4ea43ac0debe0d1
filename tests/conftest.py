"""Shared test set-up: a reproducible hypothesis profile, and the longest modules first.

CI (CI set in the environment) uses the derandomized 'ci' profile, so the
same examples run on every machine; by hand, 'dev' explores new ones.
"""
import os

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



# make test hands whole modules to two xdist workers (--dist loadfile --no-loadscope-reorder) in this order:
# the longest first, so that both start at once and the many short modules fill in at the end. xdist's own
# order (most tests first) left the one-test cold book build and the hub to the end, one worker busy while the
# other had nothing left, or waited on the book. Seconds from an idle CI run.
LONGEST_FIRST = (
    "test_assignments.py",  # the catalogue graded through nbgrader, the regrade, the run at load: ~950 s
    "test_book_build.py",  # the cold strict build (~575 s), which the book's other readers then reuse
    "test_hub.py", "test_autograde_scale.py", "test_student_setup.py", "test_book_browser.py",  # 150-230 s each
    "test_autograde_parallel.py", "test_grading.py", "test_submission_file.py", "test_inert_html.py",
    "test_book_pdf.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order
