"""`CompressConfig`, every option of `compress` (and of each `sweep` cell), in one home: its
fields, its checks (types and ranges), and TOML files whose keys are the field names (dashes or
underscores); command-line flags override the file, and every run folder keeps its resolved
`config.toml`.

Unknown keys, wrong types and values out of range raise EdgepruneError naming the key (with a
close-match suggestion for unknown keys), before any work starts. Values are data only;
nothing in a file is evaluated, and a file cannot make edgeprune run code: a `model` that is
an import string, a `device`, ssh options that run programs and a `remote_python` that is not
a Python need `--trust-code` or the flag on the command line, which no file can set
(`check_file_trust`). Paths are taken as they are written, like the same flags: relative to the
directory edgeprune runs in; a run name is one folder name.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprune.devices.formats import EXPORTABLE
from edgeprune.devices.results import BenchOptions
from edgeprune.devices.ssh import SshOptions, option_risk, remote_python_problem
from edgeprune.devices.targets import DEFAULT_TARGET
from edgeprune.errors import EdgepruneError
from edgeprune.jobs.bounds import check_bounds
from edgeprune.jobs.checks import check_options, check_output_folder
from edgeprune.jobs.runs import check_run_name
from edgeprune.tomlfile import dumps, read_toml

MAX_FLOPS_REDUCTION = 0.95
PRECISION_CHOICES = ("auto", "fp32", "fp16", "int8")
FORMAT_CHOICES = tuple(sorted(EXPORTABLE))
"""What --formats accepts: the exportable formats of the format table."""
FINETUNE_CHOICES = ("distill", "ce")
SCHEDULE_CHOICES = ("one-shot", "iterative", "layer-by-layer")


@dataclass
class CompressConfig:
    """Every option of `edgeprune compress`; the CLI flags have the same names."""

    model: str = "demo"
    weights: str | None = None
    input_size: str | None = None
    dataset: str = "auto"
    data_dir: str | None = None
    mean: str | None = None
    std: str | None = None
    skip_bad_images: bool = False
    workers: int | None = None
    target: str = DEFAULT_TARGET
    criterion: str = "lrp"
    flops_reduction: float | None = None
    """A pinned level; None: search the deepest cut within --max-drop (jobs/deepest_cut.py)."""
    search_budget: float | None = None
    search_minutes: float | None = None
    global_ranking: bool = False
    schedule: str = "one-shot"
    step: float = 0.05
    step_epochs: float = 0.0
    reestimate: bool = False
    residual_stream: str = "prune"
    score_samples: int = 500
    score_batch: int | None = None
    accelerator: str = "auto"
    samples_per_class: int | None = None
    bn_recalibration: int = 0
    epochs: float | None = None
    finetune: str = "distill"
    lr: float = 0.05
    """Fine-tuning peak learning rate: a CNN's usual training rate at batch 128 (torchvision's
    0.1 at 256), not a small fine-tuning one. Retraining a pruned network at the rate it was
    trained at recovers more than fine-tuning at a small one (learning-rate rewinding, Renda
    et al. 2020; Le & Hua 2021): on the demo model's 8x cut, 2 epochs at 0.05 left 0.68 / 1.10
    validation / test points where 0.01 left 0.86 / 1.42 (docs/BENCHMARKS.md)."""
    batch_size: int = 128
    formats: tuple[str, ...] = ("onnx", "tflite")
    verify: bool = True
    precision: str = "auto"
    max_drop: float = 1.0
    qat_epochs: float | None = None
    latency_ms: float | None = None
    device: tuple[str, ...] | None = None
    """The devices measured on (ssh://...; several: a fleet, the first one decides)."""
    ssh_option: tuple[str, ...] | None = None
    remote_python: str = SshOptions.remote_python
    threads: int | None = None
    bench_runs: int = BenchOptions.runs
    bench_seconds: float = BenchOptions.min_seconds
    bench_rounds: int = BenchOptions.rounds
    eval_limit: int | None = None
    seed: int = 0
    name: str | None = None
    out: str | None = None
    runs_dir: str = "edgeprune-runs"

    def run_name(self) -> str:
        level = "auto" if self.searches else round(self.flops_reduction * 100)
        return self.name or f"{self.model_tag()}-{self.target_tag()}-{self.criterion}-{level}"

    @property
    def searches(self) -> bool:
        """Whether compress searches the pruning level (no --flops-reduction pins one); a
        --latency-ms budget is a second constraint on what the search finds, not a level."""
        return self.flops_reduction is None

    def model_tag(self) -> str:
        """The model reference as a file-name part ('resnet20', 'torchvision-mobilenet_v2')."""
        model = Path(self.model).stem if self.model.endswith((".pt", ".pth")) else self.model
        return model.replace(":", "-").replace("/", "-")

    def target_tag(self) -> str:
        """The target as a file-name part: its name, or a profile file's stem."""
        return Path(self.target).stem if self.target.lower().endswith((".toml", ".json")) \
            else self.target

    @property
    def primary_device(self) -> str | None:
        """The device whose measurements drive the choices (the first --device), or None."""
        return self.device[0] if self.device else None

    def ssh_options(self) -> SshOptions:
        """How to reach the devices: --ssh-option and --remote-python."""
        return SshOptions.of(self.ssh_option, self.remote_python)

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.runs_dir) / self.run_name()


FIELDS = {f.name: f for f in dataclasses.fields(CompressConfig)}
HINTS = typing.get_type_hints(CompressConfig)
HEADER = ("# edgeprune compress config: keys are the option names of `edgeprune compress`.\n"
          "# Use with `edgeprune compress --config FILE`; flags given on the command line\n"
          "# override these values. Unset options are commented out.\n")


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _wrong(source: str, key: str, expected: str, value: Any) -> EdgepruneError:
    return EdgepruneError(f"{source}: {key!r} must be {expected}, not {value!r} "
                          f"({_type_name(value)})")


def _check(source: str, key: str, value: Any, shown: str) -> Any:
    """`value` converted to the type of field `key`, or an error naming the key as the user
    wrote it (`shown`)."""
    hint = HINTS[key]
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise _wrong(source, shown, "set (it has no 'unset' value)", value)
    base = next((a for a in args if a is not type(None)), hint) if type(None) in args else hint
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if base is bool:
        if not isinstance(value, bool):
            raise _wrong(source, shown, "true or false", value)
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(source, shown, "an integer", value)
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong(source, shown, "a number", value)
        value = float(value)
    elif base is str:
        if not isinstance(value, str):
            raise _wrong(source, shown, "a string", value)
    elif typing.get_origin(base) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise _wrong(source, shown, 'a list of strings (e.g. ["onnx", "tflite"])', value)
        value = tuple(value)
    return value


def validate(options: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Options with keys normalised to field names (dashes -> underscores) and values
    checked against CompressConfig's types."""
    out: dict[str, Any] = {}
    for raw_key, value in options.items():
        key = str(raw_key).replace("-", "_")
        if key == "trust_code":
            raise EdgepruneError(f"{source}: {raw_key!r} cannot be set in a file; a config "
                                 "file cannot allow running code: pass --trust-code on the "
                                 "command line")
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else \
                f"known keys: {', '.join(FIELDS)}"
            raise EdgepruneError(f"{source}: unknown key {raw_key!r}; {hint}")
        out[key] = _check(source, key, value, str(raw_key))
    return out


def load_config(path: Path | str) -> dict[str, Any]:
    """The options in TOML file `path`, validated; keys are CompressConfig field names."""
    return validate(read_toml(path, "config"), str(path))


def merge(config_dict: Mapping[str, Any], cli_overrides: Mapping[str, Any],
          base: CompressConfig | None = None, override_source: str = "command line"
          ) -> CompressConfig:
    """`base` (default: CompressConfig's defaults), then `config_dict` (a loaded file), then
    `cli_overrides`; every value type-checked and the result range-checked."""
    cfg = dataclasses.replace(base) if base is not None else CompressConfig()
    for source, options in (("config", config_dict), (override_source, cli_overrides)):
        for key, value in validate(options, source).items():
            setattr(cfg, key, value)
    check_ranges(cfg)
    return cfg


def check_ranges(cfg: CompressConfig) -> None:
    """The values that have the right type but cannot work, refused before any work starts."""
    if (cfg.mean is None) != (cfg.std is None):
        raise EdgepruneError("pass --mean and --std together (one value per input channel)")
    from edgeprune.accelerator import CHOICES as ACCELERATOR_CHOICES
    from edgeprune.pruning.api import RESIDUAL_STREAM_CHOICES

    for flag, value, choices in (("--precision", cfg.precision, PRECISION_CHOICES),
                                 ("--schedule", cfg.schedule, SCHEDULE_CHOICES),
                                 ("--residual-stream", cfg.residual_stream,
                                  RESIDUAL_STREAM_CHOICES),
                                 ("--accelerator", cfg.accelerator, ACCELERATOR_CHOICES)):
        if value not in choices:
            raise EdgepruneError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
    if cfg.finetune not in FINETUNE_CHOICES:
        raise EdgepruneError(f"--finetune {cfg.finetune!r}: choose distill (from the dense "
                             "model) or ce (cross-entropy on the labels)")
    unknown = [f for f in cfg.formats if f not in FORMAT_CHOICES]
    if unknown or not cfg.formats:
        raise EdgepruneError(f"--formats {','.join(cfg.formats)}: choose from "
                             f"{', '.join(FORMAT_CHOICES)}, comma-separated")
    optional = [("--epochs", cfg.epochs, "0 (no fine-tuning) or more", lambda v: v >= 0),
                ("--workers", cfg.workers, "0 (decode in the main process) or more",
                 lambda v: v >= 0),
                ("--samples-per-class", cfg.samples_per_class, "at least 1", lambda v: v >= 1),
                ("--eval-limit", cfg.eval_limit, "at least 1 test image", lambda v: v >= 1),
                ("--latency-ms", cfg.latency_ms, "a positive budget in milliseconds",
                 lambda v: v > 0),
                ("--threads", cfg.threads, "at least 1", lambda v: v >= 1),
                ("--qat-epochs", cfg.qat_epochs, "0 (off) or more", lambda v: v >= 0)]
    check_options(
        ("--flops-reduction", cfg.flops_reduction, cfg.flops_reduction is None or 0.0 <
         cfg.flops_reduction < MAX_FLOPS_REDUCTION, f"between 0 and {MAX_FLOPS_REDUCTION} "
         "(e.g. 0.5 for half the FLOPs)"),
        ("--search-budget", cfg.search_budget, cfg.search_budget is None or
         cfg.search_budget > 0, "a positive number of fine-tuning epochs"),
        ("--score-samples", cfg.score_samples, cfg.score_samples >= 1, "at least 1"),
        ("--score-batch", cfg.score_batch, cfg.score_batch is None or cfg.score_batch >= 1,
         "at least 1, e.g. 16"),
        ("--step", cfg.step, 0 < cfg.step < 1, "between 0 and 1, e.g. 0.05"),
        ("--step-epochs", cfg.step_epochs, cfg.step_epochs >= 0, "0 (none) or more"),
        ("--bn-recalibration", cfg.bn_recalibration, cfg.bn_recalibration >= 0,
         "0 (off) or a number of training images, e.g. 2000"),
        ("--lr", cfg.lr, cfg.lr > 0, "a positive learning rate, e.g. 0.05"),
        ("--batch-size", cfg.batch_size, cfg.batch_size >= 1, "at least 1"),
        ("--max-drop", cfg.max_drop, cfg.max_drop >= 0, "0 or more points, e.g. 1.0"),
        ("--bench-runs", cfg.bench_runs, cfg.bench_runs >= 1, "at least 1"),
        ("--bench-seconds", cfg.bench_seconds, cfg.bench_seconds >= 0, "0 or more"),
        ("--bench-rounds", cfg.bench_rounds, cfg.bench_rounds >= 1, "at least 1"),
        *((flag, value, ok(value), expected) for flag, value, expected, ok in optional
          if value is not None))
    check_bounds(cfg)  # the upper ends, from the table the CLI's --help shows
    if not cfg.out:  # the run folder is RUNS_DIR/NAME: NAME must not lead out of it
        check_run_name(cfg.run_name(), "--name" if cfg.name else "the run name (set --name)")
    check_output_folder(cfg.run_dir(), "--out" if cfg.out else "--runs-dir")


def config_from_dict(options: Mapping[str, Any]) -> CompressConfig:
    """A CompressConfig from a plain dict such as a run's config.json."""
    return merge(options, {})


def dump_config(cfg: CompressConfig) -> str:
    """`cfg` as a TOML file that `load_config` reads back to the same CompressConfig: one
    `key = value` line per option, in field order; unset (None) options commented out."""
    return dumps({name: getattr(cfg, name) for name in FIELDS}, HEADER)


def check_file_model(model: str | None, source: Path | str) -> None:
    """EdgepruneError when a config file's `model` is an import string: a file may name only
    what loads as data (see `edgeprune.models.load_model`), unless the command line says
    --trust-code."""
    from edgeprune.models.loader import is_import_string

    if model is not None and is_import_string(model):
        raise EdgepruneError(f"{source}: model = {model!r} imports and runs code, which a "
                             "config file cannot do on its own; pass --trust-code if you "
                             "trust the file, or give --model on the command line")


def check_file_trust(options: Mapping[str, Any], explicit: Collection[str],
                     source: Path | str) -> None:
    """EdgepruneError for the first value of config file `source` that would import code, run
    a program or connect to a machine: a `model` import string, a `device`, a risky
    `ssh_option` (`devices.ssh.RISKY_OPTIONS`), a `remote_python` that is not a Python. Keys
    in `explicit` were given on the command line, which replaces the file's value; the CLI
    skips this check under --trust-code."""
    if "model" not in explicit:
        check_file_model(options.get("model"), source)
    for key in FILE_GUARDED:
        value = options.get(key)
        why = None if key in explicit or value is None else _file_risk(key, value)
        if why is not None:
            shown = list(value) if isinstance(value, tuple) else value
            raise EdgepruneError(f"{source}: {key} = {shown!r} {why}, which a config file "
                                 "cannot do on its own; pass --trust-code if you trust the "
                                 f"file, or give --{key.replace('_', '-')} on the command line")


FILE_GUARDED = ("device", "ssh_option", "remote_python")
"""The keys (besides `model`) a config file sets only under --trust-code when they reach a
program (see `check_file_trust`)."""


def _file_risk(key: str, value: Any) -> str | None:
    """What `key = value` from a file would do that a file may not, or None."""
    if key == "device":
        return "connects to it and copies your model there"
    if key == "ssh_option":
        return next((f"has {o!r}, which {option_risk(o)}" for o in value if option_risk(o)),
                    None)
    problem = remote_python_problem(value)
    return f"runs that program on the device, and it {problem}" if problem else None
