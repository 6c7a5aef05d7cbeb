"""Checks shared by the command-line tests (tests/ is on the import path through its conftest)."""

from __future__ import annotations


def one_line_error(capsys) -> str:
    """The command's error output, asserted to be the one line the CLI promises."""
    err = capsys.readouterr().err
    assert err.startswith("streamdiff: error: ") and err.count("\n") == 1, err
    return err
