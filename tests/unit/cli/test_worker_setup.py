"""Launcher presets: how local_parallel sizes and places its workers, and what the SLURM preset
asks sbatch for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from layer_sensitivity.cli import config_store, worker_setup


@pytest.fixture
def no_gpu_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(worker_setup.GPUS_ENV, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return monkeypatch


@pytest.mark.parametrize(("gpus", "workers", "expected"), [
    (["0", "1", "2", "3"], 4, [["0"], ["1"], ["2"], ["3"]]),  # one GPU per worker
    (["0", "1", "2", "3"], 2, [["0", "1"], ["2", "3"]]),  # a pair each, for device_map=auto
    (["4", "7"], 4, [["4"], ["7"], ["4"], ["7"]]),  # more workers than GPUs: round robin
    ([], 2, [[], []]),  # CPU host
])
def test_each_slot_gets_its_share_of_the_gpus(gpus: list[str], workers: int,
                                              expected: list[list[str]]) -> None:
    assert [worker_setup.gpus_for_slot(gpus, workers, s) for s in range(workers)] == expected


def test_the_sweeps_gpu_list_wins_over_cuda_visible_devices(no_gpu_env: pytest.MonkeyPatch) -> None:
    no_gpu_env.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert worker_setup.visible_gpus() == ["2", "3"]
    no_gpu_env.setenv(worker_setup.GPUS_ENV, "5")  # what the sweep counted; a worker's own
    assert worker_setup.visible_gpus() == ["5"]  # CUDA_VISIBLE_DEVICES is already narrowed
    no_gpu_env.setenv(worker_setup.GPUS_ENV, "")
    assert worker_setup.visible_gpus() == []


def test_workers_default_to_gpus_else_cores(no_gpu_env: pytest.MonkeyPatch) -> None:
    no_gpu_env.setenv(worker_setup.GPUS_ENV, "0,1,2")
    assert worker_setup.workers("auto") == 3
    no_gpu_env.setenv(worker_setup.GPUS_ENV, "")
    assert worker_setup.workers("auto") == worker_setup.cores()
    assert worker_setup.workers(-1) == worker_setup.cores() and worker_setup.workers(5) == 5


def test_threads_keep_workers_times_threads_within_the_cores() -> None:
    cores = worker_setup.cores()
    for n in (1, 2, cores, 2 * cores):
        threads = worker_setup.threads_per_worker(n)
        assert threads >= 1 and (n * threads <= cores or threads == 1)
    assert worker_setup.threads_per_worker(2, 3) == 3  # an explicit count is kept


def test_a_held_slot_is_not_given_twice(tmp_path: Path) -> None:
    first, lock0 = worker_setup.claim_slot(tmp_path, 2)
    second, lock1 = worker_setup.claim_slot(tmp_path, 2)
    assert (first, second) == (0, 1)
    with pytest.raises(RuntimeError, match="slots"):
        worker_setup.claim_slot(tmp_path, 2)
    lock0.release()  # a worker that exits frees its slot for its replacement
    assert worker_setup.claim_slot(tmp_path, 2)[0] == 0
    lock1.release()


def test_a_worker_pins_its_gpus_and_threads(no_gpu_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    no_gpu_env.setattr(worker_setup, "_slot", None)
    no_gpu_env.setattr(worker_setup, "_gpus", [])
    for var in worker_setup.THREAD_VARS:
        no_gpu_env.setenv(var, os.environ.get(var, ""))  # restored after the test
    no_gpu_env.setenv(worker_setup.GPUS_ENV, "3,5")
    no_gpu_env.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    before = torch.get_num_threads()
    _, other_worker = worker_setup.claim_slot(tmp_path, 2)  # another worker holds slot 0
    try:
        assert worker_setup.setup_worker(2, 1, tmp_path) == ["5"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5" and os.environ["OMP_NUM_THREADS"] == "1"
        assert torch.get_num_threads() == 1
        assert worker_setup.setup_worker(2, 1, tmp_path) == ["5"]  # its next job: same slot
    finally:
        torch.set_num_threads(before)
        other_worker.release()
        if worker_setup._slot is not None:
            worker_setup._slot.release()


def _launcher_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=config_store.CONF_DIR, version_base="1.3"):
        cfg = compose(config_store.PRIMARY_CONFIG, overrides=list(overrides),
                      return_hydra_config=True)
    return cfg.hydra


def test_local_parallel_preset_is_joblib_with_worker_setup(no_gpu_env: pytest.MonkeyPatch) -> None:
    no_gpu_env.setenv(worker_setup.GPUS_ENV, "")
    hydra_cfg = _launcher_config("hydra/launcher=local_parallel")
    assert hydra_cfg.launcher._target_.endswith("JoblibLauncher")
    assert hydra_cfg.launcher.n_jobs == worker_setup.cores()  # the default: one per core here
    assert hydra_cfg.callbacks.worker_setup._target_.endswith("worker_setup.WorkerSetup")
    assert "sweep_runs" in hydra_cfg.callbacks  # the project's own callback stays


def test_slurm_preset_reaches_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The preset's keys, as hydra-submitit-launcher hands them to submitit, become sbatch
    options (submitit checks every name). A stand-in `srun` makes submitit believe it is on a
    cluster; nothing is submitted."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    node = OmegaConf.to_container(_launcher_config(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=128",
    ).launcher, resolve=False)
    node |= {"submitit_folder": str(tmp_path / "%j"), "name": "sensitivity"}
    launcher = instantiate(node)  # the plugin's own SlurmLauncher
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v
                                  for k, v in launcher.params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    executor._executor.parameters["map_count"] = 20  # a 20-job sweep
    sbatch = executor._executor._make_submission_file_text("python -m layer_sensitivity", "x")
    for option in ("--partition=gpu", "--gpus-per-task=1", "--cpus-per-task=8", "--mem=128GB",
                   "--time=120", "--array=0-19%8"):
        assert f"#SBATCH {option}\n" in sbatch, sbatch
