"""User-facing errors: one line that says what is wrong and what to do, and a distinct exit code.

The CLI catches ``MhunetError`` and prints ``error: <message>`` with no traceback; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class MhunetError(Exception):
    """Base of every error a user can cause and fix. ``exit_code`` is documented in the README."""

    exit_code = 1


class InputError(MhunetError):
    """The input file or volume is unusable (type, corruption, shape, values, size)."""

    exit_code = 2


class OutputError(MhunetError):
    """An output cannot be written (read-only folder, disk full, would overwrite the input)."""

    exit_code = 3


class BackendError(MhunetError):
    """A backend, plugin library or engine is missing, foreign or stale."""

    exit_code = 4


class ParityError(MhunetError):
    """A backend missed its parity tolerance against the PyTorch reference."""

    exit_code = 5
