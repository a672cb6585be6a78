"""Training as the command line does it: the execution mode a config calls for,
and sweeps of several programs.

``run(config)`` is what ``experiments/run.py`` and ``dqnx.run`` call: it checks
the config (``checks.validate``), picks the mode (``make_program``: host actors
for a host environment ``LIB:ID``, else the compiled mode) and hands the
``Program`` to the host loop (``shell.run``), which knows only the ``Program``
interface. A sweep whose configurations need several compiled programs runs them
one after another (``run_sweep``).
"""

from __future__ import annotations

import time

import numpy as np
from etils import epath

from dqnx import builder, checks, files, parallel, shell, sweep
from dqnx.config import Config
from dqnx.progress import print_line
from dqnx.shell.resume import check_workdir


def make_program(config: Config, program: sweep.ProgramPlan | None = None) -> shell.Program:
    """The ``Program`` of the config's execution mode: host actors for a host
    environment (``LIB:ID``), else the compiled mode (``program``: the runs of a
    sweep it trains)."""
    if builder.uses_host_actors(config):
        from dqnx.host_actors import HostActorProgram

        return HostActorProgram(config)
    from dqnx.compiled import CompiledProgram

    return CompiledProgram(config, program)


def run(config: Config, workdir: str | None = None, *, quiet: bool = False) -> dict:
    """Trains as ``config`` says and writes the command-line contract's files to
    ``workdir`` (default: ``config.workdir`` or a new one); resumes from its
    checkpoints. See ``shell.run`` for the files, the resume and what it raises
    (``ConfigError`` for a bad config, before anything compiles).

    Returns the summary dict (``summary.json``)."""
    if not config.sweep:
        return shell.run(config, workdir, quiet=quiet, program_factory=make_program)
    plan = sweep.plan(config.check_fields())  # the sweep's own errors first, as checks'
    if len(plan.programs) > 1:
        config = checks.validate(config)  # every program, before the first compiles
        workdir = workdir or config.workdir or shell.default_workdir(config.env_name)
        return run_sweep(config, plan, files.as_path(workdir), quiet=quiet)
    (program,) = plan.programs  # the plan made here, not made again by the program
    return shell.run(config, workdir, quiet=quiet,
                     program_factory=lambda c: make_program(c, program),
                     num_runs=len(program.runs))  # fmt: skip


def run_sweep(config: Config, plan: sweep.Plan, workdir: epath.Path, *, quiet=False) -> dict:
    """A sweep of several programs (one per distinct shape), one after another, each
    a run of its own in ``workdir/program-<i>`` (metrics, checkpoints, summary; a
    rerun resumes each); ``workdir/summary.json`` gathers every run in sweep order."""
    t_start = time.perf_counter()
    sizes = [
        checks.checkpoint_bytes(p.config.replace(num_seeds=len(p.runs))) for p in plan.programs
    ]
    check_workdir(workdir, max(sizes))
    say = (lambda _: None) if quiet or not parallel.is_main_process() else print_line
    parts = []
    for i, program in enumerate(plan.programs):
        sub = workdir / f"program-{i}"
        say(f"dqnx: sweep program {i + 1} of {len(plan.programs)} -> {sub}")
        parts.append(shell.run(program.config.replace(workdir=str(sub)), sub, quiet=quiet,
                               program_factory=lambda c, p=program: make_program(c, p),
                               num_runs=len(program.runs)))  # fmt: skip
    runs = sorted((r for part in parts for r in part["runs"]), key=lambda r: r["run"])
    train_s = sum(part["train_s"] for part in parts)
    steps = sum(part["sps"] * part["train_s"] for part in parts)
    summary = {
        "env": config.env_name,
        "num_seeds": config.num_seeds,
        "num_runs": len(runs),
        "num_programs": len(parts),
        "env_steps_per_seed": min(part["env_steps_per_seed"] for part in parts),
        "wall_s": time.perf_counter() - t_start,
        "compile_s": sum(part["compile_s"] for part in parts),
        "train_s": train_s,
        "sps": steps / max(train_s, 1e-9),
        "eval_return_per_seed": [r["eval_return"] for r in runs],
        "eval_return_mean": float(np.mean([r["eval_return"] for r in runs])),
        "params_digest": [r["params_digest"] for r in runs],
        "runs": runs,
    }
    if parallel.is_main_process():
        files.write_json(workdir / "config.json", config.to_dict())
        files.write_json(workdir / "summary.json", summary)
    return summary
