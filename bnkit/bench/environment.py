"""What the figures were measured on: versions, device and CPU names."""
import datetime
import importlib.metadata
import os
import platform
from typing import Dict


def environment(device: str) -> Dict[str, object]:
    """The metadata every figure file carries (the performance chapter prints it)."""
    meta = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        python=platform.python_version(), numpy=_version("numpy"), machine=platform.machine(),
        cpu=platform.processor() or platform.machine(), device=device,
    )
    try:
        import torch

        meta["torch"] = torch.__version__
        meta["torch_threads"] = torch.get_num_threads()
        if device == "cuda":
            meta["device_name"] = torch.cuda.get_device_name()
            meta["cuda"] = torch.version.cuda
            meta["cudnn"] = torch.backends.cudnn.version()
        else:
            meta["device_name"] = cpu_name()
    except ImportError:
        meta["device_name"] = cpu_name()
    try:  # read from the installed metadata: importing triton would fix its interpreter mode
        meta["triton"] = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        pass
    return meta


def _version(module: str) -> str:
    return __import__(module).__version__


def cpu_name() -> str:
    """The CPU's model name and core count (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"
