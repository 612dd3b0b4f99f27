"""`deploy_run`: what `edgeprune deploy` does: copy a run's ship/ folder to the device over
ssh, check the copy and what the device lacks (nothing is installed), and run the shipped
`--eval` batch there at the target's threads. On a 32-bit ARM OS (armv7l), where PyPI has no
wheel of numpy, ai-edge-litert or onnxruntime, it names what works instead."""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune.console import info
from edgeprune.devices.bench import get_backend
from edgeprune.devices.deploy import Deployment, deploy_folder
from edgeprune.devices.formats import ARM32, ARM32_NUMPY, format_of
from edgeprune.devices.results import BenchOptions
from edgeprune.devices.ssh import SshBackend, SshOptions
from edgeprune.devices.targets import DEFAULT_TARGET, inference_threads, load_target
from edgeprune.errors import EdgepruneError
from edgeprune.jobs.ship import CHECKSUMS, SHIP


def shipped_model(run_dir: Path) -> tuple[Path, dict]:
    """The model file in `run_dir/ship/` and the run's resolved config."""
    ship = run_dir / SHIP
    if not (ship / CHECKSUMS).is_file():
        raise EdgepruneError(f"{run_dir} has no {SHIP}/ folder; pass the folder of a finished "
                             "`edgeprune compress` run that shipped a file")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        name = Path(summary["shipped"]["path"]).name
    except (OSError, ValueError, KeyError, TypeError):
        raise EdgepruneError(f"{run_dir}: summary.json or config.json is missing or does not "
                             "name the shipped file; run compress again") from None
    if not (ship / name).is_file():
        raise EdgepruneError(f"{ship / name} is missing; run compress again")
    return ship / name, config


def deploy_run(run_dir: Path | str, device: str, remote_dir: str | None = None,
               threads: int | None = None, runs: int = 50, min_seconds: float = 1.0,
               ssh: SshOptions | None = None) -> Deployment:
    """Deploy `run_dir/ship/` to `device` (ssh://user@host[:port]) into `remote_dir`
    (default ~/edgeprune/RUN_NAME) and measure the shipped file there."""
    run_dir = Path(run_dir)
    model, config = shipped_model(run_dir)
    backend = get_backend(device, ssh)
    if not isinstance(backend, SshBackend):
        raise EdgepruneError(f"--device {device!r}: deploy copies to a device; write "
                             "ssh://user@host[:port]")
    threads = inference_threads(load_target(config.get("target", DEFAULT_TARGET)), threads)
    options = BenchOptions(threads=threads, runs=runs, min_seconds=min_seconds)
    deployment = deploy_folder(backend, model.parent,
                               remote_dir or f"~/edgeprune/{run_dir.name}", model, options)
    check_arm32(deployment, model)
    return deployment


def check_arm32(deployment: Deployment, model: Path) -> None:
    """On a 32-bit ARM OS, where the pinned runtime or numpy has no wheel, one line naming what
    works instead of `pip install -r requirements.txt`: an error when the device lacks them, a
    note when it runs the file with another build."""
    machine, fmt = deployment.facts.machine, format_of(model)
    if machine not in ARM32:
        return
    lacks = [m for m in deployment.missing if not m.lower().startswith("pillow")]
    where = f"{deployment.device} runs a 32-bit ARM OS ({machine})"
    if any(m.startswith("numpy") for m in lacks):
        raise EdgepruneError(f"{where} and lacks numpy: {ARM32_NUMPY}; the files were copied "
                             f"to {deployment.remote_dir}")
    if lacks and fmt.arm32:
        raise EdgepruneError(f"{where}: {fmt.install_line(machine)}; the files were copied "
                             f"to {deployment.remote_dir}")
    if fmt.arm32 and deployment.result is not None:
        info(f"note: {where}, where {fmt.package} has no wheel; it ran the file with "
             f"{deployment.result.runtime} {deployment.result.runtime_version}")
