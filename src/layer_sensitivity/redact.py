"""Credentials out of everything the project writes: URIs, free text and log records.

A tracking URI such as ``http://user:secret@host:5000`` or
``postgresql://mlflow:secret@db/mlflow?sslpassword=x`` must never reach a param, tag, config
artifact, provenance file, log or error message. ``redact_uri`` masks one URI, ``redact_text``
every URI-looking substring of a text (exception messages, YAML or JSON dumps), and
``RedactingFilter`` does the same for log records on any handler it is attached to.

Pure standard library: usable from core modules, the CLI and logging configuration alike.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# scheme://authority: the authority runs up to the first '/', '?', '#', whitespace or quote.
# Everything before its LAST '@' is the userinfo (passwords with a raw '@' happen in practice).
# Hydra escapes ':' as '\:' in the override strings it writes (http\://user\:pw@host): matched too.
_URI = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*\\?://)(?P<rest>[^\s\"'<>`]*)")
_AUTHORITY_END = re.compile(r"[/?#]")
# A query/fragment parameter whose name ends like a credential (password, sslpassword,
# access_token, X-Amz-Signature, api_key, client_secret, sig, ...): its value is masked.
_SECRET_PARAM = re.compile(
    r"(?P<lead>[?&;#])(?P<name>[A-Za-z0-9_.\-]*?(?:password|passwd|pwd|pass|token|secret|key|sig"
    r"|signature|credential|credentials|auth|authorization))=(?P<value>[^&;#\s\"'<>`]*)",
    re.IGNORECASE,
)


def _mask_userinfo(userinfo: str) -> str:
    """``user:password`` -> ``user:***``; a lone user part (often a token) -> ``***``."""
    if ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        return f"{user}:{MASK}" if user else MASK
    return MASK if userinfo else userinfo


def _authority_end(rest: str) -> int:
    """Where the authority (``user:password@host:port``) of ``rest`` ends.

    Normally at the first '/', '?' or '#'. Passwords written with raw '/', '@', '?' or '#'
    (base64 passwords have '/') would end it early and leak their tail, so when the text before
    that point starts a userinfo, the authority runs to the last '@' before the query (or, for
    ``user:pa?ss@host``, the token's last '@'). When in doubt, too much is masked, never too little.
    """
    end = _AUTHORITY_END.search(rest)
    stop = end.start() if end else len(rest)
    head = rest[:stop]
    if "@" in head:
        query = re.search(r"[?#]", rest)
        at = rest.rfind("@", 0, query.start() if query else len(rest))
    elif ":" in head and not head.rsplit(":", 1)[1].isdigit() and not head.endswith("]"):
        at = rest.rfind("@")  # user:pass with a raw '/', '?' or '#' before the host
    else:
        return stop
    if at < 0:
        return stop
    after_host = _AUTHORITY_END.search(rest, at)
    return after_host.start() if after_host else len(rest)


def _redact_rest(rest: str) -> str:
    """Everything after ``scheme://``: the userinfo of the authority and secret parameters."""
    end = _authority_end(rest)
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        authority = f"{_mask_userinfo(userinfo)}@{host}"
    tail = _SECRET_PARAM.sub(lambda m: f"{m['lead']}{m['name']}={MASK}" if m["value"] else m[0], tail)
    return authority + tail


def redact_uri(uri: str) -> str:
    """The URI with any password (or bare token user) and credential-like parameters masked.

    URIs without credentials (SQLite and file paths included) come back unchanged.
    """
    return redact_text(uri)


def redact_text(text: str) -> str:
    """Every URI-looking substring of ``text`` redacted (see ``redact_uri``); the rest unchanged."""
    if "://" not in text:  # the common case: nothing to do, no regex pass
        return text
    return _URI.sub(lambda m: m["scheme"] + _redact_rest(m["rest"]), text)


class RedactingFilter(logging.Filter):
    """Redacts a record's final message, its traceback and stack text before any handler writes it.

    Attach it to handlers (a logger's own filters do not see records propagated from child
    loggers), e.g. in a ``logging.config.dictConfig`` / Hydra ``job_logging`` block::

        filters: {redact: {(): layer_sensitivity.redact.RedactingFilter}}
        handlers: {console: {..., filters: [redact]}}
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            # The formatted message replaces msg % args, so the args cannot bring the secret back.
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # Formatter.format reuses exc_text when it is set: format the traceback once, redacted.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True
