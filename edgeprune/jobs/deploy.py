"""`deploy_run`: what `edgeprune deploy` does: copy a run's ship/ folder to the device over
ssh, check the copy and what the device lacks (nothing is installed), and run the shipped
`--eval` batch there at the target's threads."""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune.devices.bench import get_backend
from edgeprune.devices.deploy import Deployment, deploy_folder
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
    return deploy_folder(backend, model.parent, remote_dir or f"~/edgeprune/{run_dir.name}",
                         model, options)
