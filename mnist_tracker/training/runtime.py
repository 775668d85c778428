"""Where and how a run computes: device, precision, memory format; resolved once per run.

Contracts:
- ``resolve_runtime(config)`` returns the config with ``device`` and ``precision`` as they will
  run (``auto`` resolved); the workflow calls it once, logs the result, and ``fit`` takes it.
- ``precision`` ``auto`` picks bf16 on CUDA with bf16 support and on CPUs whose PyTorch reports
  fast bf16 (AVX512-bf16, AMX), else fp32; fp16 needs CUDA (ConfigError elsewhere).
- ``autocast`` is the context a resolved precision trains and evaluates under.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
import sys

import torch

from ..config import TrainConfig, unknown_device
from ..errors import ConfigError
from ..models import get_spec


def select_device(name: str = "auto") -> torch.device:
    """``auto``: cuda, then mps, then cpu. Anything else is ``torch.device(name)``, refused
    (ConfigError) when torch cannot parse it or this machine does not have that device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _has_mps() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise unknown_device(name) from None
    missing = None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            missing = f"{count} CUDA device(s) found"
    elif device.type == "mps" and not _has_mps():
        missing = "no MPS device"
    if missing:
        raise ConfigError(
            f"device {name} is not available here ({missing}); pass --device auto or cpu"
        )
    return device


def _has_mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), None where it cannot be read."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return None


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 matrix work natively (AVX512-BF16 or AMX-BF16).

    Not oneDNN's own check alone: ``_is_mkldnn_bf16_supported`` also says yes for plain
    AVX-512, where bf16 is emulated and slower than fp32 (the lab cnn trained at 800-840
    img/s in bf16 against about 1,500 in fp32 on such a Xeon). Where the flags cannot be
    read, oneDNN's check decides."""
    flags = cpu_flags()
    if flags is not None:
        return bool(NATIVE_BF16_FLAGS & flags)
    with contextlib.suppress(Exception):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def cuda_has_fast_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` computes bf16 natively: compute capability 8.0 (Ampere) or
    later, or ROCm (as ``torch.cuda.is_bf16_supported(including_emulation=False)`` decides).
    Its default also says yes where bf16 is only emulated (a V100, a T4: slower than fp32),
    and it asks about the current GPU, not ``device``. False where no GPU is visible."""
    if not torch.cuda.is_available():
        return False
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the hardware runs it fast, else fp32; fp16 only on CUDA."""
    if precision == "auto":
        if device.type == "cuda" and cuda_has_fast_bf16(device):
            return "bf16"
        if device.type == "cpu" and cpu_has_fast_bf16():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 autocast needs a CUDA device; use --precision bf16 or fp32")
    return precision


def resolve_runtime(config: TrainConfig) -> TrainConfig:
    """``config`` with ``device`` and ``precision`` as they will actually run."""
    device = select_device(config.device)
    precision = resolve_precision(config.precision, device)
    if config.cuda_graphs and device.type != "cuda":
        raise ConfigError(
            f"--cuda-graphs needs a CUDA device, and this run would train on {device.type}; "
            "pass --device cuda on a machine with one, or leave --cuda-graphs out"
        )
    return config.replace(device=str(device), precision=precision)


def is_resolved(config: TrainConfig) -> bool:
    """Whether ``config`` names a concrete device and precision (``resolve_runtime`` ran)."""
    return config.device != "auto" and config.precision != "auto"


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a resolved precision computes in: what autocast casts to (fp32: none)."""
    return _DTYPES[precision]


def autocast(device: torch.device, precision: str, *, cache: bool = True):
    """The autocast context for a resolved precision (a no-op for fp32). ``cache=False`` casts
    the weights afresh at every use, as a CUDA graph capture needs (its cache would outlive
    the capture)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = compute_dtype(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def memory_format(config: TrainConfig) -> torch.memory_format:
    """channels_last for the conv nets (their spec says so), the default layout otherwise."""
    if get_spec(config.model).channels_last:
        return torch.channels_last
    return torch.contiguous_format


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: str) -> str:
    """A human name for the device the run used (GPU model or CPU model)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (initial weights, dropout); batch order has its own generator."""
    torch.manual_seed(seed)


# glibc's mallopt parameters (malloc.h) and the value this process sets them to.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 1 GiB for reuse instead of returning them to the
    kernel; True when it took effect (Linux with glibc), False elsewhere.

    By default glibc unmaps a freed block over 32 MiB at once, so a training step that
    allocates the same large tensors again (the 55-120 M-parameter heads of alexnet and vgg16:
    their gradients and bf16 weight copies) page-faults all of their pages back in, step after
    step; measured on a 2-core CPU, that made the head's step up to twice as slow. The cost is
    memory the process keeps instead of giving back. Process-wide; calling it again is harmless.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)
        and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
    )
