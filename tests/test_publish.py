"""``guardnet hub push`` (dry run and a stand-in Hub API) and ``guardnet models``, offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from weights_helpers import TINY_CONFIG, sha256, tiny_folder

from guardnet.cli import main
from guardnet.errors import WeightsError
from guardnet.weights import MIRROR_ENV, PRETRAINED, PretrainedEntry
from guardnet.weights.publish import push, upload_set

REPO = Path(__file__).resolve().parents[1]


def _register(monkeypatch: pytest.MonkeyPatch, folder: Path, **changes: Any) -> PretrainedEntry:
    entry = PretrainedEntry(
        **{
            "name": folder.name,
            "hub_id": f"org/{folder.name}",
            "revision": None,
            "config_sha256": sha256(folder / "config.json"),
            "weights_sha256": sha256(folder / "model.safetensors"),
            "dataset": "cifar10",
            "architecture": "CifarResNet",
            **changes,
        }
    )
    monkeypatch.setitem(PRETRAINED, entry.name, entry)
    return entry


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A mirror with one registered tiny model ``tiny-a`` (plus a licence file and clutter)."""
    root = tmp_path / "mirror"
    folder, _ = tiny_folder(root / "tiny-a")
    (folder / "LICENSE.txt").write_text("licence text\n")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x").write_text("not uploaded")
    (folder / "model.safetensors.partial").write_bytes(b"half a file")
    _register(monkeypatch, folder)
    return root


def test_dry_run_writes_the_exact_upload_set(mirror: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "manifest.json"
    manifest = push(["tiny-a"], dry_run=True, out=out, mirror=mirror)
    assert json.loads(out.read_text()) == manifest
    assert manifest["dry_run"] is True
    (repo,) = manifest["repos"]
    assert repo["repo_id"] == "org/tiny-a" and repo["registered_revision"] is None
    folder = mirror / "tiny-a"
    expected = [
        {"path": name, "size": (folder / name).stat().st_size, "sha256": sha256(folder / name)}
        for name in ("LICENSE.txt", "README.md", "config.json", "model.safetensors")
    ]
    assert repo["files"] == expected  # hidden files and .partial leftovers are left out
    assert "commit" not in repo


def test_upload_set_refuses_what_the_registry_does_not_describe(
    mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = mirror / "tiny-a"
    tiny_folder(folder, seed=1)  # new weights, registry not updated
    with pytest.raises(WeightsError, match=r"config\.json has sha256 .* the registry records"):
        upload_set(["tiny-a"], mirror=mirror)
    _register(monkeypatch, folder, license="MIT")
    with pytest.raises(WeightsError, match=r"license='Apache-2\.0', the registry 'MIT'"):
        upload_set(["tiny-a"], mirror=mirror)
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"model\.safetensors missing"):
        upload_set(["tiny-a"], mirror=mirror)
    with pytest.raises(WeightsError, match="unknown pretrained model 'nope'"):
        upload_set(["nope"], mirror=mirror)
    with pytest.raises(WeightsError, match="no mirror"):
        upload_set(["tiny-a"], mirror=mirror / "absent")


def test_push_uploads_each_folder_once_with_the_listed_files(
    mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: list[tuple[str, dict[str, Any]]] = []

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            calls.append(("init", {"token": token}))

        def create_repo(self, repo_id: str, **kwargs: Any) -> None:
            calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

        def upload_folder(self, **kwargs: Any) -> Any:
            calls.append(("upload_folder", kwargs))
            return type("CommitInfo", (), {"oid": "c" * 40})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    manifest = push(["tiny-a"], dry_run=False, mirror=mirror, token="t")
    (repo,) = manifest["repos"]
    assert repo["commit"] == "c" * 40 and manifest["dry_run"] is False
    kinds = [kind for kind, _ in calls]
    assert kinds == ["init", "create_repo", "upload_folder"]
    upload = calls[2][1]
    assert upload["repo_id"] == "org/tiny-a"
    assert upload["folder_path"] == str(mirror / "tiny-a")
    assert upload["allow_patterns"] == [f["path"] for f in repo["files"]]
    assert upload["delete_patterns"] == "*"  # the repo ends up holding the upload set only


def test_push_failure_names_the_repo(mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    class Unreachable:
        def __init__(self, token: str | None = None) -> None:
            pass

        def create_repo(self, repo_id: str, **kwargs: Any) -> None:
            raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "HfApi", Unreachable)
    with pytest.raises(WeightsError, match="Hub repo 'org/tiny-a': ConnectionError: no network"):
        push(["tiny-a"], dry_run=False, mirror=mirror)


def test_cli_hub_push_dry_run(
    mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "manifest.json"
    argv = ["hub", "push", "tiny-a", "--dry-run", "--manifest", str(out), "--mirror", str(mirror)]
    assert main(argv) == 0
    assert "org/tiny-a: 4 files" in capsys.readouterr().out
    assert [f["path"] for f in json.loads(out.read_text())["repos"][0]["files"]] == [
        "LICENSE.txt",
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert main(["hub", "push", "nope", "--dry-run", "--mirror", str(mirror)]) == 1
    assert "unknown pretrained model 'nope'" in capsys.readouterr().err


def test_repository_mirror_dry_run_covers_every_registered_model(tmp_path: Path) -> None:
    manifest = push(dry_run=True, mirror=REPO / "hub")
    assert [repo["name"] for repo in manifest["repos"]] == sorted(PRETRAINED)
    for repo in manifest["repos"]:
        paths = {f["path"] for f in repo["files"]}
        assert {"README.md", "config.json", "model.safetensors"} <= paths
        assert repo["repo_id"] == PRETRAINED[repo["name"]].hub_id


def test_models_lists_figures_from_each_config(
    mirror: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    for name in list(PRETRAINED):  # only the tiny model and one without files anywhere
        if name != "tiny-a":
            monkeypatch.delitem(PRETRAINED, name)
    offline = mirror / "tiny-b"
    tiny_folder(offline)
    _register(monkeypatch, offline, hub_id="org/absent-tiny-b")
    (offline / "config.json").rename(offline / "moved.json")  # no config in mirror or cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(mirror / "no-cache"))

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row_a = next(line for line in lines if line.startswith("tiny-a"))
    value = TINY_CONFIG["metrics"]["cifar10_test_accuracy"]
    assert f"cifar10_test_accuracy {value:.2%}" in row_a and "org/tiny-a" in row_a
    row_b = next(line for line in lines if line.startswith("tiny-b"))
    assert " - " in row_b and "org/absent-tiny-b" in row_b
