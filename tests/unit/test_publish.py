"""Publishing, without a tracking store: selection, layout, path safety, provenance and an atomic,
idempotent, guarded copy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from layer_sensitivity import publish
from layer_sensitivity.errors import UserError
from layer_sensitivity.schema import SensitivityConfig
from tests.helpers.manifests import typed


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _files(tmp: Path, text: str = "a") -> dict[str, Path]:
    src = tmp / f"src-{text}"
    (src / "plots").mkdir(parents=True, exist_ok=True)
    for rel in ("m_quant_manifest.json", "layer-sensitivity-report.md", "plots/p.png"):
        (src / rel).write_text(f"{rel} {text}\n")
    return {rel: src / rel for rel in ("m_quant_manifest.json", "layer-sensitivity-report.md",
                                       "plots/p.png")}


def _prov(run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "published_at": "2026-01-01T00:00:00+00:00"}


def test_select_publishes_manifest_reports_config_and_plots_only() -> None:
    chosen, skipped = publish.select([
        "x_quant_manifest.json", "layer-sensitivity-report.md", "layer-sensitivity-report.json",
        "composed_config.yaml", "plots/sensitivity.png", "heat.svg", "modelopt_state.pt",
        "x_autoquant_state.pth", "search.pkl", "plots/state.bin", "error.txt", "sub/x.json",
        "provenance.json"])
    assert chosen == ["composed_config.yaml", "heat.svg", "layer-sensitivity-report.json",
                      "layer-sensitivity-report.md", "plots/sensitivity.png",
                      "x_quant_manifest.json"]
    assert "modelopt_state.pt" in skipped and "x_autoquant_state.pth" in skipped
    assert all(publish.is_binary_state(p) for p in ["a.pt", "b.PTH", "c.safetensors",
                                                    "modelopt_state_x"])


def test_select_publishes_the_report_figures() -> None:
    chosen, skipped = publish.select(["figures/depth_profile.png", "figures/top_groups.png",
                                      "figures/state.npz"])
    assert chosen == ["figures/depth_profile.png", "figures/top_groups.png"]
    assert skipped == ["figures/state.npz"]


def test_layout_follows_model_pair_granularity_and_scheme(tmp_path: Path) -> None:
    dest = publish.analysis_dir(tmp_path, SensitivityConfig(), "s")
    assert dest == tmp_path.resolve() / "tiny-qwen3-vl" / "layer-analysis" / "weight-fp8-act-fp8" \
        / "default" / "s"
    doc = typed({"schema_version": 1, "model": {"name": "tiny-qwen3-vl"}, "scheme": {"name": "s"},
                 "quantization": {"weight_dtype": "fp8", "activation_dtype": "fp8",
                                  "granularity": "default"}, "layer_sensitivity": {}})
    assert publish.destination(tmp_path, doc) == dest


@pytest.mark.parametrize("part", ["..", ".", "", "a/b", "a\\b", "a\x00b"])
def test_safe_join_refuses_parts_that_leave_the_root(tmp_path: Path, part: str) -> None:
    with pytest.raises(UserError, match="cannot be used as a directory name"):
        publish.safe_join(tmp_path, "ok", part)
    assert publish.safe_join(tmp_path, "ok", "fine") == tmp_path.resolve() / "ok" / "fine"


def test_publish_files_is_atomic_idempotent_and_guarded(tmp_path: Path) -> None:
    dest = publish.layout_dir(tmp_path / "models", "m", "int8", "int8", "default", "s")
    first = publish.publish_files(_files(tmp_path), dest, _prov("run-a"))
    assert first.status == "published"
    prov = json.loads((dest / "provenance.json").read_text())
    assert prov["run_id"] == "run-a"
    assert prov["files"] == {rel: _sha(dest / rel) for rel in first.files}
    assert sorted(prov["files"]) == ["layer-sensitivity-report.md", "m_quant_manifest.json",
                                     "plots/p.png"]
    snapshot = _tree(dest)
    # the same run again: a no-op
    assert publish.publish_files(_files(tmp_path), dest, _prov("run-a")).status == "unchanged"
    # another run: refused without force, nothing changed
    with pytest.raises(UserError, match="already holds run run-a.*force=true"):
        publish.publish_files(_files(tmp_path, "b"), dest, _prov("run-b"))
    assert _tree(dest) == snapshot
    # force replaces it whole
    assert publish.publish_files(_files(tmp_path, "b"), dest, _prov("run-b"),
                                 force=True).status == "replaced"
    assert json.loads((dest / "provenance.json").read_text())["run_id"] == "run-b"
    assert (dest / "plots/p.png").read_text() == "plots/p.png b\n"
    # a local edit of a published file is not silently kept or overwritten
    (dest / "plots/p.png").write_text("edited")
    with pytest.raises(UserError, match="plots/p.png changed since"):
        publish.publish_files(_files(tmp_path, "b"), dest, _prov("run-b"))
    assert publish.publish_files(_files(tmp_path, "b"), dest, _prov("run-b"),
                                 force=True).status == "replaced"
    assert (dest / "plots/p.png").read_text() == "plots/p.png b\n"
    assert [p.name for p in dest.parent.iterdir()] == ["s"]  # no staging leftovers


def test_check_existing_says_go_unchanged_or_refuses(tmp_path: Path) -> None:
    dest = tmp_path / "d"
    assert publish.check_existing(dest, "run-a", force=False) is None  # nothing there
    dest.mkdir()
    assert publish.check_existing(dest, "run-a", force=False) is None  # empty directory
    done = publish.publish_files(_files(tmp_path), dest, _prov("run-a"))
    same = publish.check_existing(dest, "run-a", force=False)
    assert same is not None and same.status == "unchanged" and same.files == done.files
    assert publish.check_existing(dest, "run-a", force=True) is None
    assert publish.check_existing(dest, "run-b", force=True) is None
    with pytest.raises(UserError, match="already holds run run-a"):
        publish.check_existing(dest, "run-b", force=False)
    (tmp_path / "f").write_text("a file")
    with pytest.raises(UserError, match="is not a directory"):
        publish.check_existing(tmp_path / "f", "run-a", force=False)


def test_interrupted_publish_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "m" / "s"
    files = _files(tmp_path)
    files["missing.md"] = tmp_path / "does-not-exist.md"  # the copy fails half way
    with pytest.raises(FileNotFoundError):
        publish.publish_files(files, dest, _prov("run-a"))
    assert not (tmp_path / "models").exists()  # nor the directories made for it


def test_directory_not_published_from_a_run_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "s"
    dest.mkdir()
    (dest / "notes.md").write_text("by hand")
    with pytest.raises(UserError, match="no provenance.json"):
        publish.publish_files(_files(tmp_path), dest, _prov("run-a"))
    assert _tree(dest) == {"notes.md": b"by hand"}


@pytest.mark.parametrize("name", ["..", "a/b", ""])
def test_destination_never_leaves_the_root(tmp_path: Path, name: str) -> None:
    doc = typed({"schema_version": 1, "model": {"name": name}, "scheme": {"name": "s"},
                 "quantization": {"weight_dtype": "int8", "activation_dtype": "int8",
                                  "granularity": "default"}, "layer_sensitivity": {}})
    with pytest.raises(UserError, match="cannot be used as a directory name|lacks model.name"):
        publish.destination(tmp_path, doc)


@pytest.mark.parametrize("rel", ["../x", "/x", "a/../../x", "provenance.json", "state.pt"])
def test_published_paths_never_leave_the_directory(tmp_path: Path, rel: str) -> None:
    (tmp_path / "f").write_text("f")
    with pytest.raises(UserError):
        publish.publish_files({rel: tmp_path / "f"}, tmp_path / "out" / "d", _prov("r"))
    assert not (tmp_path / "out").exists()


SECRET = "s3cr3t-Pa55"


def test_provenance_records_the_run_and_redacts_credentials() -> None:
    from layer_sensitivity.tracking.runs import RunRecord

    uri = f"postgresql://mlflow:{SECRET}@db:5432/mlflow"
    record = RunRecord("r1", "wfp8_afp8/default/small", "FINISHED", "3", "exp",
                       {"tracking.uri": uri, "quant_pair.name": "wfp8_afp8"},
                       {"mlflow.source.git.commit": "c" * 40, "mlflow.parentRunId": "p1"})
    prov = publish.provenance(record, uri, "x_quant_manifest.json")
    assert SECRET not in json.dumps(prov)
    assert prov["tracking_uri"] == "postgresql://mlflow:***@db:5432/mlflow"
    assert prov["params"] == {"quant_pair.name": "wfp8_afp8",
                              "tracking.uri": "postgresql://mlflow:***@db:5432/mlflow"}
    assert (prov["run_id"], prov["run_name"], prov["experiment_id"], prov["experiment_name"]) == \
        ("r1", "wfp8_afp8/default/small", "3", "exp")
    assert prov["parent_run_id"] == "p1" and prov["manifest"] == "x_quant_manifest.json"
    assert (prov["git_commit"], prov["git_commit_source"]) == ("c" * 40, "run")
    assert prov["published_at"]


def test_provenance_without_a_recorded_commit_names_the_publishers_checkout() -> None:
    from layer_sensitivity.tracking.runs import RunRecord

    record = RunRecord("r1", "n", "FINISHED", "0", "Default", {}, {})
    prov = publish.provenance(record, "sqlite:////tmp/mlflow.db", "x_quant_manifest.json")
    assert prov["git_commit_source"] == "publisher" and prov["parent_run_id"] is None
    assert prov["tracking_uri"] == "sqlite:////tmp/mlflow.db"


def test_select_publishes_the_recipes_but_nothing_else_under_recipes() -> None:
    chosen, skipped = publish.select(["recipes/keep_top_25.json", "recipes/frontier_6bits.json",
                                      "recipes/state.pth", "other/keep_top_25.json"])
    assert chosen == ["recipes/frontier_6bits.json", "recipes/keep_top_25.json"]
    assert skipped == ["other/keep_top_25.json", "recipes/state.pth"]


def test_a_full_disk_leaves_no_directory_chain_and_one_paragraph(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import shutil

    from layer_sensitivity.errors import OutOfSpace

    def full(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(shutil, "copyfile", full)
    root = tmp_path / "models"
    dest = root / "m" / "layer-analysis" / "weight-fp8-act-fp8" / "default" / "scheme"
    with pytest.raises(OutOfSpace, match="no space left on the device"):
        publish.publish_files(_files(tmp_path), dest, _prov("run-a"))
    assert not root.exists()
