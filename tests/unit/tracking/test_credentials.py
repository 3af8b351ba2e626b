"""Passwords leave tracking URIs for the environment variables their clients read."""

from __future__ import annotations

import pytest

from layer_sensitivity.tracking import credentials

SECRET = "s3cr3t/P@ss"
QUOTED = "s3cr3t%2FP%40ss"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (credentials.USERNAME_ENV, credentials.PASSWORD_ENV, credentials.PG_PASSWORD_ENV,
                "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)


def test_http_password_moves_to_mlflow_basic_auth_variables() -> None:
    assert credentials.move_credentials(f"http://al%20ice:{QUOTED}@127.0.0.1:5000/x") \
        == "http://127.0.0.1:5000/x"
    import os

    assert os.environ[credentials.USERNAME_ENV] == "al ice"
    assert os.environ[credentials.PASSWORD_ENV] == SECRET
    assert credentials.http_basic_auth("http://127.0.0.1:5000") == ("al ice", SECRET)


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg2"])
def test_postgresql_password_moves_to_pgpassword(scheme: str) -> None:
    import os

    clean = credentials.move_credentials(f"{scheme}://mlflow:{QUOTED}@db:5432/mlflow?sslmode=x")
    assert clean == f"{scheme}://mlflow@db:5432/mlflow?sslmode=x"
    assert os.environ[credentials.PG_PASSWORD_ENV] == SECRET


@pytest.mark.parametrize("uri", ["sqlite:////tmp/a@b/mlflow.db", "http://127.0.0.1:5000",
                                 "http://token@host", "mysql://u:pw@db/x",
                                 "postgresql+pg8000://u:pw@db/x"])
def test_other_uris_are_left_as_given(uri: str) -> None:
    assert credentials.move_credentials(uri) == uri


def test_command_line_and_environment_are_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://u:pw@mlflow.example.com")
    argv = credentials.scrub_process(["-m", "quant_pair=fp8,int8",
                                      f"tracking.uri=http://user:{QUOTED}@127.0.0.1:5000",
                                      "--overrides=x=1"])
    assert argv == ["-m", "quant_pair=fp8,int8", "tracking.uri=http://127.0.0.1:5000",
                    "--overrides=x=1"]
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com"
    assert os.environ[credentials.PASSWORD_ENV] == SECRET  # the command line's, given last
