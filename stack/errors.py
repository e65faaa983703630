"""The runner's one root exception."""

from __future__ import annotations


class StackError(RuntimeError):
    """Something the operator has to act on; the message says what and where."""
