"""Shared test set-up: a reproducible hypothesis profile.

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

