"""Publishing a sweep's child run from a real tracking store: ``mlflow run -e publish``, then the
core on the same store (no-op, refusal, force), refusals, and a manifest that tries to leave the
publish root."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import mlflow
import pytest

from layer_sensitivity import publish
from layer_sensitivity.errors import UserError
from layer_sensitivity.tracking.runs import RunStore
from tests.helpers import SweepRun, mlflow_run, run_cli, top_level_runs

pytestmark = pytest.mark.slow

SCHEME = "tiny-qwen3-vl_autoquant_wint8_aint8_lm_small"
LAYOUT = Path("tiny-qwen3-vl", "layer-analysis", "weight-int8-act-int8", "default", SCHEME)
PARENT_TAG = "mlflow.parentRunId"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


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


def test_mlflow_run_publish_then_noop_then_refusal_then_force(swept: SweepRun,
                                                              tmp_path: Path) -> None:
    root = tmp_path / "models"
    child = swept.children["wint8_aint8/default/small"]
    run_id = child.info.run_id
    top_level = {r.info.run_id for r in top_level_runs(swept.uri)}
    proc = mlflow_run("publish", {"run_id": run_id, "root": str(root)}, swept.store, swept.base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dest = root / LAYOUT
    assert sorted(p.name for p in dest.iterdir()) == sorted([
        f"{SCHEME}_quant_manifest.json", "layer-sensitivity-report.md",
        "layer-sensitivity-report.html", "layer-sensitivity-report.json", "composed_config.yaml",
        "provenance.json", "figures", "recipes"])
    assert sorted(p.suffix for p in (dest / "figures").iterdir()) == [".png"] * 3
    prov = json.loads((dest / "provenance.json").read_text())
    assert prov["run_id"] == run_id and prov["run_name"] == "wint8_aint8/default/small"
    assert prov["experiment_id"] == child.info.experiment_id and prov["experiment_name"]
    assert prov["tracking_uri"] == swept.uri
    assert prov["params"] == child.data.params
    assert prov["parent_run_id"] == swept.parent.info.run_id
    assert len(prov["git_commit"]) == 40 and prov["published_at"]
    assert prov["manifest"] == f"{SCHEME}_quant_manifest.json"
    assert prov["files"] == {rel: _sha(dest / rel) for rel in _tree(dest) if rel != "provenance.json"}
    client = mlflow.MlflowClient(swept.uri)
    assert client.get_run(run_id).data.tags["published.path"] == str(dest.resolve())
    # the run `mlflow run` made for the command is filed under the published run, named "publish"
    assert {r.info.run_id for r in top_level_runs(swept.uri)} == top_level
    filed = [r for r in client.search_runs([child.info.experiment_id])  # other tests add their
             if r.data.tags.get(PARENT_TAG) == run_id and r.info.run_name == "publish"]  # own
    assert [(r.info.run_name, r.info.status) for r in filed] == [("publish", "FINISHED")]
    snapshot = _tree(root)

    # the same run again: a no-op that says so
    store = RunStore(swept.uri)
    assert publish.publish_run(store, run_id, root, force=False).status == "unchanged"
    assert _tree(root) == snapshot

    # a different run onto the same directory: refused without force
    other = _copy_run(swept, run_id, tmp_path, {"modelopt_state.pt": b"\x80\x04binary",
                                                "plots/sensitivity.png": b"\x89PNG fake"})
    with pytest.raises(UserError, match=f"already holds run {run_id}.*force=true"):
        publish.publish_run(store, other, root, force=False)
    assert _tree(root) == snapshot
    assert "published.path" not in client.get_run(other).data.tags

    # with force: replaced; the plot is published, the binary ModelOpt state never is
    assert publish.publish_run(store, other, root, force=True).status == "replaced"
    assert json.loads((dest / "provenance.json").read_text())["run_id"] == other
    assert (dest / "plots" / "sensitivity.png").is_file()
    assert not list(root.rglob("*.pt"))
    assert client.get_run(other).data.tags["published.path"] == str(dest.resolve())
    assert sorted(p.name for p in dest.parent.iterdir()) == [SCHEME]  # nothing left staged


def test_unpublishable_runs_are_refused(swept: SweepRun, tmp_path: Path) -> None:
    root = tmp_path / "models"
    child = swept.children["wfp8_afp8/default/small"].info.run_id
    failed = _copy_run(swept, child, tmp_path / "f", {}, status="FAILED")
    store = RunStore(swept.uri)
    cases = [(failed, "is FAILED"), (swept.parent.info.run_id, "no *_quant_manifest.json"),
             ("0123456789abcdef0123456789abcdef", "was not found")]
    for run_id, needle in cases:
        with pytest.raises(UserError) as e:
            publish.publish_run(store, run_id, root, force=False)
        assert needle in str(e.value)
    assert not root.exists()


def test_the_publish_command_exits_2_with_one_paragraph(swept: SweepRun, tmp_path: Path) -> None:
    root = tmp_path / "models"
    child = swept.children["wfp8_afp8/default/small"].info.run_id
    module = "layer_sensitivity.cli.publish"
    proc = run_cli(["--run-id", child, "--root", str(root), "--force", "maybe"], swept.store,
                   cwd=tmp_path, module=module)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is not a boolean" in proc.stderr
    proc = run_cli(["--run-id", swept.parent.info.run_id, "--root", str(root)], swept.store,
                   cwd=tmp_path, module=module)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no *_quant_manifest.json" in proc.stderr
    assert not root.exists()


def test_a_manifest_cannot_steer_the_copy_outside_the_root(swept: SweepRun, tmp_path: Path) -> None:
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
    with pytest.raises(UserError, match="cannot be used as a directory name"):
        publish.publish_run(RunStore(swept.uri), run.info.run_id, root, force=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "evil", "root"]
    assert list(root.iterdir()) == []
    shutil.rmtree(evil)
