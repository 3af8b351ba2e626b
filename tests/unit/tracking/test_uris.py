"""Tracking URIs: unknown schemes are one-paragraph UserErrors without secrets, a server that does
not answer fails fast, SQLite paths and the artifact directory beside them resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

from layer_sensitivity.errors import UserError
from layer_sensitivity.tracking.uris import artifacts_beside_store, check_server, check_uri, sqlite_path

SECRET = "s3cr3t-Pa55"


def _refused(uri: str) -> str:
    with pytest.raises(UserError) as info:
        check_uri(uri)
    message = str(info.value)
    assert "\n" not in message.strip()  # one paragraph
    return message


def test_unknown_scheme() -> None:
    message = _refused("bogus://x")
    assert "'bogus'" in message and "sqlite:///" in message


def test_unknown_scheme_message_hides_credentials() -> None:
    message = _refused(f"bogus://user:{SECRET}@host/db")
    assert SECRET not in message and "user:***@host" in message


@pytest.mark.parametrize("uri", [
    f"http://user:{SECRET}@127.0.0.1:9",  # nothing listens on port 9: refused at once
    "https://127.0.0.1:9/mlflow",
])
def test_a_server_that_does_not_answer_fails_fast_without_the_secret(uri: str) -> None:
    with pytest.raises(UserError, match="does not answer") as e:
        check_server(uri)
    assert SECRET not in str(e.value)
    assert "127.0.0.1:9" in str(e.value)


def test_sqlite_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite:///rel/mlflow.db") == tmp_path / "rel" / "mlflow.db"
    assert sqlite_path("sqlite:////abs/my%20store.db?timeout=20") == Path("/abs/my store.db")
    assert sqlite_path("sqlite:///:memory:") is None and sqlite_path("http://h") is None
    assert artifacts_beside_store("sqlite:////data/mlflow.db", "a b/c") == "/data/mlartifacts/a_b_c"
    assert artifacts_beside_store("http://h:5000", "x") is None
