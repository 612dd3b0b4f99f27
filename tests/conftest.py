"""Shared fixtures: small synthetic data and a tiny trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeprune.console import is_quiet, set_quiet
from edgeprune.data import make_synthetic
from edgeprune.models import create_model
from edgeprune.models.checkpoint import ArchRef, save_checkpoint
from edgeprune.training import TrainConfig, train


@pytest.fixture(scope="session")
def synthetic():
    return make_synthetic(num_classes=4, shape=(1, 16, 16), n_train=512, n_test=256)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, synthetic) -> Path:
    """democnn trained for four epochs on the synthetic task, saved as an edgeprune checkpoint."""
    torch.manual_seed(0)
    model = create_model("democnn", in_channels=1, num_classes=4)
    train(model, synthetic, TrainConfig(epochs=4, lr=0.05, batch_size=64))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model.cpu(), ArchRef("democnn", {"in_channels": 1, "num_classes": 4}),
                    synthetic.spec, {"note": "test fixture"})
    return path


@pytest.fixture(autouse=True)
def restore_console():
    """A CLI test run with --quiet leaves the console quiet for the process; each test starts
    from the console state the one before it found, so what a test prints does not depend on
    which tests ran first."""
    quiet = is_quiet()
    yield
    set_quiet(quiet)


@pytest.fixture(scope="module", autouse=True)
def restore_console_after_module():
    """The same around a whole module: a module-scoped fixture that runs the CLI with --quiet
    (tests/test_export_cli.py's `exported`) is set up before any test's `restore_console`
    sees the state, so only a fixture of its own scope, set up first, can put it back."""
    quiet = is_quiet()
    yield
    set_quiet(quiet)


@pytest.fixture(scope="module")
def quiet_single_thread():
    """Progress bars off; one intra-op thread (tiny tensors on a shared 2-core machine run
    far faster without OpenMP hand-offs). Modules opt in with
    `pytestmark = pytest.mark.usefixtures("quiet_single_thread")`."""
    threads, quiet = torch.get_num_threads(), is_quiet()
    torch.set_num_threads(1)
    set_quiet(True)
    yield
    torch.set_num_threads(threads)
    set_quiet(quiet)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 (skipped where OpenSSH is not installed)."""
    from sshd import needs_sshd_reason, running_sshd

    if needs_sshd_reason():
        pytest.skip(needs_sshd_reason())
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="session")
def second_sshd(sshd, tmp_path_factory):
    """Another OpenSSH server on another 127.0.0.1 port that takes `sshd`'s user key, so
    `sshd.options()` reaches both: a two-device fleet."""
    from sshd import running_sshd

    with running_sshd(tmp_path_factory.mktemp("sshd2")) as server:
        keys = server.folder / "authorized_keys"
        keys.write_text(keys.read_text() + Path(f"{sshd.key}.pub").read_text())
        yield server
