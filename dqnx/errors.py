"""User-facing errors shared by the configuration, the environments and the host loop.

This module imports nothing from dqnx, so any module may raise these.
"""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A user-facing configuration mistake (exit code 2 on the command line)."""


def suggest(name: str, choices) -> str:
    """' (did you mean X?)' for the closest names, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


class MissingDependencyError(ConfigError, ImportError):
    """An output or workdir that was asked for needs a package that is not installed."""
