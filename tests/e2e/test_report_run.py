"""Report regeneration from a real tracking store (``mlflow run -e report`` on a sweep's child, the
core on the same store) and the ``runner.report_only`` command (no MLflow at all)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from layer_sensitivity import figures, manifest, regenerate, report
from layer_sensitivity.errors import UserError
from layer_sensitivity.tracking.runs import RunStore
from tests.helpers import SweepRun, mlflow_run, run_cli, top_level_runs
from tests.helpers.manifests import new_schema_equivalent, write_legacy

pytestmark = pytest.mark.slow

REPORTS = [report.MARKDOWN_NAME, report.JSON_NAME, report.HTML_NAME]
PARENT_TAG = "mlflow.parentRunId"


def _artifacts(uri: str, run_id: str, dst: Path) -> dict[str, bytes]:
    """Every artifact file of a run (folders walked), downloaded: relative path -> bytes."""
    client = mlflow.MlflowClient(uri)
    out: dict[str, bytes] = {}
    pending: list[str | None] = [None]
    while pending:
        folder = pending.pop()
        for a in client.list_artifacts(run_id, folder):
            if a.is_dir:
                pending.append(a.path)
                continue
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=a.path,
                                                        dst_path=str(dst), tracking_uri=uri)
            out[a.path] = Path(local).read_bytes()
    return out


def test_mlflow_run_report_regenerates_a_childs_reports(swept: SweepRun, tmp_path: Path) -> None:
    child = swept.children["wfp8_afp8/default/small"]
    run_id = child.info.run_id
    before = _artifacts(swept.uri, run_id, tmp_path / "before")
    (name,) = [n for n in before if n.endswith(manifest.MANIFEST_SUFFIX)]
    doc = manifest.load(tmp_path / "before" / name)
    regenerated = sorted([*REPORTS, *(f"{figures.FIGURES_DIR}/{n}" for n in figures.figure_names(doc))])
    assert set(regenerated) <= set(before)  # the job logged its figures too
    top_level = {r.info.run_id for r in top_level_runs(swept.uri)}
    # make the report and figure artifacts stale, to see them replaced
    client = mlflow.MlflowClient(swept.uri)
    for rel in regenerated:
        stale = tmp_path / "stale" / rel
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_text("stale\n")
        folder = str(Path(rel).parent)
        client.log_artifact(run_id, str(stale), None if folder == "." else folder)
    assert _artifacts(swept.uri, run_id, tmp_path / "stale-check")[report.JSON_NAME] == b"stale\n"
    proc = mlflow_run("report", {"run_id": run_id}, swept.store, swept.base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _artifacts(swept.uri, run_id, tmp_path / "after")
    assert after.keys() == before.keys()
    assert after == before  # regenerated from the same manifest: byte-identical, manifest intact
    assert after[report.JSON_NAME].decode() == report.render_json(manifest.load(tmp_path / "after" / name))
    # the run `mlflow run` made for the command is filed under the target, named "report":
    # no extra top-level run
    assert {r.info.run_id for r in top_level_runs(swept.uri)} == top_level
    filed = [r for r in client.search_runs([child.info.experiment_id])
             if r.data.tags.get(PARENT_TAG) == run_id and r.info.run_name == "report"]
    assert [(r.info.run_name, r.info.status) for r in filed] == [("report", "FINISHED")]
    # regenerating again (the core, in process) changes nothing, byte for byte
    assert regenerate.regenerate_run(RunStore(swept.uri), run_id) == regenerated
    assert _artifacts(swept.uri, run_id, tmp_path / "again") == before
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_run_without_manifest_is_refused_and_unchanged(swept: SweepRun, tmp_path: Path) -> None:
    parent = swept.parent.info.run_id
    before = _artifacts(swept.uri, parent, tmp_path / "before")
    store = RunStore(swept.uri)
    with pytest.raises(UserError, match=r"no \*_quant_manifest.json artifact"):
        regenerate.regenerate_run(store, parent)
    assert _artifacts(swept.uri, parent, tmp_path / "after") == before
    with pytest.raises(UserError, match="was not found"):
        regenerate.regenerate_run(store, "0123456789abcdef0123456789abcdef")
    # the command: exit 2 and the message, no traceback
    proc = run_cli(["--run-id", parent], swept.store, cwd=tmp_path,
                   module="layer_sensitivity.cli.report")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no *_quant_manifest.json artifact" in proc.stderr
    assert _artifacts(swept.uri, parent, tmp_path / "after-cli") == before


def test_report_only_command_regenerates_a_legacy_manifest_without_mlflow(tmp_path: Path) -> None:
    out = tmp_path / "published"
    source = write_legacy(out)
    original = source.read_bytes()
    store = tmp_path / "mlflow.db"
    args = ["runner.report_only=true", f"runner.output_dir={out}", f"hydra.run.dir={tmp_path}/h"]
    proc = run_cli(args, store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md, js = out / report.MARKDOWN_NAME, out / report.JSON_NAME
    assert source.read_bytes() == original  # the manifest is never rewritten
    assert not store.exists() and not (tmp_path / "mlruns").exists()  # no MLflow involved
    layers = [r["Group"] for r in json.loads(js.read_text())["layers"]]
    assert layers == report.layer_rows(new_schema_equivalent())["Group"].tolist()
    assert "visual" not in md.read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted([source.name, *REPORTS, figures.FIGURES_DIR])
    first = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    # a second regeneration (in process, the same core call) is byte-identical
    regenerate.report_only(str(out))
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == first


def test_report_only_command_error_is_one_paragraph(tmp_path: Path) -> None:
    proc = run_cli(["runner.report_only=true", f"runner.output_dir={tmp_path}/none",
                    f"hydra.run.dir={tmp_path}/h"], tmp_path / "mlflow.db", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Expected one *_quant_manifest.json" in proc.stderr
