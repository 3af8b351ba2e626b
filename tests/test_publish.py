"""Publishing a chosen run: layout, provenance, atomic copy, no-op, refusal and force."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pytest

from layer_sensitivity import publish
from layer_sensitivity.cli import publish as publish_cli
from layer_sensitivity.errors import UserError

from .test_sweep import SweepRun, mlflow_run, sweep_once

SCHEME = "tiny-qwen3-vl_autoquant_wint8_aint8_lm_small"
LAYOUT = Path("tiny-qwen3-vl", "layer-analysis", "weight-int8-act-int8", "default", SCHEME)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# --- publish.py on its own (no MLflow) -------------------------------------------------------


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


def _files(tmp: Path, text: str = "a") -> dict[str, Path]:
    src = tmp / f"src-{text}"
    (src / "plots").mkdir(parents=True, exist_ok=True)
    for rel in ("m_quant_manifest.json", "layer-sensitivity-report.md", "plots/p.png"):
        (src / rel).write_text(f"{rel} {text}\n")
    return {rel: src / rel for rel in ("m_quant_manifest.json", "layer-sensitivity-report.md",
                                       "plots/p.png")}


def _prov(run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "published_at": "2026-01-01T00:00:00+00:00"}


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


def test_interrupted_publish_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "m" / "s"
    files = _files(tmp_path)
    files["missing.md"] = tmp_path / "does-not-exist.md"  # the copy fails half way
    with pytest.raises(FileNotFoundError):
        publish.publish_files(files, dest, _prov("run-a"))
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_directory_not_published_from_a_run_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "s"
    dest.mkdir()
    (dest / "notes.md").write_text("by hand")
    with pytest.raises(UserError, match="no provenance.json"):
        publish.publish_files(_files(tmp_path), dest, _prov("run-a"))
    assert _tree(dest) == {"notes.md": b"by hand"}


@pytest.mark.parametrize("name", ["..", "a/b", ""])
def test_destination_never_leaves_the_root(tmp_path: Path, name: str) -> None:
    doc = {"model": {"name": name}, "scheme": {"name": "s"},
           "quantization": {"weight_dtype": "int8", "activation_dtype": "int8",
                            "granularity": "default"}}
    with pytest.raises(UserError, match="cannot be used as a directory name|lacks model.name"):
        publish.destination(tmp_path, doc)


@pytest.mark.parametrize("rel", ["../x", "/x", "a/../../x", "provenance.json", "state.pt"])
def test_published_paths_never_leave_the_directory(tmp_path: Path, rel: str) -> None:
    (tmp_path / "f").write_text("f")
    with pytest.raises(UserError):
        publish.publish_files({rel: tmp_path / "f"}, tmp_path / "out" / "d", _prov("r"))
    assert list((tmp_path / "out").iterdir()) == []


# --- `mlflow run -e publish` on a sweep's child ----------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> SweepRun:
    return sweep_once(tmp_path_factory.getbasetemp() / "shared-sweep")


def _copy_run(swept: SweepRun, run_id: str, tmp: Path, extra: dict[str, bytes],
              status: str = "FINISHED") -> str:
    """A second real run with the same artifacts (plus ``extra``), e.g. a re-run of the job."""
    client = mlflow.MlflowClient(swept.uri)
    src = client.get_run(run_id)
    new = client.create_run(src.info.experiment_id, run_name=f"copy of {src.info.run_name}")
    for k, v in src.data.params.items():
        client.log_param(new.info.run_id, k, v)
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp / "a"),
                                                     tracking_uri=swept.uri))
    client.log_artifacts(new.info.run_id, str(local))
    for rel, data in extra.items():
        f = tmp / "extra" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        folder = str(Path(rel).parent)
        client.log_artifact(new.info.run_id, str(f), None if folder == "." else folder)
    client.set_terminated(new.info.run_id, status)
    return new.info.run_id


def _main(*args: str) -> None:
    publish_cli.main(list(args))


def test_mlflow_run_publish_then_noop_then_refusal_then_force(
        swept: SweepRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "models"
    child = swept.children["wint8_aint8/default/small"]
    run_id = child.info.run_id
    proc = mlflow_run("publish", {"run_id": run_id, "root": str(root)}, swept.store, swept.base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dest = root / LAYOUT
    assert sorted(p.name for p in dest.iterdir()) == sorted([
        f"{SCHEME}_quant_manifest.json", "layer-sensitivity-report.md",
        "layer-sensitivity-report.json", "composed_config.yaml", "provenance.json"])
    prov = json.loads((dest / "provenance.json").read_text())
    assert prov["run_id"] == run_id and prov["run_name"] == "wint8_aint8/default/small"
    assert prov["experiment_id"] == child.info.experiment_id and prov["experiment_name"]
    assert prov["tracking_uri"] == swept.uri
    assert prov["params"] == child.data.params
    assert prov["parent_run_id"] == swept.parent.info.run_id
    assert len(prov["git_commit"]) == 40 and prov["published_at"]
    assert prov["files"] == {p.name: _sha(p) for p in dest.iterdir() if p.name != "provenance.json"}
    client = mlflow.MlflowClient(swept.uri)
    assert client.get_run(run_id).data.tags["published.path"] == str(dest.resolve())
    snapshot = _tree(root)

    # the same run again: a no-op that says so
    _main("--run-id", run_id, "--root", str(root), "--tracking-uri", swept.uri)
    assert "already published" in capsys.readouterr().out
    assert _tree(root) == snapshot

    # a different run onto the same directory: refused without force
    other = _copy_run(swept, run_id, tmp_path, {"modelopt_state.pt": b"\x80\x04binary",
                                                "plots/sensitivity.png": b"\x89PNG fake"})
    with pytest.raises(SystemExit) as e:
        _main("--run-id", other, "--root", str(root), "--tracking-uri", swept.uri)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"already holds run {run_id}" in err and "force=true" in err
    assert _tree(root) == snapshot
    assert "published.path" not in client.get_run(other).data.tags

    # with force: replaced; the plot is published, the binary ModelOpt state never is
    _main("--run-id", other, "--root", str(root), "--force", "true", "--tracking-uri", swept.uri)
    assert "replaced" in capsys.readouterr().out
    assert json.loads((dest / "provenance.json").read_text())["run_id"] == other
    assert (dest / "plots" / "sensitivity.png").is_file()
    assert not list(root.rglob("*.pt"))
    assert client.get_run(other).data.tags["published.path"] == str(dest.resolve())
    assert sorted(p.name for p in dest.parent.iterdir()) == [SCHEME]  # nothing left staged


def test_unpublishable_runs_are_refused(swept: SweepRun, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "models"
    child = swept.children["wfp8_afp8/default/small"].info.run_id
    failed = _copy_run(swept, child, tmp_path / "f", {}, status="FAILED")
    cases = [(failed, "is FAILED"), (swept.parent.info.run_id, "no *_quant_manifest.json"),
             ("0123456789abcdef0123456789abcdef", "was not found")]
    for run_id, needle in cases:
        with pytest.raises(SystemExit) as e:
            _main("--run-id", run_id, "--root", str(root), "--tracking-uri", swept.uri)
        assert e.value.code == 2 and needle in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _main("--run-id", child, "--root", str(root), "--force", "maybe", "--tracking-uri",
              swept.uri)
    assert "is not a boolean" in capsys.readouterr().err
    assert not root.exists()


def test_a_manifest_cannot_steer_the_copy_outside_the_root(swept: SweepRun, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    child = swept.children["wfp8_afp8/default/small"].info.run_id
    local = Path(mlflow.artifacts.download_artifacts(run_id=child, dst_path=str(tmp_path / "a"),
                                                     tracking_uri=swept.uri))
    (manifest_file,) = local.glob("*_quant_manifest.json")
    doc = json.loads(manifest_file.read_text())
    doc["model"]["name"] = ".."
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / manifest_file.name).write_text(json.dumps(doc))
    client = mlflow.MlflowClient(swept.uri)
    run = client.create_run(client.get_run(child).info.experiment_id, run_name="evil")
    client.log_artifact(run.info.run_id, str(evil / manifest_file.name))
    client.set_terminated(run.info.run_id, "FINISHED")
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(SystemExit):
        _main("--run-id", run.info.run_id, "--root", str(root), "--tracking-uri", swept.uri)
    assert "cannot be used as a directory name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "evil", "root"]
    assert list(root.iterdir()) == []
    shutil.rmtree(evil)
