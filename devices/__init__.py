"""Target device profiles, the standalone on-device runner and the backends that run it.

`runner.py` is deliberately not imported here: it is a script copied to devices, needing only
the standard library, numpy and one runtime. `compare` (bench several files) and `ssh` are
imported from their modules.
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
