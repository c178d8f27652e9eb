"""Typed exceptions raised at provmark's public boundaries (the CLI turns them into one-line errors)."""

from __future__ import annotations

__all__ = ["ProvmarkError", "ParameterError", "UnknownSchemeError", "KeyFileError", "InvalidTextError", "ModelLoadError",
           "OutputError"]


class ProvmarkError(Exception):
    """Base class of every error that provmark reports to a user."""


class ParameterError(ProvmarkError, ValueError):
    """A watermark or command parameter is out of range; the message names it and the fix."""


class UnknownSchemeError(ProvmarkError, ValueError):
    """A scheme name that provmark does not implement."""


class KeyFileError(ProvmarkError):
    """A key file that is missing, unreadable or malformed."""


class InvalidTextError(ProvmarkError, ValueError):
    """Text that cannot be watermarked or scored: empty, not UTF-8, or too short."""


class ModelLoadError(ProvmarkError):
    """A model or tokenizer that cannot be loaded offline."""


class OutputError(ProvmarkError):
    """A folder or file that provmark was asked to write and cannot: the message names it and why."""
