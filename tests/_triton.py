"""What the Triton tests share: torch, the device, and a clean skip without Triton.

conftest.py has already chosen compiled kernels (CUDA) or Triton's
interpreter on CPU tensors (TRITON_INTERPRET=1) before triton was imported.
"""
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Triton kernels need it")
pytest.importorskip("triton", reason="triton is not installed: bnkit's Triton kernels cannot run")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
