"""Where and how a run executes: the device (CUDA when present), bf16 autocast and TF32 on CUDA, and the
process group under ``torchrun`` (ranks, a timeout that says what it means, work one rank does alone).
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch


def select_device(preference: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; any other value is passed to ``torch.device``.

    Under ``torchrun`` (``LOCAL_RANK`` set) ``"auto"`` picks this process's own GPU.
    """
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(preference)


DIST_TIMEOUT_VARIABLE = "WORKBENCH_DIST_TIMEOUT"  # seconds a process waits for the others at a collective
DEFAULT_DIST_TIMEOUT = 3600  # long enough for rank 0 to pretrain the embedded models alone on a slow machine
_alone = threading.local()


def dist_timeout() -> float:
    """Seconds a collective may wait for the other processes (``$WORKBENCH_DIST_TIMEOUT``, default one hour)."""
    value = os.environ.get(DIST_TIMEOUT_VARIABLE, str(DEFAULT_DIST_TIMEOUT))
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{DIST_TIMEOUT_VARIABLE} must be a number of seconds, got {value!r}") from None
    if not seconds > 0:
        raise ValueError(f"{DIST_TIMEOUT_VARIABLE} must be > 0, got {value!r}")
    return seconds


def init_distributed(device: torch.device | None = None) -> bool:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1); return whether distributed.

    NCCL on CUDA, gloo on CPU, with collectives timing out after :func:`dist_timeout` seconds. A
    no-op in a single process or when the group already exists.
    """
    import datetime

    dist = torch.distributed
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    device = device or select_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=dist_timeout()))
    return True


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group or inside :func:`working_alone`."""
    dist = torch.distributed
    if getattr(_alone, "active", False):
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def working_alone():
    """Work one process does by itself (rank 0 filling the caches): nothing inside enters a collective.

    :func:`fit` and every other caller of :func:`distributed_rank` see a single process, so rank 0 can
    pretrain a model while the other ranks wait at a barrier.
    """
    previous = getattr(_alone, "active", False)
    _alone.active = True
    try:
        yield
    finally:
        _alone.active = previous


def collective(operation, *args, what: str = "a collective", **kwargs):
    """``operation(*args, **kwargs)`` (a ``torch.distributed`` call), a timeout reported as what it means."""
    try:
        return operation(*args, **kwargs)
    except RuntimeError as err:
        if "timed out" in str(err).lower() or "timeout" in str(err).lower():
            raise TimeoutError(
                f"{what}: the other processes did not arrive within {dist_timeout():.0f} s "
                f"(${DIST_TIMEOUT_VARIABLE}); one of them failed or is stuck — see its output above. ({err})"
            ) from err
        raise


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere (CPU bf16 is slower than fp32 for these sizes)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_backends(device: torch.device) -> None:
    """TF32 matmuls on CUDA: free speed for training, no effect on CPU.

    Channels-last memory format is not used: the image towers are ViTs, whose only convolution is
    the patch embedding, so it would only add a layout conversion per batch.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
