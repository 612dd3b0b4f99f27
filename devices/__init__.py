"""Target device profiles, the standalone on-device runner and the backends that run it.

`runner.py` is a script copied to devices, needing only the standard library, numpy and one
runtime: it never imports torch or edgeprune. `results` (what a run returns), `bench` (the
local backend and the registry), `ssh` (the device backend), `targets`, `estimate` and
`samples` are the modules; comparing several files is `edgeprune.jobs.bench`.
"""

from edgeprune.devices.bench import (
    BACKENDS,
    Backend,
    BenchOptions,
    BenchResult,
    LocalBackend,
    bench_local,
    get_backend,
)
from edgeprune.devices.estimate import Estimate, ModelCost, count_model, estimate_latency
from edgeprune.devices.samples import default_samples_path, read_eval_samples, write_eval_samples
from edgeprune.devices.targets import TargetProfile, list_targets, load_target

__all__ = [
    "BACKENDS", "Backend", "BenchOptions", "BenchResult", "Estimate", "LocalBackend",
    "ModelCost", "TargetProfile", "bench_local", "count_model", "default_samples_path",
    "estimate_latency", "get_backend", "list_targets", "load_target", "read_eval_samples",
    "write_eval_samples",
]
