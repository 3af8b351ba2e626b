"""Credentials out of tracking URIs before anything else sees them.

Redacting every place a URI lands (params, tags, Hydra's ``.hydra/`` files and job list, sweep
files, MLflow's own log lines and "View run" URLs) is a race against every library that prints
one. Instead a password given in a URI is moved, at process start, into the environment variables
the client library reads anyway, and the URI goes on without it:

- ``http(s)://user:pw@host`` -> ``http(s)://host`` with ``MLFLOW_TRACKING_USERNAME`` /
  ``MLFLOW_TRACKING_PASSWORD`` (MLflow sends them as HTTP basic auth, as it did from the URI);
- ``postgresql[+psycopg2|+psycopg]://user:pw@host/db`` -> ``postgresql...://user@host/db`` with
  ``PGPASSWORD`` (libpq reads it when the URI has no password).

Worker processes (local_parallel, submitit) inherit the environment. Other schemes keep their
credentials (redaction still masks them wherever the project writes). Standard library only.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit

USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
PG_PASSWORD_ENV = "PGPASSWORD"
_LIBPQ_DRIVERS = ("", "psycopg2", "psycopg")  # drivers built on libpq, which reads PGPASSWORD
_URI = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`,]*")


def _split_authority(uri: str) -> tuple[str, str, str, str] | None:
    """(scheme://, userinfo, host and the rest) when the URI carries userinfo, else None."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return None
    query = re.search(r"[?#]", rest)
    at = rest.rfind("@", 0, query.start() if query else len(rest))  # passwords may hold '@', '/'
    if at < 0:
        return None
    return scheme, rest[:at], rest[at + 1:], sep


def move_credentials(uri: str) -> str:
    """``uri`` without its password, which goes to the environment variable its client reads.

    URIs without a password, and schemes whose clients read no such variable, come back as given.
    """
    parts = _split_authority(uri)
    if parts is None:
        return uri
    scheme, userinfo, host, sep = parts
    user, has_password, password = userinfo.partition(":")
    if not has_password:
        return uri
    base, _, driver = scheme.lower().partition("+")
    if base in ("http", "https"):
        os.environ[USERNAME_ENV] = unquote(user)
        os.environ[PASSWORD_ENV] = unquote(password)
        return f"{scheme}{sep}{host}"
    if base == "postgresql" and driver in _LIBPQ_DRIVERS:
        os.environ[PG_PASSWORD_ENV] = unquote(password)
        return f"{scheme}{sep}{user + '@' if user else ''}{host}"
    return uri


def move_credentials_in_text(text: str) -> str:
    """Every URI in ``text`` (e.g. ``tracking.uri=http://u:p@h``) with its password moved out."""
    if "://" not in text:
        return text
    return _URI.sub(lambda m: move_credentials(m[0]), text)


def scrub_process(argv: list[str]) -> list[str]:
    """Passwords out of the command line and ``MLFLOW_TRACKING_URI``, into the environment.

    Call first thing in an entry point, before Hydra or MLflow read either.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = move_credentials(uri)
    return [move_credentials_in_text(a) for a in argv]


def http_basic_auth(uri: str) -> tuple[str, str] | None:
    """The (user, password) MLflow sends to a server at ``uri``: from the URI, else the env."""
    parts = urlsplit(uri)
    if parts.username is not None:
        return unquote(parts.username), unquote(parts.password or "")
    user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    return (user, password) if user and password else None
