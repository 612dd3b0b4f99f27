"""What a model file format is, in one table that every layer reads.

For each format: its file extension, the exporter that writes it (the key in
`edgeprune.export.registry.EXPORTERS`), the runtime a target profile names to load it, the pip
package and importable modules of that runtime on the device (any one of the modules will do),
the runner backend that loads it, the twin files shipped beside it, and what `deploy` checks
on the device. The pin in a shipped `requirements.txt` is the version of `package` installed
where the file was verified (`edgeprune.jobs.ship.requirements`).

Adding a runtime is one entry here plus its exporter (`export/`) and a loader in the
standalone `devices/runner.py` (which cannot import this table: it runs on devices without
edgeprune; `tests/test_devices.py` checks that the two agree). See docs/ARCHITECTURE.md,
"Adding a runtime".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import EdgepruneError


@dataclass(frozen=True)
class Format:
    """One model file format and everything that handles it."""

    name: str
    extension: str
    runtime: str
    """The `runtime` a target profile names for it ('tflite', 'onnxruntime')."""
    package: str
    """The runtime's pip package on the device, pinned in requirements.txt."""
    modules: tuple[str, ...]
    """Modules whose import proves the runtime is there (any one)."""
    exporter: str | None
    """Key of the exporter that writes it; None for a twin written from another format."""
    runner_backend: str
    """The loader `devices/runner.py` uses ('tflite', 'onnx')."""
    twins: tuple[str, ...] = ()
    """Formats derived from the exported file and shipped beside it (ONNX -> ORT)."""
    qat: bool = False
    """Whether compress can recover its int8 file by quantization-aware training."""
    arm32: str = ""
    """What works on a 32-bit ARM OS (armv7l), where `package` publishes no wheel ('' if it
    does); docs/DEVICES.md, "armv7 and aarch64 support", has the matrix."""

    @property
    def install(self) -> str:
        """The pip line that installs the runtime on a device."""
        return f"pip install {self.package}"

    def install_line(self, machine: str) -> str:
        """How to get the runtime on a device of `machine`: the pip line, or on a 32-bit ARM
        OS without a wheel of `package`, what works instead."""
        if machine in ARM32 and self.arm32:
            return f"{self.package} has no {machine} wheel: {self.arm32}"
        return self.install

    @property
    def deploy_checks(self) -> tuple[str, ...]:
        """What `deploy` checks on the device before running a shipped file: Python, numpy,
        the runtime's modules, and Pillow (predict.py)."""
        return ("python", "numpy", *self.modules, "PIL")


ARM32 = ("armv6l", "armv7l", "armv8l")
"""`platform.machine()` of a 32-bit ARM OS (Raspberry Pi OS 32-bit, also on a 64-bit Pi)."""
ARM32_NUMPY = ("no numpy wheel for 32-bit ARM on PyPI: apt install python3-numpy python3-pil "
               "and make the venv with --system-site-packages")
"""numpy and Pillow on armv7l: Debian's packages (pip would compile them for an hour)."""
_TFLITE_ARM32 = ("pip install tflite-runtime==2.14.0 (armv7l wheel for Python 3.11, glibc "
                 "2.34+) with numpy from apt, or install the 64-bit OS (Pi 3, Zero 2 and later "
                 "have 64-bit cores)")
_ORT_ARM32 = ("ship .tflite instead (--formats tflite and a tflite target such as rpi3), or "
              "install the 64-bit OS (Pi 3, Zero 2 and later have 64-bit cores)")

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("tflite", ".tflite", runtime="tflite", package="ai-edge-litert",
           modules=("ai_edge_litert.interpreter", "tflite_runtime.interpreter"),
           exporter="tflite", runner_backend="tflite", qat=True, arm32=_TFLITE_ARM32),
    Format("onnx", ".onnx", runtime="onnxruntime", package="onnxruntime",
           modules=("onnxruntime",), exporter="onnx", runner_backend="onnx", twins=("ort",),
           arm32=_ORT_ARM32),
    Format("ort", ".ort", runtime="onnxruntime", package="onnxruntime",
           modules=("onnxruntime",), exporter=None, runner_backend="onnx", arm32=_ORT_ARM32),
)}
EXPORTABLE = tuple(name for name, f in FORMATS.items() if f.exporter)
"""The formats `--formats` accepts (those with an exporter), in table order."""
RUNTIMES = tuple(dict.fromkeys(f.runtime for f in FORMATS.values()))
"""The runtimes a target profile may name."""
EXTENSIONS = tuple(f.extension for f in FORMATS.values())
"""Every model file extension the runner loads."""


def format_named(name: str) -> Format:
    """The format called `name` ('tflite', 'onnx', 'ort')."""
    if name not in FORMATS:
        raise EdgepruneError(f"unknown model format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def format_of(path: Path | str) -> Format:
    """The format of a model file, from its extension."""
    suffix = Path(path).suffix.lower()
    for f in FORMATS.values():
        if f.extension == suffix:
            return f
    raise EdgepruneError(f"unsupported model file {Path(path).name}: expected "
                         f"{', '.join(EXTENSIONS[:-1])} or {EXTENSIONS[-1]}")


def format_for_runtime(runtime: str) -> Format:
    """The format a runtime loads and compress ships for it (the first exportable one)."""
    for f in FORMATS.values():
        if f.runtime == runtime and f.exporter:
            return f
    raise EdgepruneError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
