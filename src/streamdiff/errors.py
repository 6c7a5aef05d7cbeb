"""Errors meant for the person at the keyboard: the CLI prints their message on one line, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake or missing piece the user can fix; the message says how."""


class ModelUnavailableError(UserError):
    """A model's files are neither on disk nor downloadable (hub unreachable, offline mode, unknown repo)."""


class ModelPathNotFoundError(UserError, FileNotFoundError):
    """A model given as a local path (folder or checkpoint file) that does not exist."""
