"""Which tracking store a URI names, and whether it can be used: the one default store, schemes
MLflow has stores for, SQLite file paths and the artifact directory beside them, a tracking
server that answers, and bounded HTTP retries against one that is gone."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import mlflow
from mlflow.exceptions import MlflowException

from .. import paths
from ..errors import UserError
from ..redact import redact_uri
from . import credentials

SQLITE_PREFIX = "sqlite:///"
DEFAULT_STORE = "mlflow.db"  # in the project root
ARTIFACTS_DIR = "mlartifacts"  # beside the database, like `mlflow server`'s default
# Schemes MLflow 3.17 ships stores for; plugins may register more (read from MLflow below).
_KNOWN_SCHEMES = {"http", "https", "databricks", "databricks-uc", "uc", "postgresql", "mysql", "mssql",
                  "sqlite"}


def resolve_uri(configured: str | None) -> str:
    """The one store every job uses, whatever directory it runs in.

    Order: the configured URI, ``MLFLOW_TRACKING_URI``, then ``<project root>/mlflow.db``.
    Relative SQLite paths are made absolute against the launch directory.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"{SQLITE_PREFIX}{(paths.project_root() / DEFAULT_STORE).resolve()}"
    if uri.startswith(SQLITE_PREFIX) and not uri.startswith("sqlite:////"):
        return f"{SQLITE_PREFIX}{Path(uri.removeprefix(SQLITE_PREFIX)).resolve()}"
    return _postgresql_driver(credentials.move_credentials(uri))


def _postgresql_driver(uri: str) -> str:
    """``postgresql://`` names no driver: SQLAlchemy 2.1 then picks psycopg 3, which this project
    does not install; the psycopg2 it does install is named explicitly."""
    if not uri.lower().startswith("postgresql://"):
        return uri
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return "postgresql+psycopg2://" + uri[len("postgresql://"):]
    return uri


def scheme_of(uri: str) -> str:
    """The store scheme without a SQLAlchemy driver suffix (``postgresql+psycopg2`` -> postgresql)."""
    return urlsplit(uri).scheme.lower().split("+", 1)[0]


def _registered_schemes() -> set[str]:
    try:  # MLflow's registry knows plugin schemes too; it is private, so fall back to the list
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        return set(_tracking_store_registry._registry) - {"", "file"} | _KNOWN_SCHEMES
    except (ImportError, AttributeError):
        return set(_KNOWN_SCHEMES)


def sqlite_path(uri: str) -> Path | None:
    """The absolute database path of a file-backed SQLite URI; None for other URIs and in-memory.

    Relative paths (``sqlite:///mlflow.db``) are resolved against the current directory, as
    MLflow does.
    """
    if scheme_of(uri) != "sqlite" or not uri.startswith(SQLITE_PREFIX):
        return None
    path = unquote(uri[len(SQLITE_PREFIX):].split("?", 1)[0])
    if path in ("", ":memory:"):
        return None
    return Path(path).absolute()


def artifacts_beside_store(uri: str, experiment_name: str | None = None) -> str | None:
    """``<dir of the database>/mlartifacts[/<experiment>]`` for a SQLite store, None otherwise.

    Pass it as ``artifact_location`` when creating an experiment so artifacts live next to the
    store whatever the working directory (MLflow's own default is ``./mlruns`` of the process
    that creates the experiment). Remote stores keep their server's artifact store (None).
    """
    path = sqlite_path(uri)
    if path is None:
        return None
    root = path.parent / ARTIFACTS_DIR
    return str(root / _safe_dir_name(experiment_name) if experiment_name else root)


def _safe_dir_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") or "experiment"


def check_uri(uri: str) -> str:
    """The scheme of a usable tracking URI; a UserError naming the fix otherwise."""
    shown = redact_uri(uri)
    scheme = scheme_of(uri)
    if scheme in ("", "file") or (len(scheme) == 1 and uri[1:3] in (":\\", ":/")):  # C:\ paths too
        raise UserError(
            f"tracking.uri={shown!r} is a plain path or file: URI, which MLflow reads as a file "
            f"store, and MLflow {mlflow.__version__} refuses file stores. Use a SQLite file instead, "
            f"e.g. tracking.uri=sqlite:///{_suggested_db(uri)} (created on first use), or run "
            "`mlflow server` and set tracking.uri=http://127.0.0.1:5000."
        )
    if scheme not in _registered_schemes():
        raise UserError(
            f"tracking.uri={shown!r} has the unknown scheme '{scheme}'. Use a SQLite file "
            "(sqlite:////abs/path/mlflow.db), a tracking server (http://host:5000 or https://...) "
            "or a database (postgresql://host/db); leave it unset for the project's mlflow.db."
        )
    return scheme


def _suggested_db(uri: str) -> str:
    """An absolute SQLite file for a path the user gave: itself if it names a .db, else inside it."""
    path = Path(unquote(urlsplit(uri).path) if uri.startswith("file:") else uri).absolute()
    return str(path if path.suffix in (".db", ".sqlite", ".sqlite3") else path / "mlflow.db")


# --- HTTP -----------------------------------------------------------------------------------------

# MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) keep a job whose tracking server
# died retrying for minutes per request. A user's own settings win.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def bound_http_retries() -> None:
    """At most about 10 s of retries and 30 s per request against a server that is gone."""
    for var, value in HTTP_LIMITS.items():
        os.environ.setdefault(var, value)


def server_gone(uri: str, e: BaseException) -> bool:
    """Whether ``e`` is MLflow giving up on an HTTP tracking server that does not answer."""
    if scheme_of(uri) not in ("http", "https"):
        return False
    try:
        import requests

        if isinstance(e, requests.exceptions.RequestException):
            return True
    except ImportError:
        pass
    return isinstance(e, MlflowException) and "API request to" in (e.message or "") and any(
        s in e.message for s in ("Max retries exceeded", "Connection", "timed out"))


def check_server(uri: str) -> None:
    """A tracking server that does not answer fails now, not after minutes of MLflow's retries."""
    import base64
    import urllib.request

    parts = urlsplit(uri)
    bare = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl().rstrip("/")
    request = urllib.request.Request(f"{bare}/health")
    auth = credentials.http_basic_auth(uri)
    if auth:  # HTTP basic auth, as MLflow sends it (from the URI or the environment)
        token = f"{auth[0]}:{auth[1]}".encode()
        request.add_header("Authorization", f"Basic {base64.b64encode(token).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - http(s) only
            return
    except Exception as e:  # noqa: BLE001 - any failure to reach it is the same answer
        if getattr(e, "code", None) is not None:  # it answered (e.g. 401/404): it is there
            return
        raise UserError(
            f"The tracking server {redact_uri(uri)} does not answer ({redact_uri(str(e))}). Start "
            "it (scripts/tracking_server.sh) or fix tracking.uri / MLFLOW_TRACKING_URI; with "
            "tracking=none the job runs without MLflow."
        ) from None
