"""Compute precision of the encoders: what `auto` means on this machine, what a store holds, and
the line that says where a number came from.

Precision is part of the encoders' fingerprints (features computed in bf16 autocast live in
another space than fp32 ones). `auto` is bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16
or AMX), else fp32. Because that makes results depend on the CPU kind, three things hold:

- VOD2CHAT_PRECISION=fp32|bf16 in the environment makes this process's CPU count as that kind:
  `auto` resolves to it and bf16 counts as native exactly when it is bf16. It lets one machine run
  the suite (or an ingest) as the other kind would; the ingest driver hands it to its actors.
- A store has one precision: the first ingest pins it (store.json), later ingests default to it,
  and a node that cannot run it natively warns and runs it anyway (slower) instead of failing.
- Demo and benchmark output starts with `machine_line`: CPU model, bf16 native or not, precision.
"""

from __future__ import annotations

import logging
import os
import platform
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ENV = "VOD2CHAT_PRECISION"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CPU_KINDS = ("fp32", "bf16")  # what ENV may say: the two CPU kinds there are
_warned: set[tuple[str, str]] = set()


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: where bf16 convolutions beat fp32 on a CPU. Without them (AVX2 only)
    oneDNN emulates bf16 and ResNet-50 runs several times slower than in fp32. The hardware's
    answer: VOD2CHAT_PRECISION does not change it (see cpu_kind)."""
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", _cpuinfo()))


def cpu_model() -> str:
    """The CPU's model name as the OS reports it (`platform.processor()` where /proc has none)."""
    m = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.M)
    return (m.group(1).strip() if m else platform.processor()) or "unknown CPU"


def forced_kind() -> str | None:
    """VOD2CHAT_PRECISION, checked: None when unset or empty."""
    v = os.environ.get(ENV, "").strip()
    if not v:
        return None
    if v not in CPU_KINDS:
        raise ValueError(f"environment variable {ENV}={v!r}: set it to {' or '.join(CPU_KINDS)}, or unset it")
    return v


def cpu_kind() -> str:
    """The precision this CPU runs best: bf16 where bf16 is native, else fp32; VOD2CHAT_PRECISION
    overrides the hardware's answer (to test or run as the other kind of CPU would)."""
    return forced_kind() or ("bf16" if cpu_has_native_bf16() else "fp32")


def resolve_precision(precision: str, device: torch.device) -> str:
    """fp32 | bf16 | fp16 for `precision` on `device`: "auto" is bf16 on CUDA (fp32's range:
    random-init activations cannot overflow; fp16 on GPUs without bf16) and, on a CPU, its kind."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return cpu_kind() if device.type == "cpu" else "fp32"


def runs_natively(precision: str, device: torch.device) -> bool:
    """Whether `device` computes `precision` at full speed: fp32 everywhere; on a CPU, bf16 only
    where it is its kind (fp16 autocast never is)."""
    if device.type != "cpu" or precision == "fp32":
        return True
    return precision == "bf16" and cpu_kind() == "bf16"


def warn_if_emulated(precision: str, device: torch.device, why: str = "") -> str | None:
    """Log once per process that this CPU emulates `precision` (slower, same features); the
    message, or None when it runs natively."""
    if runs_natively(precision, device):
        return None
    msg = (f"{cpu_model()} has no native {precision} (kind {cpu_kind()}): computing {precision} anyway"
           f"{why}, several times slower than fp32 here")
    if (precision, why) not in _warned:
        _warned.add((precision, why))
        log.warning(msg)
    return msg


def precision_of_tag(tag: str) -> str:
    """"bf16 autocast" (a fingerprint's precision field) -> "bf16"."""
    return str(tag).split()[0] if str(tag).strip() else "fp32"


def machine_line(precision: str | None = None, device: str = "cpu", what: str = "precision") -> str:
    """One line naming the machine a number was measured on: CPU model and cores, bf16 native or
    not (and any VOD2CHAT_PRECISION override), the torch build, and `what` was computed in."""
    forced = forced_kind()
    native = "yes" if cpu_has_native_bf16() else "no (AVX2 only: emulated)"
    parts = [f"CPU {cpu_model()} ({os.cpu_count()} cores)", f"bf16 native: {native}"]
    if forced:
        parts.append(f"{ENV}={forced} (runs as a {forced} CPU)")
    if device != "cpu":
        parts.append(f"device {device}")
    parts.append(f"torch {torch.__version__}")
    if precision is not None:
        parts.append(f"{what}: {precision}")
    return "machine: " + ", ".join(parts)


def store_precision(requested: str, pinned: str | None, store: str) -> str | None:
    """The precision an ingest into `store` computes in: the store's (`pinned`) when it has one and
    `requested` is auto, `requested` if explicit (refused if it differs from the store's), else
    None (auto on a new store: the first actor's device decides, then the store pins it)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if pinned is None:
        return None if requested == "auto" else requested
    if requested not in ("auto", pinned):
        raise PrecisionMismatch(
            f"store {store} computes its features in {pinned} (pinned by its first ingest), this ingest asks for "
            f"--precision {requested}: leave --precision auto (it uses {pinned}) or ingest into a new store")
    return pinned


class PrecisionMismatch(ValueError):
    """An explicit precision other than the store's."""
