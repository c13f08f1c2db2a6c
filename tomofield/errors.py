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


class ComponentError(InputError):
    """A component (head, filter, reconstructor, sampler, post-processor: often a plugin's) broke its contract.

    Raised where the engine calls the component, when it raises, or returns the wrong type, the
    wrong shape or non-finite values from finite input. The message names the component (kind,
    name and the plugin it comes from) and what it broke; the input is not at fault. An
    :class:`InputError`, so that every front end reports it as one message.
    """

    @staticmethod
    def got(value: object) -> str:
        """What a component returned, in words: ``a tensor of shape (4,)``, ``a list``."""
        shape = getattr(value, "shape", None)
        if shape is not None and hasattr(value, "dtype"):
            return f"a tensor of shape {tuple(shape)}"
        name = type(value).__name__
        return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


class UncalibratedWarning(UserWarning):
    """A component that thresholds slice scores fell back to its constants: the run records no operating point."""


class EmptyMaskWarning(UserWarning):
    """A heatmap that rises above the mask's lower threshold gave an empty mask: the thresholds may not fit it."""


class PluginWarning(UserWarning):
    """A plugin, or a part of one, was left out: it failed, or took a name another one has.

    One line naming the plugin and its distribution; the host, the built-ins and the other
    plugins carry on. The command line prints it as one line (``Warning: ...``).
    """
