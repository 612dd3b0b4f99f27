"""The format table (devices/formats.py) is the one home of what a format is: every part that
handles files (exporters, the standalone runner and predict.py, target profiles, the ssh
checks, RUN/ship/) agrees with it; and the one rule for inference threads."""

from __future__ import annotations

import ast
import os
from importlib import resources

import pytest

from edgeprune.devices import runner
from edgeprune.devices.formats import (
    EXPORTABLE,
    EXTENSIONS,
    FORMATS,
    format_for_runtime,
    format_named,
    format_of,
)
from edgeprune.devices.targets import (
    DEFAULT_TARGET,
    default_target,
    inference_threads,
    list_targets,
    load_target,
)
from edgeprune.errors import EdgepruneError
from edgeprune.export.registry import EXPORTERS
from edgeprune.jobs.config import FORMAT_CHOICES, CompressConfig
from edgeprune.jobs.ship import requirements


def test_the_standalone_runner_and_predict_load_every_extension_of_the_table() -> None:
    assert set(runner.LOADERS) == set(EXTENSIONS)
    source = resources.files("edgeprune.devices").joinpath("predict.py").read_text()
    suffixes = next(ast.literal_eval(node.value) for node in ast.parse(source).body
                    if isinstance(node, ast.Assign) and node.targets[0].id == "MODEL_SUFFIXES")
    assert set(suffixes) == set(EXTENSIONS)  # predict.py runs beside preprocess.py only
    for f in FORMATS.values():  # the same backend for the same runner loader
        assert runner.LOADERS[f.extension].__name__ == f"load_{f.runner_backend}"


def test_every_exportable_format_has_its_exporter_and_extension() -> None:
    assert set(EXPORTERS) == set(EXPORTABLE) == set(FORMAT_CHOICES)
    for name, exporter in EXPORTERS.items():
        assert exporter.suffix == FORMATS[name].extension


def test_profiles_ship_the_format_of_their_runtime() -> None:
    for profile in list_targets():
        shipped = format_for_runtime(profile.runtime)
        assert profile.ship_format == shipped.name and shipped.exporter is not None
        assert profile.formats[0] == shipped.name


def test_what_ships_and_what_deploy_checks_come_from_the_table() -> None:
    assert "ai-edge-litert" in requirements("tflite")
    assert "onnxruntime" in requirements("ort")
    assert format_named("onnx").twins == ("ort",)
    assert format_named("tflite").qat and not format_named("onnx").qat
    checks = format_named("tflite").deploy_checks
    assert checks[0] == "python" and "ai_edge_litert.interpreter" in checks and "PIL" in checks


@pytest.mark.parametrize(("call", "message"), [
    (lambda: format_of("model.pt"), "expected .tflite, .onnx or .ort"),
    (lambda: format_named("pte"), "unknown model format 'pte'"),
    (lambda: format_for_runtime("tensorrt"), "unknown runtime 'tensorrt'"),
])
def test_unknown_formats_are_one_line_errors(call, message: str) -> None:
    with pytest.raises(EdgepruneError, match=message):
        call()


def test_the_default_target_is_defined_once() -> None:
    assert CompressConfig().target == DEFAULT_TARGET == default_target().name


def test_inference_threads_rule() -> None:
    rpi4 = load_target("rpi4")  # 4 cores, 4 threads
    cores = os.cpu_count() or 1
    assert inference_threads(rpi4) == 4  # on the device: the target's
    assert inference_threads(rpi4, 2) == 2  # --threads wins
    assert inference_threads(rpi4, where="host") == min(4, cores)  # here: at most our cores
    assert inference_threads(rpi4, 64, where="host") == min(64, cores)
    assert inference_threads(rpi4, 64, where="estimate") == 4  # at most the target's cores
