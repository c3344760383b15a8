"""The package's own exception and warning types, one per kind of failure.

Each subclasses the built-in type a caller would catch for it anyway, so code
that handles ``ValueError`` keeps working.
"""

from __future__ import annotations


class ModuleFileError(ValueError):
    """A compiled module's library or metadata sidecar is damaged, edited, or cannot be loaded."""


class CacheWarning(UserWarning):
    """The module cache could not be used as it is: an entry was rebuilt, or the cache moved."""


class TunedRecordWarning(UserWarning):
    """A tuned record computed a wrong result when checked against the reference, and the default
    schedule was used instead."""


class CompilerUnavailable(RuntimeError):
    """Compiling was asked of a runtime-only install (a bundle), which has TVM's runtime but not its compiler."""
