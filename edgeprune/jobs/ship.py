"""`RUN/ship/`: the folder a user copies to the device, everything the shipped model needs there
and nothing else.

- the chosen model file and its sidecar (labels, mean/std, layout, input size), and for ONNX
  targets also its ORT-format twin (`.ort`, what ONNX Runtime Mobile loads), verified;
- `runner.py` (benchmark and `--eval`), `predict.py` (classify image files) and
  `preprocess.py` (the image preprocessing of the training data), needing only numpy, Pillow
  and the runtime; the `--eval` sample batch;
- `requirements.txt` with the runtime pinned to the version the file was verified with,
  `SHA256SUMS` (`sha256sum -c SHA256SUMS`) and a short README.md.

`edgeprune deploy RUN --device ssh://...` copies it and runs the `--eval` batch there.
"""

from __future__ import annotations

import importlib.metadata
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.console import info
from edgeprune.devices.formats import format_named
from edgeprune.devices.samples import default_samples_path
from edgeprune.devices.targets import TargetProfile
from edgeprune.export.ort import export_ort
from edgeprune.export.validate import EvalSet
from edgeprune.files import atomic_write_bytes, atomic_write_text, sha256_file

SHIP = "ship"
TOOLS = (("edgeprune.devices", "runner.py"), ("edgeprune.devices", "predict.py"),
         ("edgeprune.data", "preprocess.py"))
CHECKSUMS = "SHA256SUMS"


def requirements(fmt: str) -> str:
    """requirements.txt: the runtime at the version installed here (the one the file was
    verified with), numpy and Pillow."""
    package = format_named(fmt).package
    try:
        runtime = f"{package}=={importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        runtime = package
    return (f"# what the device needs to run the shipped model (verified with {runtime})\n"
            f"{runtime}\nnumpy>=1.21\npillow>=9\n")


def readme(run_dir: Path, target: TargetProfile, model: str, shipped: dict[str, Any],
           reason: str, threads: int) -> str:
    """A short README for the device: what the file is, how fast and accurate it measured,
    how to install, check, run and deploy it."""
    sp = shipped.get("speedup") or {}
    lines = [
        f"# {model} for {target.name} ({run_dir.name})", "",
        f"`{Path(shipped['path']).name}`: {shipped['name']}, top-1 "
        f"{shipped['accuracy'] * 100:.2f}% on the test images, "
        f"{shipped['size_bytes'] / 1e6:.2f} MB, p50 {shipped['latency_ms']['p50']:.3f} ms "
        f"({shipped['latency_label']})"
        + (f", {sp['value']:.2f}x faster than the dense fp32 model." if sp else "."), "",
        f"Why this file: {reason}.", "",
        "On the device (Python 3.8+):", "", "```bash",
        "sha256sum -c SHA256SUMS                # the copy is intact",
        "pip install -r requirements.txt",
        "python3 predict.py photo.jpg --top 3     # classify image files",
        f"python3 runner.py {Path(shipped['path']).name} --threads {threads} --eval   "
        "# latency and top-1 on the shipped sample batch",
        "```", "",
        f"From the machine that made it: `edgeprune deploy {run_dir} --device "
        "ssh://user@host` copies this folder and runs the same check there.", ""]
    return "\n".join(lines)


def write_ship(run_work: Path, run_dir: Path, target: TargetProfile, model_ref: str,
               shipped: dict[str, Any], reason: str, threads: int,
               verify_x: np.ndarray, eval_set: EvalSet | None) -> list[Path]:
    """Fill `run_work/ship/` for the shipped candidate; returns the files written."""
    folder = run_work / SHIP
    model = run_work / shipped["path"]
    files = [model, model.with_name(model.name + ".json"), default_samples_path(model)]
    fmt = shipped["format"]
    if "ort" in format_named(fmt).twins:  # ONNX Runtime Mobile loads the ORT format
        ort, metrics = export_ort(model, verify_x, eval_set)
        files += [ort, ort.with_name(ort.name + ".json")]
        info(f"ort: {ort.name} {ort.stat().st_size / 1e6:.2f} MB, max|diff| vs .onnx "
             f"{metrics.max_abs_diff:.1e}, top-1 agree {metrics.top1_agreement:.0%}")
    written = []
    for source in files:
        atomic_write_bytes(folder / source.name, source.read_bytes())
        written.append(folder / source.name)
    for package, name in TOOLS:
        atomic_write_bytes(folder / name, resources.files(package).joinpath(name).read_bytes())
        written.append(folder / name)
    texts = {"requirements.txt": requirements(fmt),
             "README.md": readme(run_dir, target, model_ref, shipped, reason, threads)}
    for name, text in texts.items():
        atomic_write_text(folder / name, text)
        written.append(folder / name)
    sums = "".join(f"{sha256_file(p)}  {p.name}\n" for p in sorted(written))
    atomic_write_text(folder / CHECKSUMS, sums)
    return [*written, folder / CHECKSUMS]
