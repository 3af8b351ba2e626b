"""8 real jobs started together on a brand-new SQLite store: all land, complete, in one experiment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.helpers import FAST, tool_env

pytestmark = pytest.mark.slow
JOBS = 8
EXPERIMENT = "parallel-jobs"


def test_eight_jobs_at_once_on_a_new_store_all_finish(tmp_path: Path) -> None:
    store = tmp_path / "new" / "mlflow.db"  # neither the file nor its folder exists yet
    env = tool_env(store) | {"OMP_NUM_THREADS": "1", "MLFLOW_EXPERIMENT_NAME": EXPERIMENT}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "layer_sensitivity", f"quant_pair={'fp8' if i % 2 else 'int8'}",
         *FAST.split(), f"dataset.max_calib_samples={2 + i // 2}", "autoquant.reuse_scores=false",
         "tracking.system_metrics=false", f"hydra.run.dir={tmp_path}/out{i}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(JOBS)]
    errors = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * JOBS, [e[-1500:] for e in errors if e]
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == JOBS and {r.info.status for r in runs} == {"FINISHED"}
    assert sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments()) == JOBS
    for r in runs:  # every metric and artifact of a job, not just the run row
        assert len([k for k in r.data.metrics if k.startswith("sensitivity/")]) == 17
        names = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert any(n.endswith("_quant_manifest.json") for n in names) and "figures" in names
        assert r.info.artifact_uri.startswith(str(store.parent))  # beside the store
