"""`--accelerator`: where scoring and fine-tuning run. The CUDA path itself is checked by
benchmarks/gpu_check.sh on a GPU machine; here, what a machine without one must do."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_one_line_error, run_cli

from edgeprune import accelerator
from edgeprune.errors import EdgepruneError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.fixture(autouse=True)
def _restore():
    yield
    accelerator.use("auto")


@no_cuda
@pytest.mark.parametrize("command", [["score", "demo"], ["compress", "--dataset", "synthetic"],
                                     ["train", "--dataset", "synthetic"]])
def test_asking_for_cuda_without_it_is_a_one_line_error(capsys, tmp_path, command):
    code, _, err = run_cli(capsys, *command, "--accelerator", "cuda", "--out",
                           str(tmp_path / "out.json"))
    assert_one_line_error(code, err, "--accelerator cuda: this PyTorch sees no CUDA device")
    assert list(tmp_path.iterdir()) == []


def test_unknown_accelerator_names_the_choices():
    with pytest.raises(EdgepruneError, match="choose one of auto, cpu, cuda"):
        accelerator.use("tpu")


def test_cpu_runs_in_float32_and_the_default_memory_format():
    on = accelerator.use("cpu")
    assert on.type == "cpu" and accelerator.training_dtype(on) is None
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with accelerator.channels_last(model, on):
        assert model[0].weight.is_contiguous()
