"""Errors meant for the person at the keyboard: the CLI prints their message on one line, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake or missing piece the user can fix; the message says how."""


class ModelUnavailableError(UserError):
    """A model's files are neither on disk nor downloadable (hub unreachable, offline mode, unknown repo)."""


class ModelPathNotFoundError(UserError, FileNotFoundError):
    """A model given as a local path (folder or checkpoint file) that does not exist."""


def first_line(exc: BaseException) -> str:
    """An exception as one line for a log or a message: its type and its message's first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
