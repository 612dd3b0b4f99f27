"""Never write through a link, never leave the folder: run names are one path component;
the run's lock is created with O_EXCL and opened with O_NOFOLLOW; a run folder, `.partial`
or lock that is a symbolic link is refused in one line; `--overwrite` leaves no `.old`; and
`deploy` copies only what SHA256SUMS lists, refusing links, entries that leave the folder and
remote folders with control characters. Every refusal is one line with exit code 2, and the
files a link points to are left byte-identical."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from helpers import FINISHED_RUN, assert_one_line_error, run_cli, sha

from edgeprune.devices.deploy import CHECKSUMS, deploy_folder, listed_files
from edgeprune.devices.results import BenchOptions
from edgeprune.errors import EdgepruneError
from edgeprune.files import sha256_file, staged_folder
from edgeprune.jobs.runs import RunFolder, RunLock, check_run_name

FAST = ["--flops-reduction", "0.5", "--target", "x86-64", "--dataset", "demo", "--criterion",
        "l1", "--formats", "onnx", "--precision", "fp32", "--quiet"]


def listing(folder: Path) -> list[str]:
    """Every path below `folder`, links included and not followed."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def finished_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(FINISHED_RUN))
    (folder / "result.txt").write_text("a finished run somewhere else\n")
    return folder


# ------------------------------------------------------------------------------ run names

@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", "", "a\nb", "tab\there",
                                  "x" * 201])
def test_a_run_name_is_one_folder_name(name):
    with pytest.raises(EdgepruneError) as err:
        check_run_name(name)
    assert "\n" not in str(err.value) and "--name" in str(err.value)


@pytest.mark.parametrize("name", ["resnet18-rpi4", "démo run", ".hidden", "a..b"])
def test_plain_run_names_pass(name):
    check_run_name(name)


def test_name_dot_dot_does_not_write_outside_the_runs_folder(tmp_path, capsys):
    runs = tmp_path / "runs"
    code, _, err = run_cli(capsys, "compress", *FAST, "--runs-dir", str(runs), "--name",
                           "../escape")
    assert_one_line_error(code, err, "'../escape' has a path separator")
    assert listing(tmp_path) == []


def test_a_config_name_leading_out_is_refused_too(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('name = "../../x"\n')
    code, _, err = run_cli(capsys, "compress", *FAST, "--config", str(config), "--runs-dir",
                           str(tmp_path / "a" / "runs"))
    assert_one_line_error(code, err, "--name '../../x'")
    assert listing(tmp_path) == ["run.toml"]


# ------------------------------------------------------------------------------ locks

def test_a_lock_that_links_to_a_users_file_is_refused_and_the_file_kept(tmp_path, capsys):
    runs, victim = tmp_path / "runs", tmp_path / "notes.txt"
    runs.mkdir()
    victim.write_text("the user's notes\n")
    before = sha(victim)
    (runs / ".r.lock").symlink_to(victim)
    code, _, err = run_cli(capsys, "compress", *FAST, "--runs-dir", str(runs), "--name", "r")
    assert_one_line_error(code, err, "is a symbolic link")
    assert sha(victim) == before
    assert listing(tmp_path) == ["notes.txt", "runs", "runs/.r.lock"]


def test_a_dangling_lock_link_creates_nothing_where_it_points(tmp_path):
    outside = tmp_path / "outside" / "created.txt"
    outside.parent.mkdir()
    (tmp_path / ".r.lock").symlink_to(outside)
    with pytest.raises(EdgepruneError, match="lock.*symbolic link"):
        RunLock.acquire(tmp_path / "r")
    assert not outside.exists() and not os.path.lexists(tmp_path / "r")


def test_a_lock_that_is_not_a_plain_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / ".r.lock")
    with pytest.raises(EdgepruneError, match="not a plain file"):
        RunLock.acquire(tmp_path / "r")


def test_the_lock_is_a_plain_file_of_the_runs_folder_and_goes_with_the_run(tmp_path):
    lock = RunLock.acquire(tmp_path / "r")
    assert stat.S_ISREG(os.lstat(tmp_path / ".r.lock").st_mode)
    lock.release()
    assert listing(tmp_path) == []


# ------------------------------------------------------------------------------ run folders

def test_overwrite_of_a_run_name_that_links_elsewhere_is_refused(tmp_path, capsys):
    elsewhere = finished_run(tmp_path / "elsewhere" / "r")
    before = {p: sha(p) for p in elsewhere.iterdir()}
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "r").symlink_to(elsewhere)
    code, _, err = run_cli(capsys, "compress", *FAST, "--runs-dir", str(runs), "--name", "r",
                           "--overwrite")
    assert_one_line_error(code, err, "is a symbolic link")
    assert listing(runs) == ["r"] and (runs / "r").is_symlink()  # no .old, no lock
    assert {p: sha(p) for p in elsewhere.iterdir()} == before


def test_a_partial_folder_that_links_elsewhere_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep\n")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / ".r.partial").symlink_to(elsewhere)
    with pytest.raises(EdgepruneError, match="unfinished run.*symbolic link"):
        RunFolder.open(runs / "r", {"a": 1})
    assert listing(elsewhere) == ["keep.txt"] and listing(runs) == [".r.partial"]


def test_overwrite_leaves_no_old_folder_behind(tmp_path):
    final = finished_run(tmp_path / "r")
    (tmp_path / ".r.abcdefgh.old").mkdir()  # what a publish killed half-way leaves
    run = RunFolder.open(final, {"a": 1}, overwrite=True)
    (run.path("model.txt")).write_text("new\n")
    run.publish()
    assert listing(tmp_path) == sorted(["r", "r/config.json", "r/manifest.json",
                                        "r/model.txt"])


def test_a_link_inside_the_partial_folder_is_not_published(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("private\n")
    run = RunFolder.open(tmp_path / "runs" / "r", {"a": 1})
    (run.work / "notes.txt").symlink_to(secret)
    final = run.publish()
    assert not (final / "notes.txt").exists() and secret.read_text() == "private\n"
    manifest = json.loads((final / "manifest.json").read_text())
    assert [a["path"] for a in manifest["artefacts"]] == []


def test_a_staged_folder_replaces_a_link_and_leaves_its_target_alone(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("keep\n")
    final = tmp_path / "atlas"
    final.symlink_to(target)
    with staged_folder(final) as stage:
        (stage / "new.txt").write_text("new\n")
    assert not final.is_symlink() and listing(final) == ["new.txt"]
    assert listing(target) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas", "target"]  # no .old


# ------------------------------------------------------------------------------ deploy

def fake_run(tmp_path: Path) -> Path:
    """A run folder whose ship/ holds a (not loadable) model, runner.py and SHA256SUMS."""
    from importlib import resources

    run = tmp_path / "run"
    ship = run / "ship"
    ship.mkdir(parents=True)
    (ship / "m.onnx").write_bytes(b"not a model")
    (ship / "runner.py").write_bytes(
        resources.files("edgeprune.devices").joinpath("runner.py").read_bytes())
    write_sums(ship)
    (run / "summary.json").write_text(json.dumps({"shipped": {"path": "ship/m.onnx"}}))
    (run / "config.json").write_text(json.dumps({"target": "x86-64"}))
    return run


def write_sums(ship: Path, extra: str = "") -> None:
    names = sorted(p.name for p in ship.iterdir() if p.name != CHECKSUMS)
    (ship / CHECKSUMS).write_text("".join(f"{sha256_file(ship / n)}  {n}\n" for n in names)
                                  + extra)


NOWHERE = "ssh://nobody@127.0.0.1:9"  # every refusal here comes before a connection


def test_deploy_refuses_a_ship_folder_holding_a_link(tmp_path, capsys):
    run = fake_run(tmp_path)
    secret = tmp_path / "important.txt"
    secret.write_text("private\n")
    (run / "ship" / "notes.txt").symlink_to(secret)
    remote = tmp_path / "remote"
    code, _, err = run_cli(capsys, "deploy", str(run), "--device", NOWHERE, "--remote-dir",
                           str(remote))
    assert_one_line_error(code, err, "symbolic links (notes.txt)")
    assert not remote.exists()


def test_deploy_refuses_an_entry_that_leaves_the_folder(tmp_path, capsys):
    run = fake_run(tmp_path)
    write_sums(run / "ship", f"{'0' * 64}  ../../etc/hostname\n")
    code, _, err = run_cli(capsys, "deploy", str(run), "--device", NOWHERE, "--remote-dir",
                           str(tmp_path / "remote"))
    assert_one_line_error(code, err, "'../../etc/hostname', not a file of")
    assert not (tmp_path / "remote").exists()


def test_deploy_refuses_a_file_that_differs_from_its_checksum(tmp_path, capsys):
    run = fake_run(tmp_path)
    (run / "ship" / "m.onnx").write_bytes(b"changed")
    code, _, err = run_cli(capsys, "deploy", str(run), "--device", NOWHERE)
    assert_one_line_error(code, err, "m.onnx differs from SHA256SUMS")


@pytest.mark.parametrize("remote", ["/srv/a\nb", "x\ty", "x\x7f"])
def test_deploy_refuses_a_remote_dir_with_control_characters(tmp_path, capsys, remote):
    code, _, err = run_cli(capsys, "deploy", str(fake_run(tmp_path)), "--device", NOWHERE,
                           "--remote-dir", remote)
    assert_one_line_error(code, err, "control character")


def test_listed_files_are_the_checksummed_ones_and_the_list(tmp_path):
    ship = fake_run(tmp_path) / "ship"
    (ship / "unlisted.txt").write_text("never copied\n")
    assert [p.name for p in listed_files(ship)] == ["m.onnx", "runner.py", CHECKSUMS]


def test_deploy_copies_only_what_sha256sums_lists(sshd, tmp_path):
    ship = fake_run(tmp_path) / "ship"
    (ship / "unlisted.txt").write_text("never copied\n")
    remote = tmp_path / "remote"
    with pytest.raises(EdgepruneError):  # the model is not loadable: the --eval run fails
        deploy_folder(sshd.backend(python=sys.executable), ship, str(remote),
                      ship / "m.onnx", BenchOptions(threads=1, runs=1, min_seconds=0))
    assert listing(remote) == ["SHA256SUMS", "m.onnx", "runner.py"]


def test_a_copy_that_differs_is_named_by_the_device_check(sshd, tmp_path):
    """The device checks every file the copied list names, and the list itself."""
    from edgeprune.devices.deploy import _check_copy

    ship = fake_run(tmp_path) / "ship"
    remote = tmp_path / "remote"
    remote.mkdir()
    for p in listed_files(ship):
        (remote / p.name).write_bytes(p.read_bytes())
    (remote / "runner.py").write_text("tampered\n")
    backend = sshd.backend(python=sys.executable)
    with pytest.raises(EdgepruneError, match=r"differs from SHA256SUMS: runner\.py;"):
        _check_copy(backend, str(remote), sha256_file(ship / CHECKSUMS), 60)
    with pytest.raises(EdgepruneError, match="differs from SHA256SUMS: SHA256SUMS, runner"):
        _check_copy(backend, str(remote), "0" * 64, 60)
