"""Errors the CLI reports as one paragraph: which write failures count as "no room", and how."""

from __future__ import annotations

import errno

import pytest

from layer_sensitivity.errors import OutOfSpace, ReportedError, UserError, out_of_space


@pytest.mark.parametrize("code,reason", [
    (errno.ENOSPC, "no space left on the device"), (errno.EDQUOT, "the disk quota is exceeded"),
    (errno.EROFS, "the file system is read-only"), (errno.EACCES, "permission denied"),
    (errno.EPERM, "not permitted"),
])
def test_a_full_or_closed_location_becomes_one_paragraph_naming_it(code: int, reason: str) -> None:
    e = out_of_space(OSError(code, "os text", "/data/out/manifest.json"), "the manifest")
    assert isinstance(e, OutOfSpace) and isinstance(e, ReportedError)
    text = str(e)
    assert text.startswith(f"Writing the manifest failed: {reason} (/data/out/manifest.json).")
    assert "choose another location" in text and "\n" not in text


def test_other_os_errors_are_not_disguised_as_space_problems() -> None:
    assert out_of_space(OSError(errno.ENOENT, "missing", "/x"), "x") is None
    assert out_of_space(OSError("no errno at all"), "x") is None


def test_without_a_file_name_the_message_says_the_output_location() -> None:
    e = out_of_space(OSError(errno.ENOSPC, "full"), "the report")
    assert e is not None and "(the output location)" in str(e)


def test_user_errors_are_reported_errors() -> None:
    # the CLI catches UserError first (exit 2) and other ReportedErrors after it (exit 1)
    assert issubclass(UserError, ReportedError) and not issubclass(OutOfSpace, UserError)
