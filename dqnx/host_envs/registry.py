"""Host environment names: ``LIB:ID``, with ``LIB`` naming the library.

* ``gymnasium:ID`` — a registered Gymnasium id, e.g. ``gymnasium:CartPole-v1``.
* ``minatar:GAME`` — a MinAtar game, e.g. ``minatar:breakout``.
* ``ale:GAME`` — an ale-py ROM id, e.g. ``ale:pong``.
* ``envpool:GAME`` — the same Atari games through EnvPool, e.g. ``envpool:pong``.

Each library is imported only when a name of it is used; a missing package is
a one-line ``ConfigError`` naming the ``pip install`` that provides it.
"""

from __future__ import annotations

import importlib
import inspect

from dqnx.errors import ConfigError, suggest
from dqnx.host_envs.base import HostEnv, HostEnvSpec

# Library prefix -> adapter module (each has check_name, spec and make).
LIBRARIES = {
    "gymnasium": "dqnx.host_envs.gymnasium_env",
    "minatar": "dqnx.host_envs.minatar_env",
    "ale": "dqnx.host_envs.ale_env",
    "envpool": "dqnx.host_envs.envpool_env",
}


def is_host_env_name(name: str) -> bool:
    """True if ``name`` has a known ``LIB:`` prefix (the id itself is not checked)."""
    library, sep, _ = name.partition(":")
    return bool(sep) and library in LIBRARIES


def _adapter(name: str):
    """Returns ``(adapter module, library id)`` for ``name``; raises ConfigError."""
    library, sep, env_id = name.partition(":")
    known = ", ".join(f"{lib}:" for lib in LIBRARIES)
    if not sep:
        raise ConfigError(f"{name!r} is not a host env name (LIB:ID with LIB one of {known})")
    if library not in LIBRARIES:
        from dqnx import env_suites  # plain Python: the compiled suites' prefixes

        compiled = ", ".join(f"{lib}:" for lib in env_suites.LIBRARIES)
        raise ConfigError(
            f"unknown env library {library + ':'!r} in {name!r}"
            f"{suggest(library, [*LIBRARIES, *env_suites.LIBRARIES])}; host libraries: "
            f"{known}; compiled: {compiled} (or a gymnax id without a prefix)"
        )
    if not env_id:
        raise ConfigError(f"{name!r} names no environment (e.g. {library}:...)")
    return importlib.import_module(LIBRARIES[library]), env_id


def check_host_env_name(name: str) -> None:
    """Raises a one-line ``ConfigError`` (with suggestions) if ``name`` is unknown.

    Checks the library prefix, that the library is installed and that it knows
    the id; builds nothing. ``host_env_spec`` also checks the spaces.
    """
    adapter, env_id = _adapter(name)
    adapter.check_name(env_id)


def _check_options(name: str, make, options: dict) -> None:
    params = list(inspect.signature(make).parameters)[3:]  # after (id, num_envs, seed)
    for key in options:
        if key not in params:
            raise ConfigError(
                f"unknown option {key!r} for {name}{suggest(key, params)}; "
                f"options: {', '.join(params)}"
            )


def host_env_spec(name: str, **options) -> HostEnvSpec:
    """The ``HostEnvSpec`` of ``name`` with ``options`` (builds one env and closes it).

    Raises:
      ConfigError: unknown name or option, a missing package, or spaces dqnx
        cannot train on (e.g. continuous actions).
    """
    adapter, env_id = _adapter(name)
    _check_options(name, adapter.make, options)
    return adapter.spec(env_id, **options)


def make_host_env(name: str, num_envs: int, seed: int = 0, **options) -> HostEnv:
    """Builds ``num_envs`` environments of ``name`` behind one ``HostEnv``.

    Args:
      name: ``LIB:ID`` (see the module docstring).
      num_envs: ``N``, at least 1.
      seed: the default seed of ``reset()``; environment ``i`` gets
        ``env_seeds(seed, N)[i]``.
      **options: the library's options (see ``make`` in
        ``dqnx.host_envs.{gymnasium_env, minatar_env, ale_env, envpool_env}``); every library
        accepts ``evaluation`` (``True`` turns off a life-loss signal).

    Returns:
      A ``HostEnv``; call ``reset()`` before ``step``.
    """
    adapter, env_id = _adapter(name)
    _check_options(name, adapter.make, options)
    if num_envs < 1:
        raise ConfigError(f"{name} needs num_envs >= 1, got {num_envs}")
    return adapter.make(env_id, num_envs, seed, **options)
