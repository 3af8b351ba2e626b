"""Credentials never survive redaction; everything else comes back unchanged."""

from __future__ import annotations

import io
import json
import logging

import pytest
import yaml

from layer_sensitivity.redact import RedactingFilter, redact_text, redact_uri

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(("uri", "expected"), [
    (f"http://user:{SECRET}@host:5000", "http://user:***@host:5000"),
    (f"https://alice:{SECRET}@mlflow.example.com/api?x=1", "https://alice:***@mlflow.example.com/api?x=1"),
    (f"https://{SECRET}@github.com/org/repo", "https://***@github.com/org/repo"),
    (f"postgresql://mlflow:{SECRET}@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
    (f"postgresql+psycopg2://mlflow:{SECRET}@db/mlflow?sslmode=require&sslpassword={SECRET}",
     "postgresql+psycopg2://mlflow:***@db/mlflow?sslmode=require&sslpassword=***"),
    (f"http://host:5000/api?password={SECRET}&run=1", "http://host:5000/api?password=***&run=1"),
    (f"https://bucket.s3/x?X-Amz-Signature={SECRET}&access_token={SECRET}",
     "https://bucket.s3/x?X-Amz-Signature=***&access_token=***"),
    # raw '@' and '/' in a password (base64 passwords have '/'): the whole password is masked
    (f"http://bob:p@ss/{SECRET}@host:5000/x", "http://bob:***@host:5000/x"),
])
def test_redact_uri_masks_passwords_and_tokens(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected
    assert SECRET not in redact_uri(uri)


@pytest.mark.parametrize("uri", [
    "sqlite:////tmp/mlruns/mlflow.db",
    "sqlite:///relative/mlflow.db",
    "sqlite:////home/me/a@b/mlflow.db",  # '@' in a path is not a credential
    "http://127.0.0.1:5000",
    "https://host/users/@me?tab=1",
    "file:///tmp/store",
    "/plain/path:with@odd/chars",
])
def test_uris_without_credentials_are_unchanged(uri: str) -> None:
    assert redact_uri(uri) == uri


def test_text_with_several_uris() -> None:
    text = (f"could not reach http://u:{SECRET}@a:5000 (tried 'https://v:{SECRET}@b/api' and "
            f"\"postgresql://w:{SECRET}@c/db\"), store sqlite:////tmp/x.db")
    out = redact_text(text)
    assert SECRET not in out
    assert out == ("could not reach http://u:***@a:5000 (tried 'https://v:***@b/api' and "
                   "\"postgresql://w:***@c/db\"), store sqlite:////tmp/x.db")


def test_yaml_dump_of_a_config() -> None:
    config = {"tracking": {"uri": f"http://user:{SECRET}@host:5000", "experiment": "exp"},
              "model": {"path": "/models/tiny"}, "runner": {"samples": 8}}
    loaded = yaml.safe_load(redact_text(yaml.safe_dump(config)))
    assert loaded["tracking"]["uri"] == "http://user:***@host:5000"
    assert {k: v for k, v in loaded.items() if k != "tracking"} == {
        k: v for k, v in config.items() if k != "tracking"}
    assert loaded["tracking"]["experiment"] == "exp"


def test_json_dump_stays_valid_json() -> None:
    params = {"tracking.uri": f"https://u:{SECRET}@h", "other": "postgresql://db/x"}
    loaded = json.loads(redact_text(json.dumps(params)))
    assert loaded == {"tracking.uri": "https://u:***@h", "other": "postgresql://db/x"}


def _logger_with_filter(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_logging_record_with_args_is_redacted() -> None:
    logger, stream = _logger_with_filter("test_redact.args")
    logger.info("tracking to %s, experiment %s", f"http://user:{SECRET}@host:5000", "exp")
    assert stream.getvalue() == "INFO tracking to http://user:***@host:5000, experiment exp\n"


def test_logging_traceback_is_redacted() -> None:
    logger, stream = _logger_with_filter("test_redact.exc")
    try:
        raise ConnectionError(f"cannot reach https://user:{SECRET}@host/api")
    except ConnectionError:
        logger.exception("upload failed")
    out = stream.getvalue()
    assert SECRET not in out
    assert "ConnectionError: cannot reach https://user:***@host/api" in out


def test_logging_records_without_secrets_keep_their_args() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d groups in %s", (3, "/tmp/a"), None)
    assert RedactingFilter().filter(record)
    assert (record.msg, record.args) == ("%d groups in %s", (3, "/tmp/a"))


def test_hydra_escaped_uris_are_redacted() -> None:
    """Hydra writes per-job overrides with ':' escaped (tracking.uri=http\\://user\\:pw@host)."""
    escaped = f"tracking.uri=http\\://user\\:{SECRET}@127.0.0.1\\:5000 quant_pair=fp8"
    assert SECRET not in redact_text(escaped)
    assert redact_text(escaped).endswith("@127.0.0.1\\:5000 quant_pair=fp8")
