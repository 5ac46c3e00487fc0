"""What this CPU runs natively: bf16 (AVX512_BF16 or AMX) and int8 dot products (AVX512_VNNI,
AVX-VNNI or AMX). Read from the kernel's CPU flags, never guessed from the torch build: bf16 on a
CPU without these instructions is emulated and slower than fp32, so ``auto`` never picks it there.

``FGSEARCH_CPU_FLAGS`` (space- or comma-separated) replaces the flags read: tests use it to run
both branches on any machine, and a user may set it empty to keep every run on fp32.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``$FGSEARCH_CPU_FLAGS``, else Linux ``/proc/cpuinfo``; empty where unknown)."""
    env = os.environ.get("FGSEARCH_CPU_FLAGS")
    if env is not None:
        return frozenset(env.replace(",", " ").split())
    return _proc_flags()


@functools.lru_cache(maxsize=1)
def _proc_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bf16 matrix products in hardware."""
    return any(f in (cpu_flags() if flags is None else flags) for f in BF16_FLAGS)


def native_int8(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU has int8 dot-product instructions (what makes static int8 pay)."""
    return any(f in (cpu_flags() if flags is None else flags) for f in INT8_FLAGS)


def cpu_summary() -> str:
    """One line for reports: the machine and the instructions that matter here."""
    have = [f for f in (*BF16_FLAGS, *INT8_FLAGS) if f in cpu_flags()]
    return f"{platform.machine()} ({', '.join(have) or 'no bf16/int8 instructions'})"
