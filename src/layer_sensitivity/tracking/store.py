"""Setting up a SQLite tracking store before any job logs to it, and checking one a reading
command opens.

MLflow 3.17 creates and migrates a SQLite store on first open, in every process that opens it,
without a lock: jobs started together on a new file race in alembic (``table
_alembic_tmp_experiments already exists``), lose runs, and can leave a ``_alembic_tmp_*`` table
behind that breaks every later open. ``prepare_store`` does that set-up once, under a file lock
beside the database, and repairs (or refuses, with a clear message) such a leftover.

Call order for a job (``uris``: which store; ``experiments``: race-free get-or-create)::

    uri = uris.resolve_uri(configured)
    prepare_store(uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = experiments.get_or_create_experiment(name)
    mlflow.start_run(experiment_id=experiment_id, ...)

SQLite suits one machine: the lock and SQLite's own locking need a local file system (not NFS or
other network file systems). Teams and clusters should run ``mlflow server`` (with PostgreSQL
for many writers) and point ``tracking.uri`` at it; such URIs pass through untouched here.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import mlflow
from filelock import FileLock, Timeout
from mlflow.exceptions import MlflowException

from .. import paths
from ..errors import UserError
from ..redact import redact_uri
from .uris import ARTIFACTS_DIR, DEFAULT_STORE, SQLITE_PREFIX, check_server, check_uri, sqlite_path

logger = logging.getLogger(__name__)

_TMP_TABLE_PREFIX = "_alembic_tmp_"
_DEFAULT_EXPERIMENT_ID = 0
_LOCK_TIMEOUT_S = 300.0  # a first migration takes seconds; minutes means a stuck process
_SQLITE_TIMEOUT_S = 30.0


def prepare_store(uri: str) -> None:
    """Make the store at ``uri`` ready for concurrent jobs, or raise a UserError saying why not.

    SQLite files are created and migrated to MLflow's current schema once, under
    ``<db>.lock``; a store that is already current costs one read-only query. Server and
    database URIs are only checked for a known scheme.
    """
    scheme = check_uri(uri)
    if scheme in ("http", "https"):
        check_server(uri)
    if scheme != "sqlite":
        return
    path = sqlite_path(uri)
    if path is None:  # in-memory: private to this process, nothing to share or race on
        return
    _check_sqlite_location(path, uri)
    _check_writable(path, uri)
    head = _head_revision()
    if _is_ready(path, head):
        return
    if path.is_file() and path.stat().st_size > 0:
        _check_is_sqlite(path, uri)  # before the lock: a text file gets no <file>.lock beside it
    _make_parent(path, uri)
    try:
        with FileLock(f"{path}.lock", timeout=_LOCK_TIMEOUT_S):
            if not _is_ready(path, head):  # another process may have finished while we waited
                _create_or_upgrade(path, uri, head)
    except Timeout:
        raise UserError(
            f"Waited {_LOCK_TIMEOUT_S:.0f} s for {path}.lock while preparing the tracking store "
            f"{redact_uri(uri)}. Another process is setting the store up or is stuck holding the lock: "
            "wait for it, or stop it and delete the .lock file."
        ) from None


def check_existing_store(uri: str) -> None:
    """For commands that read runs (report, publish, compare, evaluate): the store must exist
    and be an MLflow store; nothing is created (a typo'd path must not become an empty store)."""
    scheme = check_uri(uri)
    if scheme in ("http", "https"):
        check_server(uri)
    path = sqlite_path(uri) if scheme == "sqlite" else None
    if path is None:
        return
    _check_sqlite_location(path, uri)
    if not path.is_file():
        raise UserError(
            f"The tracking store {redact_uri(uri)} does not exist ({path}). Point --tracking-uri "
            "(or MLFLOW_TRACKING_URI) at the store that holds the run, e.g. "
            f"sqlite:///{paths.project_root() / DEFAULT_STORE}."
        )
    _check_is_sqlite(path, uri)
    with _read_only(path) as db:
        tables = _tables(db)
    if not {"runs", "experiments"} <= tables:
        raise UserError(
            f"tracking.uri={redact_uri(uri)!r}: {path} is an SQLite database but not an MLflow "
            "tracking store (no runs table). Point it at the store that holds the run."
        )


def _head_revision() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision  # alembic scripts, ~30 ms

    return str(_get_latest_schema_revision())


def _check_sqlite_location(path: Path, uri: str) -> None:
    if path.is_dir():
        raise UserError(
            f"tracking.uri={redact_uri(uri)!r} points at the directory {path}, not a database file. "
            f"Name a file inside it, e.g. tracking.uri=sqlite:///{path / 'mlflow.db'}."
        )
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(
            f"tracking.uri={redact_uri(uri)!r} needs the directory {blocker}, but that is a regular "
            f"file. Choose a database path under a directory, e.g. "
            f"tracking.uri=sqlite:///{blocker.parent / 'mlflow.db'}."
        )


def _check_writable(path: Path, uri: str) -> None:
    """SQLite writes a journal beside the database: its directory (or the nearest one that exists,
    where it would be created) must really take a new file, before any run exists."""
    directory = paths.nearest_existing(path.parent)
    why = paths.write_failure(directory)
    if why is not None:
        raise UserError(
            f"The tracking store {redact_uri(uri)} cannot be written: nothing can be created in "
            f"'{directory}' ({why}). Choose a writable location for tracking.uri, e.g. "
            f"tracking.uri=sqlite:///{Path.home() / 'mlflow.db'}."
        )


def _make_parent(path: Path, uri: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"Cannot create the directory {path.parent} for the tracking store {redact_uri(uri)} "
            f"({e.strerror or e}). Choose a writable location for tracking.uri."
        ) from None


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True,
                                 timeout=_SQLITE_TIMEOUT_S)) as db:
        yield db


def _tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("select name from sqlite_master where type='table'")}


def _is_ready(path: Path, head: str) -> bool:
    """True when the store exists, is at ``head`` with every table, no migration leftovers and
    its Default experiment: opening it then changes nothing, so no lock is needed."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with _read_only(path) as db:
            tables = _tables(db)
            if (any(t.startswith(_TMP_TABLE_PREFIX) for t in tables)
                    or not {"alembic_version", "experiments"} <= tables
                    or not _expected_tables() <= tables):
                return False
            versions = [row[0] for row in db.execute("select version_num from alembic_version")]
            has_default = db.execute("select 1 from experiments where experiment_id=?",
                                     (_DEFAULT_EXPERIMENT_ID,)).fetchone()
    except sqlite3.DatabaseError:  # half-written, locked past the timeout or not SQLite
        return False
    return versions == [head] and has_default is not None


def _expected_tables() -> set[str]:
    import mlflow.store.db.utils  # noqa: F401  (imports every ORM model, filling Base.metadata)
    from mlflow.store.db.base_sql_model import Base

    return set(Base.metadata.tables)


def _create_or_upgrade(path: Path, uri: str, head: str) -> None:
    """Under the lock: repair leftovers, let MLflow create/migrate the store, verify the result."""
    interrupted = False
    if path.is_file() and path.stat().st_size > 0:
        _check_is_sqlite(path, uri)
        interrupted = _drop_leftover_tmp_tables(path)
    logger.info("Preparing the MLflow tracking store %s", path)
    if not path.is_file() or path.stat().st_size == 0 or _never_used(path):
        _create_new(path, uri, head)
        return
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        if interrupted:
            # Finish the interrupted migration, as the store's first open would have done. (MLflow
            # migrates an existing store only when tables are missing; an older but complete store
            # still gets its "run mlflow db upgrade" message below.)
            _upgrade(uri)
        # MLflow's own open: creates tables, runs the alembic upgrade to head, adds "Default".
        # The artifact root only matters for "Default" (experiments get their own location).
        SqlAlchemyStore(uri, str(path.parent / ARTIFACTS_DIR))
    except Exception as e:  # MlflowException, SQLAlchemy and alembic errors alike
        raise UserError(
            f"The tracking store {path} could not be created or migrated to MLflow "
            f"{mlflow.__version__}'s schema ({_first_line(e)}). If an earlier MLflow or an "
            "interrupted migration left it half-done, restore a backup or move the file aside and "
            "start a new store; for an older but intact store run `mlflow db upgrade "
            f"sqlite:///{path}` after backing it up."
        ) from None
    if not _is_ready(path, head):
        raise UserError(f"The tracking store {path} is still not at MLflow's schema {head} after "
                        "migrating it. Move the file aside and start a new store.")


def _never_used(path: Path) -> bool:
    """A store whose creation was interrupted (tables half made, no run and no experiment but
    "Default" in it): safe to create again from scratch."""
    try:
        with _read_only(path) as db:
            tables = _tables(db)
            if "runs" in tables and db.execute("select 1 from runs limit 1").fetchone():
                return False
            if "experiments" in tables and db.execute(
                    "select 1 from experiments where experiment_id != ? limit 1",
                    (_DEFAULT_EXPERIMENT_ID,)).fetchone():
                return False
    except sqlite3.DatabaseError:
        return False  # not SQLite, or unreadable: the caller's checks say so
    return True


def _create_new(path: Path, uri: str, head: str) -> None:
    """A new store is built in a temporary file beside ``path`` and renamed into place, so an
    interruption never leaves a half-created store behind (MLflow would then fail every later
    open with e.g. "index index_params_run_uuid already exists")."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        store = SqlAlchemyStore(f"{SQLITE_PREFIX}{tmp}", str(path.parent / ARTIFACTS_DIR))
        store.engine.dispose()
        if not _is_ready(tmp, head):
            raise UserError(f"Creating the tracking store {path} left it short of MLflow's schema "
                            f"{head}. Remove {tmp} and try again.")
        os.replace(tmp, path)
    except UserError:
        raise
    except Exception as e:  # MlflowException, SQLAlchemy and alembic errors alike
        raise UserError(
            f"The tracking store {path} could not be created ({_first_line(e)}). Check that its "
            "directory is writable and has space."
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
        for leftover in (tmp.with_name(tmp.name + "-journal"), tmp.with_name(tmp.name + "-wal"),
                         tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)


def _check_is_sqlite(path: Path, uri: str) -> None:
    try:
        with _read_only(path) as db:
            _tables(db)
    except sqlite3.DatabaseError as e:
        raise UserError(
            f"tracking.uri={redact_uri(uri)!r}: {path} is not a readable SQLite database ({e}). "
            "Point tracking.uri at an MLflow SQLite store or at a new file name."
        ) from None


def _drop_leftover_tmp_tables(path: Path) -> bool:
    """Drop ``_alembic_tmp_<table>`` tables left by an interrupted or raced migration; True if any.

    Alembic's SQLite batch mode copies ``<table>`` into ``_alembic_tmp_<table>``, drops the
    original and renames the copy. A leftover beside a ``<table>`` holding at least as many rows
    is a stale copy: dropping it loses nothing. Otherwise (no ``<table>``, or one a racing process
    re-created empty) the leftover may hold the only copy of the data, so the store is refused.
    """
    with closing(sqlite3.connect(path, timeout=_SQLITE_TIMEOUT_S)) as db:
        tables = _tables(db)
        leftovers = sorted(t for t in tables if t.startswith(_TMP_TABLE_PREFIX))
        unsafe = [t for t in leftovers if t.removeprefix(_TMP_TABLE_PREFIX) not in tables
                  or _row_count(db, t) > _row_count(db, t.removeprefix(_TMP_TABLE_PREFIX))]
        if unsafe:
            raise UserError(
                f"The tracking store {path} is damaged by an interrupted MLflow migration: "
                f"{', '.join(unsafe)} may hold the only copy of data missing from the table it was "
                "meant to replace, so it is not repaired automatically. Back the file up, then "
                f"either move the rows into the real table with sqlite3 {path} or move the file "
                "aside and start a new store."
            )
        for table in leftovers:
            logger.warning("Dropping %s, a stale copy left in %s by an interrupted MLflow migration",
                           table, path)
            db.execute(f'drop table "{table}"')
        db.commit()
    return bool(leftovers)


def _upgrade(uri: str) -> None:
    from mlflow.store.db.utils import _upgrade_db, create_sqlalchemy_engine_with_retry

    engine = create_sqlalchemy_engine_with_retry(uri)
    try:
        _upgrade_db(engine)
    finally:
        engine.dispose()


def _row_count(db: sqlite3.Connection, table: str) -> int:
    return int(db.execute(f'select count(*) from "{table}"').fetchone()[0])


def _first_line(e: BaseException) -> str:
    text = e.message if isinstance(e, MlflowException) else str(e)
    return redact_uri((text or type(e).__name__).strip().splitlines()[0])
