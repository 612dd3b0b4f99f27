"""Files are data: no model file, checkpoint, config or dataset file runs code unless the user
says --trust-code (API: trust_code=True). Each probe is a file whose payload would create a
marker file; every refusal is one line with exit code 2, leaves the input byte-identical and
the marker absent."""

from __future__ import annotations

import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run_cli, sha
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.jobs.config import load_config
from edgeprune.models import ArchRef, load_model, save_checkpoint
from edgeprune.spec import InputSpec

SPEC = InputSpec(1, 28, 28, (0.5,), (0.25,), tuple(f"c{i}" for i in range(10)))


class Payload:
    """Unpickling this creates `marker`: what a hostile file would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class PayloadModule(nn.Module):
    """A pickled module that runs the payload when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker
        self.fc = nn.Linear(784, 10)

    def __reduce_ex__(self, protocol):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _checkpoint(path: Path, ref: str, kwargs: dict | None = None) -> Path:
    """An edgeprune checkpoint (loads with weights_only=True) naming architecture `ref`."""
    model = load_model("democnn", in_channels=1, num_classes=10).model
    save_checkpoint(path, model, ArchRef(ref, kwargs or {}), SPEC)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


@pytest.fixture
def probes(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """Hostile and careless model files, each named by what it is."""
    pickled = tmp_path / "evil.pt"
    torch.save(Payload(marker), pickled)
    renamed = tmp_path / "weights.bin"  # the same pickle under another extension
    renamed.write_bytes(pickled.read_bytes())
    module_file = tmp_path / "module.pt"
    torch.save(PayloadModule(marker), module_file)
    onnx_named = tmp_path / "garbage.onnx"
    onnx_named.write_bytes(pickled.read_bytes())
    command = f"touch {marker}"
    return {
        "pickled object": pickled,
        "pickle with another extension": renamed,
        "pickled module": module_file,
        "pickle named .onnx": onnx_named,
        "checkpoint naming os:system": _checkpoint(tmp_path / "ossystem.pt", "os:system",
                                                   {"command": command}),
        "checkpoint naming a pickled file": _checkpoint(tmp_path / "points.pt", str(pickled)),
    }


PROBES = ["pickled object", "pickle with another extension", "pickled module",
          "pickle named .onnx", "checkpoint naming os:system", "checkpoint naming a pickled file"]


@pytest.mark.parametrize("probe", PROBES)
def test_the_api_refuses_what_would_run_code(probes, marker, probe):
    path = probes[probe]
    before = sha(path)
    with pytest.raises(EdgepruneError) as err:
        load_model(str(path), in_channels=1, num_classes=10)
    message = str(err.value)
    assert "\n" not in message and ("trust_code=True" in message or "exported" in message)
    assert not marker.exists() and sha(path) == before


# Every command that loads a model, with the arguments that make it reach the load.
COMMANDS = {
    "train": ["train", "--model", "{model}", "--out", "{tmp}/trained.pt"],
    "compress": ["compress", "--model", "{model}", "--runs-dir", "{tmp}/runs"],
    "sweep": ["sweep", "--model", "{model}", "--out", "{tmp}/sweep"],
    "export": ["export", "{model}", "--out", "{tmp}/exported"],
    "prune": ["prune", "{model}", "--out", "{tmp}/pruned.pt"],
    "score": ["score", "{model}", "--out", "{tmp}/scores.pt"],
    "explain": ["explain", "{model}", "--out", "{tmp}/atlas"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("probe", ["pickled module", "checkpoint naming os:system"])
def test_every_command_refuses_in_one_line_and_writes_nothing(probes, marker, tmp_path, capsys,
                                                              command, probe):
    path = probes[probe]
    before = sha(path)
    listing = sorted(p.name for p in tmp_path.iterdir())
    args = [a.format(model=path, tmp=tmp_path) for a in COMMANDS[command]]
    code, _, err = run_cli(capsys, *args, "--dataset", "demo")
    assert_one_line_error(code, err, "--trust-code")
    assert not marker.exists() and sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # nothing half-written


def test_trust_code_loads_a_pickled_module_the_user_vouches_for(tmp_path):
    path = tmp_path / "mine.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), path)
    with pytest.raises(EdgepruneError, match="trust_code=True"):
        load_model(str(path))
    loaded = load_model(str(path), trust_code=True)
    assert loaded.model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_a_factory_the_user_names_loads_but_its_checkpoint_asks_for_trust(tmp_path,
                                                                         monkeypatch):
    """`pkg.mod:factory` typed by the user is their choice; a file naming one is not."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    loaded = load_model("imagetree:tiny_net")  # the caller's own code: no flag
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, loaded.model, loaded.arch, InputSpec(3, 32, 32, (0.5,) * 3,
                                                               (0.25,) * 3))
    with pytest.raises(EdgepruneError, match="imports and runs code"):
        load_model(str(ckpt))
    again = load_model(str(ckpt), trust_code=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again.model(x), loaded.model.eval()(x))


def test_the_demo_zoo_and_torchvision_checkpoints_need_no_flag(tmp_path):
    assert load_model("demo").spec is not None
    ckpt = _checkpoint(tmp_path / "democnn.pt", "democnn", {"in_channels": 1,
                                                              "num_classes": 10})
    assert load_model(str(ckpt)).model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    tv = load_model("torchvision:mobilenet_v2", in_channels=3, num_classes=4)
    save_checkpoint(tmp_path / "tv.pt", tv.model, tv.arch, InputSpec(3, 64, 64, (0.5,) * 3,
                                                                      (0.25,) * 3))
    assert load_model(str(tmp_path / "tv.pt")).model(torch.zeros(1, 3, 64, 64)).shape == (1, 4)


def test_a_config_file_cannot_import_code_or_turn_trust_on(tmp_path, capsys, monkeypatch,
                                                            marker):
    module = tmp_path / "payload_module.py"
    module.write_text(f"open({str(marker)!r}, 'w').close()\n"
                      "def factory():\n    raise SystemExit('built')\n")
    monkeypatch.chdir(tmp_path)  # where a `pkg.mod:factory` is also searched
    config = tmp_path / "run.toml"
    config.write_text('model = "payload_module:factory"\n')
    code, _, err = run_cli(capsys, "compress", "--config", str(config), "--dataset", "demo")
    assert_one_line_error(code, err, "--trust-code")
    assert "payload_module:factory" in err and not marker.exists()
    assert "payload_module" not in sys.modules

    trusting = tmp_path / "trusting.toml"
    trusting.write_text("trust_code = true\n")
    code, _, err = run_cli(capsys, "compress", "--config", str(trusting))
    assert_one_line_error(code, err, "cannot be set in a file")
    with pytest.raises(EdgepruneError, match="cannot be set in a file"):
        load_config(trusting)


def test_cifar10_batches_are_read_as_data_only(tmp_path, marker):
    """The CIFAR-10 python release is pickles: a planted one must not run."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    good = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 9]}
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (root / name).write_bytes(pickle.dumps(good, protocol=2))
    buf = io.BytesIO()
    pickle.dump({b"data": Payload(marker), b"labels": [0]}, buf, protocol=2)
    (root / "test_batch").write_bytes(buf.getvalue())
    from edgeprune.data import load_dataset

    with pytest.raises(EdgepruneError, match="test_batch.*refusing to load .*exec"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------- config keys that reach ssh

NOWHERE = "ssh://nobody@127.0.0.1:9"


def _ssh_probes(marker: Path, tmp_path: Path) -> dict[str, list[str]]:
    """ssh options that would create `marker` (or load code) if ssh honoured them."""
    other = tmp_path / "other_ssh_config"
    other.write_text(f"ProxyCommand touch {marker}\n")
    touch = f"touch {marker}"
    return {
        "ProxyCommand": [f"ProxyCommand={touch}"],
        "LocalCommand": ["PermitLocalCommand=yes", f"LocalCommand={touch}"],
        "KnownHostsCommand": [f"KnownHostsCommand={touch}"],
        "Match exec": [f"Match=exec \"{touch}\""],
        "Include (another config)": [f"Include={other}"],
        "lower case": [f"proxycommand={touch}"],
        "PKCS11Provider": [f"PKCS11Provider={tmp_path / 'evil.so'}"],
        "XAuthLocation": [f"XAuthLocation={tmp_path / 'evil'}", "ForwardX11=yes"],
        "ProxyJump": ["ProxyJump=evil.example"],
        "ForwardAgent": ["ForwardAgent=yes"],
        "UserKnownHostsFile": [f"UserKnownHostsFile={tmp_path / '.bashrc'}"],
    }


@pytest.mark.parametrize("command", ["compress", "sweep"])
@pytest.mark.parametrize("probe", ["ProxyCommand", "LocalCommand", "KnownHostsCommand",
                                   "Match exec", "Include (another config)", "lower case",
                                   "PKCS11Provider", "XAuthLocation", "ProxyJump",
                                   "ForwardAgent", "UserKnownHostsFile"])
def test_a_config_cannot_set_ssh_options_that_run_programs(tmp_path, capsys, marker, command,
                                                            probe):
    options = _ssh_probes(marker, tmp_path)[probe]
    config = tmp_path / "stranger.toml"
    config.write_text(f"ssh_option = {json.dumps(options)}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(capsys, command, "--config", str(config), "--device", NOWHERE,
                           "--dataset", "demo", "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "ssh_option = ")
    assert "--trust-code" in err and "--ssh-option on the command line" in err
    assert any(o.split("=")[0] in err for o in options)  # names the option it refused
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == before


def test_trust_code_lets_the_configs_proxy_command_run(tmp_path, capsys, marker):
    """The refusal is the only thing between the file and ssh: with --trust-code, ssh runs
    the file's ProxyCommand (which fails to connect, after creating the marker)."""
    config = tmp_path / "mine.toml"
    config.write_text(f'ssh_option = ["ProxyCommand=touch {marker}"]\n')
    code, _, err = run_cli(capsys, "compress", "--config", str(config), "--device", NOWHERE,
                           "--dataset", "demo", "--out", str(tmp_path / "out"), "--trust-code")
    assert code == 2 and marker.exists(), err
    assert not (tmp_path / "out").exists()


def test_ssh_options_typed_on_the_command_line_are_the_users_own(tmp_path, capsys, marker):
    config = tmp_path / "stranger.toml"
    config.write_text('ssh_option = ["ProxyCommand=touch /nonexistent/x"]\nlr = 0.02\n')
    code, _, err = run_cli(capsys, "compress", "--config", str(config), "--device", NOWHERE,
                           "--ssh-option", f"ProxyCommand=touch {marker}", "--dataset", "demo",
                           "--out", str(tmp_path / "out"))
    assert code == 2 and marker.exists(), err  # the flag replaced the file's value


@pytest.mark.parametrize(("text", "message"), [
    ('device = ["ssh://pi@example.com"]\n', "device = ['ssh://pi@example.com'] connects"),
    ('remote_python = "sh"\n', "remote_python = 'sh' runs that program on the device"),
    ('remote_python = "python3; touch x"\n', "is not a Python interpreter's name"),
])
def test_a_config_cannot_name_a_device_or_a_remote_program(tmp_path, capsys, text, message):
    config = tmp_path / "stranger.toml"
    config.write_text(text)
    code, _, err = run_cli(capsys, "compress", "--config", str(config), "--dataset", "demo",
                           "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, message)
    assert "--trust-code" in err and sorted(p.name for p in tmp_path.iterdir()) == [
        "stranger.toml"]


def test_what_a_config_may_say_about_ssh():
    from edgeprune.jobs.config import check_file_trust

    safe = {"device": None, "remote_python": "~/venv/bin/python3.11",
            "ssh_option": ("IdentityFile=~/.ssh/pi", "Port=2222", "StrictHostKeyChecking=yes",
                           "ConnectTimeout=5", "Compression=yes")}
    check_file_trust(safe, set(), "f.toml")
    for key, value in [("device", ("ssh://pi@h",)), ("remote_python", "/bin/sh"),
                       ("ssh_option", ("ProxyCommand=x",))]:
        with pytest.raises(EdgepruneError, match=f"f.toml: {key} = "):
            check_file_trust({key: value}, set(), "f.toml")
        check_file_trust({key: value}, {key}, "f.toml")  # the command line replaces it


def test_every_risky_ssh_option_is_named_whatever_its_case():
    from edgeprune.devices.ssh import RISKY_OPTIONS, option_risk

    assert {"proxycommand", "localcommand", "permitlocalcommand", "knownhostscommand",
            "match", "include", "pkcs11provider", "securitykeyprovider"} <= set(RISKY_OPTIONS)
    for key in RISKY_OPTIONS:
        assert option_risk(f"{key.upper()}=x") == RISKY_OPTIONS[key]
    assert option_risk("IdentityFile=~/.ssh/pi") is None
