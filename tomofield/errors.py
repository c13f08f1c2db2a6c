"""Exceptions raised by tomofield. Messages name the offending value and what is valid."""

from __future__ import annotations


class TomofieldError(Exception):
    """Base class of every error tomofield raises on purpose."""


class InputError(TomofieldError, ValueError):
    """A file, volume or option the user gave cannot be used as it is."""


class UnknownComponentError(TomofieldError, LookupError):
    """A component name (head, encoder, filter, ...) is not registered."""

    def __init__(self, kind: str, name: str, valid: list[str], hint: str = "") -> None:
        self.kind, self.name, self.valid = kind, name, valid
        msg = f"unknown {kind} {name!r}; valid: {', '.join(valid) if valid else '(none registered)'}"
        super().__init__(msg + (f". {hint}" if hint else ""))

    def __str__(self) -> str:  # LookupError would quote the message like a KeyError
        return str(self.args[0])


class NotLearningWarning(UserWarning):
    """A training run shows signs of not learning, or an engine is built on such a run."""
