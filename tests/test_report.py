"""Report regeneration: a run's artifacts through `mlflow run -e report`, and report_only."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from layer_sensitivity import manifest, report
from layer_sensitivity.cli import report as report_cli
from layer_sensitivity.errors import UserError

from .conftest import run_cli
from .test_legacy_manifest import legacy_doc, new_schema_equivalent, write_legacy
from .test_sweep import SweepRun, mlflow_run, sweep_once

REPORTS = [report.MARKDOWN_NAME, report.JSON_NAME]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> SweepRun:
    return sweep_once(tmp_path_factory.getbasetemp() / "shared-sweep")


def _artifacts(uri: str, run_id: str, dst: Path) -> dict[str, bytes]:
    client = mlflow.MlflowClient(uri)
    out = {}
    for a in client.list_artifacts(run_id):
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=a.path,
                                                    dst_path=str(dst), tracking_uri=uri)
        out[a.path] = Path(local).read_bytes()
    return out


def test_mlflow_run_report_regenerates_a_childs_reports(swept: SweepRun, tmp_path: Path) -> None:
    child = swept.children["wfp8_afp8/default/small"].info.run_id
    before = _artifacts(swept.uri, child, tmp_path / "before")
    (name,) = [n for n in before if n.endswith(manifest.MANIFEST_SUFFIX)]
    # make the report artifacts stale, to see them replaced
    client = mlflow.MlflowClient(swept.uri)
    for stale in REPORTS:
        (tmp_path / stale).write_text("stale\n")
        client.log_artifact(child, str(tmp_path / stale))
    proc = mlflow_run("report", {"run_id": child}, swept.store, swept.base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _artifacts(swept.uri, child, tmp_path / "after")
    assert after.keys() == before.keys()
    assert after == before  # regenerated from the same manifest: byte-identical, manifest intact
    doc = manifest.load(tmp_path / "after" / name)
    assert after[report.JSON_NAME].decode() == report.render_json(doc)
    # regenerating again changes nothing, byte for byte
    assert report_cli.regenerate_run(swept.uri, child) == sorted(REPORTS)
    assert _artifacts(swept.uri, child, tmp_path / "again") == before
    assert client.get_run(child).info.status == "FINISHED"


def test_a_run_without_manifest_is_refused_and_unchanged(swept: SweepRun, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    parent = swept.parent.info.run_id
    before = _artifacts(swept.uri, parent, tmp_path / "before")
    with pytest.raises(SystemExit) as e:
        report_cli.main(["--run-id", parent, "--tracking-uri", swept.uri])
    assert e.value.code == 2
    assert "no *_quant_manifest.json artifact" in capsys.readouterr().err
    assert _artifacts(swept.uri, parent, tmp_path / "after") == before
    with pytest.raises(SystemExit) as e:
        report_cli.main(["--run-id", "0123456789abcdef0123456789abcdef", "--tracking-uri",
                         swept.uri])
    assert e.value.code == 2 and "was not found" in capsys.readouterr().err


def test_report_only_regenerates_a_legacy_manifest(tmp_path: Path) -> None:
    out = tmp_path / "published"
    source = write_legacy(out)
    original = source.read_bytes()
    store = tmp_path / "mlflow.db"
    args = ["runner.report_only=true", f"runner.output_dir={out}", f"hydra.run.dir={tmp_path}/h"]
    proc = run_cli(args, store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md, js = out / report.MARKDOWN_NAME, out / report.JSON_NAME
    first = md.read_bytes(), js.read_bytes()
    assert source.read_bytes() == original  # the manifest is never rewritten
    assert not store.exists()  # no MLflow involved
    layers = [r["Layer"] for r in json.loads(js.read_text())["layers"]]
    assert layers == report.layer_rows(new_schema_equivalent())["Layer"].tolist()
    assert "visual" not in md.read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted([source.name, *REPORTS])
    # a second regeneration (in-process, same code path) is byte-identical
    report_cli.report_only(str(out))
    assert (md.read_bytes(), js.read_bytes()) == first


@pytest.mark.parametrize("content,needle", [
    (None, "Expected one *_quant_manifest.json"),
    ("{not json", "not valid JSON"),
    ('{"schema_version": 7, "scheme": {"name": "x"}}', "unknown schema_version 7"),
    (json.dumps({**legacy_doc(), "layer_sensitivity": {"a.quant_recipe": {"formats": ["x"]}}}),
     "scores must be a list"),
])
def test_report_only_bad_manifests_change_nothing(tmp_path: Path, content: str | None,
                                                  needle: str) -> None:
    (tmp_path / report.MARKDOWN_NAME).write_text("old report\n")
    if content is not None:
        (tmp_path / "x_quant_manifest.json").write_text(content)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(UserError) as e:
        report_cli.report_only(str(tmp_path))
    assert needle in str(e.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_report_only_cli_error_is_one_paragraph(tmp_path: Path) -> None:
    proc = run_cli(["runner.report_only=true", f"runner.output_dir={tmp_path}/none",
                    f"hydra.run.dir={tmp_path}/h"], tmp_path / "mlflow.db", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Expected one *_quant_manifest.json" in proc.stderr
    with pytest.raises(UserError, match="needs runner.output_dir"):
        report_cli.report_only(None)
