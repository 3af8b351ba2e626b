"""Store set-up: bad stores are one-paragraph UserErrors, migration leftovers are repaired or refused."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import mlflow
import pytest
from filelock import FileLock

from layer_sensitivity.errors import UserError
from layer_sensitivity.tracking import store as tracking_store
from layer_sensitivity.tracking.store import prepare_store

SECRET = "s3cr3t-Pa55"


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as con:
        return {r[0] for r in con.execute("select name from sqlite_master where type='table'")}


def _user_error(uri: str) -> str:
    with pytest.raises(UserError) as info:
        prepare_store(uri)
    message = str(info.value)
    assert "\n" not in message.strip()  # one paragraph
    return message


# --- bad URIs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_file_uri", [False, True])
def test_directory_or_file_uri_is_refused_with_a_sqlite_suggestion(tmp_path: Path, as_file_uri: bool) -> None:
    message = _user_error(tmp_path.as_uri() if as_file_uri else str(tmp_path))
    assert "refuses file stores" in message
    assert f"sqlite:///{tmp_path / 'mlflow.db'}" in message and "mlflow server" in message
    assert list(tmp_path.iterdir()) == []


def test_sqlite_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a directory\n")
    message = _user_error(f"sqlite:///{blocker}/sub/mlflow.db")
    assert str(blocker) in message and "regular file" in message
    assert blocker.read_text() == "a file, not a directory\n"


def test_sqlite_path_that_is_a_directory(tmp_path: Path) -> None:
    message = _user_error(f"sqlite:///{tmp_path}")
    assert "directory" in message and f"sqlite:///{tmp_path / 'mlflow.db'}" in message


def test_sqlite_path_that_is_not_a_database(tmp_path: Path) -> None:
    text_file = tmp_path / "mlflow.db"
    text_file.write_text("not sqlite " * 200)
    message = _user_error(f"sqlite:///{text_file}")
    assert "not a readable SQLite database" in message
    assert text_file.read_text() == "not sqlite " * 200


@pytest.mark.parametrize("uri", [
    f"postgresql://mlflow:{SECRET}@127.0.0.1:9/mlflow",
    "postgresql+psycopg2://127.0.0.1:9/mlflow",
    "sqlite:///:memory:",
])
def test_server_and_database_uris_pass_through(uri: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    prepare_store(uri)  # raises if it tries to connect or open anything
    assert list(tmp_path.iterdir()) == []


# --- creating, the fast path and the lock ---------------------------------------------------------


def test_prepared_store_opens_and_has_default(pristine_store: Path) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{pristine_store}")
    names = {e.name for e in client.search_experiments()}
    assert {"Default", "kept"} <= names
    assert not any(t.startswith("_alembic_tmp_") for t in _tables(pristine_store))


def test_ready_store_needs_no_lock(store_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking_store, "_LOCK_TIMEOUT_S", 0.3)
    with FileLock(f"{store_copy}.lock"):  # someone else holds it: a ready store must not wait
        prepare_store(f"sqlite:///{store_copy}")


def test_store_needing_work_waits_for_the_lock(store_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _plant_stale_copy(store_copy, "tags")
    monkeypatch.setattr(tracking_store, "_LOCK_TIMEOUT_S", 0.3)
    with FileLock(f"{store_copy}.lock"), pytest.raises(UserError, match=r"mlflow\.db\.lock"):
        prepare_store(f"sqlite:///{store_copy}")
    assert "_alembic_tmp_tags" in _tables(store_copy)  # untouched while another process holds it


# --- leftover _alembic_tmp_* tables ---------------------------------------------------------------


def _plant_stale_copy(db: Path, table: str) -> None:
    with sqlite3.connect(db) as con:
        con.execute(f'create table "_alembic_tmp_{table}" as select * from "{table}"')


def test_stale_tmp_table_is_dropped_and_data_kept(store_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    _plant_stale_copy(store_copy, "tags")
    _plant_stale_copy(store_copy, "experiments")
    with caplog.at_level(logging.WARNING, logger="layer_sensitivity.tracking.store"):
        prepare_store(f"sqlite:///{store_copy}")
    assert not any(t.startswith("_alembic_tmp_") for t in _tables(store_copy))
    assert "_alembic_tmp_tags" in caplog.text and "_alembic_tmp_experiments" in caplog.text
    client = mlflow.MlflowClient(f"sqlite:///{store_copy}")
    kept = client.get_experiment_by_name("kept")
    assert kept is not None
    (run,) = client.search_runs([kept.experiment_id])
    assert run.data.tags["kept"] == "yes"


def test_tmp_table_without_its_table_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:
        con.execute("create table _alembic_tmp_tags (key text, value text)")
        con.execute("insert into _alembic_tmp_tags values ('only', 'copy')")
    message = _user_error(f"sqlite:///{db}")
    assert "_alembic_tmp_tags" in message and "only copy" in message
    assert _tables(db) == {"_alembic_tmp_tags"}  # nothing dropped, nothing created


def test_tmp_table_with_more_rows_than_its_table_is_refused(store_copy: Path) -> None:
    _plant_stale_copy(store_copy, "tags")
    with sqlite3.connect(store_copy) as con:
        con.execute("delete from tags")  # as if a racing process re-created the table empty
    message = _user_error(f"sqlite:///{store_copy}")
    assert "_alembic_tmp_tags" in message
    assert "_alembic_tmp_tags" in _tables(store_copy)


def test_a_half_created_store_is_created_again(tmp_path: Path) -> None:
    """An interrupted creation (tables and indexes half made, no run) does not break later opens."""
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:
        con.execute("create table experiments (experiment_id integer, name text)")
        con.execute("create index index_params_run_uuid on experiments(experiment_id)")
    prepare_store(f"sqlite:///{db}")
    assert {"runs", "params", "alembic_version"} <= _tables(db)
    assert not list(tmp_path.glob(".mlflow.db.creating-*"))


def test_a_text_file_is_refused_without_a_lock_beside_it(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    assert "not a readable SQLite database" in _user_error(f"sqlite:///{text}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_reading_commands_never_create_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(UserError, match="does not exist"):
        tracking_store.check_existing_store(f"sqlite:///{missing}")
    assert not missing.exists()
    for uri in ("bogus://x", str(tmp_path), f"file://{tmp_path}"):
        with pytest.raises(UserError):
            tracking_store.check_existing_store(uri)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("create table t (x)")
    with pytest.raises(UserError, match="not an MLflow tracking store"):
        tracking_store.check_existing_store(f"sqlite:///{other}")
