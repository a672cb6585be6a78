"""Command-line flags: one absl flag per ``Config`` field, parsed into a ``Config``.

Flag help comes from the ``Attributes:`` section of ``Config``'s docstring, so
the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import logging
import os
import re
import sys
import typing

from absl import flags

from dqnx.config import Config
from dqnx.errors import ConfigError

_DEFINED: set[str] = set()


def _attribute_docs() -> dict[str, str]:
    doc = Config.__doc__ or ""
    docs, name = {}, None
    for line in doc.split("Attributes:", 1)[-1].splitlines():
        m = re.match(r"\s{6}(\w+): (.*)", line)
        if m:
            name = m.group(1)
            docs[name] = m.group(2).strip()
        elif name and line.strip():
            docs[name] += " " + line.strip()
    return docs


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one flag per Config field (idempotent)."""
    docs = _attribute_docs()
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        if field.name in flag_values:
            continue
        help_text = docs.get(field.name, field.name)
        default = field.default
        hint = hints[field.name]
        if field.name == "sweep":  # repeatable; an item holds commas itself
            flags.DEFINE_multi_string(field.name, [], help_text, flag_values=flag_values)
        elif hint is bool:
            flags.DEFINE_bool(field.name, default, help_text, flag_values=flag_values)
        elif hint is int:
            flags.DEFINE_integer(field.name, default, help_text, flag_values=flag_values)
        elif hint is float:
            flags.DEFINE_float(field.name, default, help_text, flag_values=flag_values)
        elif typing.get_origin(hint) is tuple:
            flags.DEFINE_list(
                field.name, [str(x) for x in default], help_text, flag_values=flag_values
            )
        else:
            flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)
        _DEFINED.add(field.name)


def flag_args(config: Config, *, skip: tuple[str, ...] = ("workdir",)) -> list[str]:
    """The command-line flags that give ``config`` (every field that differs from
    its default, but those in ``skip``): ``config_from_flags`` of them is ``config``."""
    hints = typing.get_type_hints(Config)
    default = Config()
    args = []
    for field in dataclasses.fields(Config):
        name, value = field.name, getattr(config, field.name)
        if name in skip or value == getattr(default, name):
            continue
        if name == "sweep":
            args += [f"--sweep={item}" for item in value]
        elif hints[name] is bool:
            args.append(f"--{name}" if value else f"--no{name}")
        elif typing.get_origin(hints[name]) is tuple:
            args.append(f"--{name}={','.join(str(x) for x in value)}")
        else:
            args.append(f"--{name}={value}")
    return args


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Config:
    values = {}
    for field in dataclasses.fields(Config):
        value = flag_values[field.name].value
        if field.name in ("env_options", "sweep"):
            value = tuple(value or ())
        if field.name == "hidden_sizes":
            try:
                value = tuple(int(v) for v in value)
            except ValueError:
                raise ConfigError(
                    f"--hidden_sizes must be comma-separated integers, got {','.join(value)}"
                ) from None
        values[field.name] = value
    return Config(**values)


def _run_name(argv: list[str]) -> str | None:
    for arg in argv:
        if arg.startswith("--flagfile="):
            return os.path.splitext(os.path.basename(arg.split("=", 1)[1]))[0]
    return None


def main(argv: list[str], all_cpu_cores: bool = False) -> int:
    """Parses flags, validates, trains. Returns the process exit code.
    ``all_cpu_cores``: one XLA CPU device per core (``parallel.use_all_cpu_cores``),
    set once the flags are read, before JAX starts its backends."""
    define_flags()
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
        print(f"usage: {os.path.basename(argv[0])} [--flagfile=FILE] [--FLAG=VALUE ...]")
        print(flags.FLAGS.get_help())
        return 0
    try:
        flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e).removeprefix("ERROR:: ")  # absl's prefix on flagfile errors
        if message.startswith("Unable to open flagfile: "):
            message = "cannot read --flagfile: " + message.split("] ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
        return 2
    try:
        # Each field's own checks first: plain Python, before JAX is imported.
        config = config_from_flags().check_fields()
        from dqnx import parallel

        if all_cpu_cores:
            parallel.use_all_cpu_cores()
        # Joins the other processes before anything asks JAX for its devices.
        parallel.initialize_distributed(
            config.coordinator_address, config.num_processes, config.process_id
        )
        from dqnx import checks

        config = checks.validate(config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from dqnx import shell, train
    from dqnx.checkpoint import CheckpointError

    if not config.workdir:
        config = config.replace(workdir=shell.default_workdir(_run_name(argv) or config.env_name))
    try:
        train.run(config)
    except shell.Interrupted as e:
        return e.exit_code
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (shell.Diverged, shell.RunFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted without a checkpoint", file=sys.stderr)
        return 130
    except Exception as e:
        lost = parallel.peer_lost(e)
        if lost is None:
            raise
        # Exit now: JAX's shutdown barrier would wait for the lost process until its
        # heartbeat times out, then abort with a stack trace.
        print(f"error: {lost}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    return 0


def console_main() -> int:
    """The ``dqnx-train`` command: ``main`` with one XLA CPU device per core.

    A crash in native code prints the Python stack of every thread
    (``faulthandler``). After a run that used Ray (``--actors=ray``) the process
    ends as soon as its files are flushed: the run's outputs are final by then, and
    Ray's native threads can crash the interpreter's own teardown (an intermittent
    SIGSEGV after ``done:``, seen under load), which would turn a finished run's
    exit code into -11."""
    faulthandler.enable()
    code = main(sys.argv, all_cpu_cores=True)
    if "ray" in sys.modules:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
