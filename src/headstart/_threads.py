"""How many threads each pool gets, decided in one place (private; imports nothing of ours).

Every pool is sized to the cores this process may run on (its CPU affinity, which
containers and ``taskset`` set), or to ``HEADSTART_THREADS`` / ``headstart --threads N``:
the decode threads, OpenVINO's inference threads and PyTorch's intra-op threads (one
inter-op thread). OpenMP threads wait passively instead of spinning, so that on a machine
where other work runs they give their core back instead of burning it; small head fits run
on one thread (see :mod:`headstart.heads.base`).
"""

from __future__ import annotations

import os
import sys

__all__ = ["before_torch", "cores", "openvino_config", "size_torch"]

_sized = False


def cores(limit: int = 64) -> int:
    """Threads a pool may use: ``HEADSTART_THREADS`` if set, else the cores in this
    process's CPU affinity (at most ``limit``)."""
    env = os.environ.get("HEADSTART_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return min(limit, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(limit, n))


def before_torch() -> None:
    """Ask OpenMP for passive waits and sized pools; must run before PyTorch is imported
    (OpenMP reads its environment once). Settings the user made are kept."""
    if "torch" in sys.modules:
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", str(cores()))
    os.environ.setdefault("MKL_NUM_THREADS", str(cores()))


def size_torch() -> None:
    """PyTorch's intra-op pool to :func:`cores` threads and one inter-op thread (once)."""
    global _sized
    if _sized:
        return
    import torch

    torch.set_num_threads(cores())
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # parallel work has started already: the default stays
        pass
    _sized = True


def openvino_config() -> dict[str, str]:
    """OpenVINO compile settings: as many inference threads as :func:`cores`."""
    return {"INFERENCE_NUM_THREADS": str(cores())}
