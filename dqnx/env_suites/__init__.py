"""JAX environment suites beyond gymnax for the compiled mode: ``LIB:ID`` names.

* ``craftax:ID`` — Craftax (Matthews et al., 2024), e.g. ``craftax:Craftax-Classic-Symbolic-v1``.
* ``navix:ID`` — Navix, MiniGrid in JAX, e.g. ``navix:Navix-Empty-5x5-v0``.
* ``jumanji:ID`` — Jumanji's single-agent problems, e.g. ``jumanji:Snake-v1``.
* ``pgx:ID`` — pgx games, e.g. ``pgx:tic_tac_toe`` (two-player games against a
  uniformly random legal opponent).

Each library is an optional extra (``pip install 'dqnx[craftax]'`` etc.),
imported only when one of its names is used; a missing one is a one-line
``ConfigError`` naming the extra. Jumanji and pgx environments have legal-action
masks (``Env.legal``, ``Step.next_legal``): acting and the bootstrap target use
the legal actions only.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING

from dqnx.errors import ConfigError, suggest

if TYPE_CHECKING:  # this module stays free of JAX: names are checked before JAX loads
    from dqnx.envs import Env

# Library prefix -> adapter module (each has check_name(env_id) and make(env_id, **options)).
LIBRARIES = {
    "craftax": "dqnx.env_suites.craftax_env",
    "navix": "dqnx.env_suites.navix_env",
    "jumanji": "dqnx.env_suites.jumanji_env",
    "pgx": "dqnx.env_suites.pgx_env",
}


def is_suite_env_name(name: str) -> bool:
    """True if ``name`` has one of the suites' ``LIB:`` prefixes (the id is not checked)."""
    library, sep, _ = name.partition(":")
    return bool(sep) and library in LIBRARIES


def _adapter(name: str):
    library, sep, env_id = name.partition(":")
    if not sep or library not in LIBRARIES:
        known = ", ".join(f"{lib}:" for lib in LIBRARIES)
        raise ConfigError(f"{name!r} is not a compiled suite env name (LIB:ID, LIB one of {known})")
    if not env_id:
        raise ConfigError(f"{name!r} names no environment (e.g. {library}:...)")
    return importlib.import_module(LIBRARIES[library]), env_id


def _check_options(name: str, make, options: dict) -> None:
    params = list(inspect.signature(make).parameters)[1:]  # after env_id
    for key in options:
        if key not in params:
            raise ConfigError(
                f"unknown option {key!r} for {name}{suggest(key, params)}; "
                f"options: {', '.join(params) or 'none'}"
            )


def check_env_name(name: str, **options) -> None:
    """Raises a one-line ``ConfigError`` if ``name`` is unknown (with suggestions),
    its library is not installed (naming the extra) or an option is unknown."""
    adapter, env_id = _adapter(name)
    _check_options(name, adapter.make, options)
    adapter.check_name(env_id)


def make(name: str, **options) -> Env:
    """The ``envs.Env`` of ``name`` (``LIB:ID``) with the library's ``options``
    (see ``make`` in ``dqnx.env_suites.{craftax,navix,jumanji,pgx}_env``)."""
    adapter, env_id = _adapter(name)
    _check_options(name, adapter.make, options)
    adapter.check_name(env_id)
    return adapter.make(env_id, **options)
