"""Where a benchmark ran, in words for its results: the CPU, its cores and the widest SIMD
extension XNNPACK can use on it (int8 speedups over fp32 differ several-fold between an
AVX2-only and an AVX-512 VNNI x86 core, so a ratio without it cannot be compared)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

SIMD = (("avx512_vnni", "AVX-512 VNNI"), ("avx512f", "AVX-512"), ("avx2", "AVX2 (no AVX-512)"),
        ("asimddp", "NEON dot-product"), ("asimd", "NEON"))
"""/proc/cpuinfo flags, widest first, and how results name them."""


def describe_host() -> str:
    """'AMD EPYC, 2 cores, AVX-512 VNNI': the CPU model, core count and widest SIMD flag."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    lines = text.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines
                  if ln.startswith(("model name", "Model"))), platform.processor() or "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines
                      if ln.startswith(("flags", "Features"))), []))
    simd = next((name for flag, name in SIMD if flag in flags), None)
    return ", ".join(filter(None, [model, f"{os.cpu_count()} cores", simd]))
