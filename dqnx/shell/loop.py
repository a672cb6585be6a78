"""The host loop: one loop for every execution mode.

``run(config)`` checks the workdir (a writable directory with room for a
checkpoint) and picks the checkpoint to resume (newest first, damaged ones moved
aside), builds the ``Program`` for the config's mode, then runs chunks: after
each it writes a metric record, shows progress, evaluates and checkpoints when
due, and stops cleanly on SIGTERM/SIGINT (checkpoint first) or on a non-finite
loss. It ends with ``summary.json``. It never looks inside a chunk.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import numpy as np
from etils import epath

from dqnx import checkpoint as ckpt_lib
from dqnx import checks, files, parallel
from dqnx import logging as dlog
from dqnx.config import Config
from dqnx.errors import ConfigError
from dqnx.progress import Progress, print_line
from dqnx.shell.digest import local_params_digest, params_digests
from dqnx.shell.program import ChunkReport, Program
from dqnx.shell.resume import Resumer, check_workdir, truncate_metrics, warn_on_stderr
from dqnx.shell.signals import Diverged, Interrupted, SignalFlag


def default_workdir(name: str) -> str:
    return f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_drift(config: Config, meta: dict) -> None:
    """Raises ConfigError if checkpoint metadata ``meta`` was written with other
    result-changing flags than ``config`` (unless ``--allow_config_change``)."""
    saved = meta.get("config") or {}
    drift = config.drift(saved)
    if drift and not config.allow_config_change:
        changes = ", ".join(f"--{k} ({saved.get(k)!r} -> {getattr(config, k)!r})" for k in drift)
        if drift == ["total_steps"] and config.anneal_lr:
            raise ConfigError(
                f"{config.workdir} holds a run whose learning rate anneals to 0 over its "
                f"--total_steps={saved.get('total_steps')} (--anneal_lr): another --total_steps "
                "would change the rate of every update already taken; extend it from a fresh "
                "--workdir, or pass --allow_config_change to continue on the new schedule"
            )
        raise ConfigError(
            f"{config.workdir} holds a run with other settings: {changes}; rerun with the "
            "original flags, pick a new --workdir, or pass --allow_config_change"
        )


def check_resume(
    config: Config, checkpointer: ckpt_lib.Checkpointer, warn=warn_on_stderr
) -> Resumer:
    """The ``Resumer`` of this run, its checkpoint picked (``resumer.picked``;
    None: a fresh run); ``warn`` prints its one-line notes. Reads only files and
    metadata, so a damaged checkpoint is moved aside, and a changed config is a
    one-line error, before anything compiles.

    Raises:
      ConfigError: the checkpoint was written with other result-changing flags,
        or ``--restore_step`` names no checkpoint.
      checkpoint.CheckpointError: no checkpoint is usable.
    """
    resumer = Resumer(
        checkpointer,
        step=config.restore_step,
        check_meta=lambda meta: check_drift(config, meta),
        warn=warn,
    )
    resumer.pick()
    return resumer


def run(
    config: Config,
    workdir: str | None = None,
    *,
    quiet: bool = False,
    program_factory: Callable[[Config], Program],
    num_runs: int | None = None,
) -> dict:
    """Trains as ``config`` says and writes the command-line contract's files.

    Writes ``config.json``, ``metrics.jsonl`` (one object per chunk),
    checkpoints under ``checkpoints/`` and ``summary.json`` to ``workdir``.
    If ``workdir`` already holds a checkpoint, continues from the newest usable
    one, or from ``config.restore_step`` (bit for bit when the program's
    ``exact_resume`` says so); a damaged one is reported in one line, renamed
    ``<step>.corrupt`` and passed over, and the metric files are cut back to the
    checkpoint restored.

    Args:
      config: the run's configuration (validated here).
      workdir: output directory (default: ``config.workdir`` or a new one): a
        local path or ``gs://BUCKET/PATH`` (``pip install 'dqnx[gcs]'``).
      quiet: no console output.
      program_factory: builds the ``Program`` from the validated config
        (``train.make_program`` picks the config's execution mode).
      num_runs: the runs the program trains (a sweep's; default ``num_seeds``),
        for the checkpoint's size checked before anything compiles.

    Raises:
      ConfigError: bad config; a workdir that is a file, not writable, or on a
        disk without room for a checkpoint; ``gs://`` without gcsfs; resuming with
        result-changing flags changed. All before anything compiles.
      checkpoint.CheckpointError: checkpoints exist but none is usable.
      Interrupted: SIGTERM/SIGINT; a checkpoint was written first.
      Diverged: NaN/inf in a loss or the parameters (nothing saved past the
        last good checkpoint).
      RunFailed: an environment or actor thread raised.

    Returns the summary dict.
    """
    config = checks.validate(config)
    workdir = files.as_path(workdir or config.workdir or default_workdir(config.env_name))
    config = config.replace(workdir=str(workdir))
    t_start = time.perf_counter()
    files.require_filesystem(workdir)
    runs = num_runs or config.num_seeds
    check_workdir(workdir, checks.checkpoint_bytes(config.replace(num_seeds=runs)))
    warn = (lambda _: None) if quiet or not parallel.is_main_process() else warn_on_stderr
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    try:
        resumer = check_resume(config, checkpointer, warn)
        dlog.require_outputs(tensorboard=config.tensorboard, wandb_project=config.wandb_project)
        program = program_factory(config)
    except BaseException:
        checkpointer.close()
        raise
    try:
        loop = _Loop(config, workdir, program, checkpointer, quiet, t_start)
        return loop.run(resumer)
    finally:
        program.close()
        checkpointer.close()


class _Loop:
    """One run's host-side state between chunks."""

    def __init__(self, config, workdir: epath.Path, program: Program, checkpointer, quiet, t_start):
        self.config, self.workdir, self.program = config, workdir, program
        self.checkpointer, self.t_start = checkpointer, t_start
        self.is_main = parallel.is_main_process()
        self.say = (lambda _: None) if (quiet or not self.is_main) else print_line
        self.quiet = quiet
        self.runs = program.num_runs  # seeds, or a sweep's runs
        self.train_s = self.eval_s = 0.0
        self.checkpoint_s: list[float] = []
        self.last_eval = None
        self.last_saved: int | None = None
        self.steps_this_process = 0

    def save(self, env_steps: int) -> None:
        t0 = time.perf_counter()
        meta = {"config": self.config.to_dict(), **self.program.checkpoint_meta()}
        self.checkpointer.save(
            env_steps, self.program.checkpoint_state(), meta, self.program.checkpoint_files()
        )
        self.checkpoint_s.append(time.perf_counter() - t0)
        self.last_saved = env_steps

    def start(self, resumer: Resumer) -> int | None:
        """Restores the picked checkpoint (or an older one, if its arrays turn out
        damaged) or starts fresh; opens the metric writers. Returns the env step
        resumed from (None: a fresh start)."""
        config, workdir = self.config, self.workdir
        resume_step = resumer.picked
        if resume_step is not None:
            state, resume_step = resumer.restore(self.program.checkpoint_template(), resume_step)
            self.program.restore(
                state, resume_step, lambda name: self.checkpointer.read_file(resume_step, name)
            )
            self.last_saved = resume_step
        if self.is_main:
            workdir.mkdir(parents=True, exist_ok=True)
            files.write_json(workdir / "config.json", config.to_dict())
            if resume_step is None:
                dlog.remove_outputs(workdir)
            else:
                truncate_metrics(workdir, resume_step)
        self.writer = dlog.MetricWriters(
            workdir,
            tensorboard=config.tensorboard,
            wandb_project=config.wandb_project,
            config=config.to_dict(),
            resume_step=resume_step,
            is_main_process=self.is_main,
        )
        resumed = "" if resume_step is None else f", resumed at env step {resume_step:,d}"
        runs = f"{config.num_seeds} seed(s)"
        if self.runs != config.num_seeds:
            runs = f"{self.runs} runs ({self.runs // config.num_seeds} configurations x {runs})"
        self.say(
            f"dqnx: {config.env_name}, {runs}, {config.total_steps:,d} env "
            f"steps per seed on {self.program.where} -> {workdir} (compiled in "
            f"{self.program.compile_s:.1f}s{resumed})"
        )
        return resume_step

    def run(self, resumer: Resumer) -> dict:
        resume_step = self.start(resumer)
        program = self.program
        schedule = program.schedule
        with SignalFlag() as signals:
            # Runs end on whole iterations: total_steps rounded up to the last one.
            end = schedule.prefill_steps + schedule.train_iterations * schedule.steps_per_iteration
            self.progress = Progress(
                end,
                initial=resume_step or 0,
                enabled=self.is_main and not self.quiet,
            )
            try:
                env_steps = resume_step
                if resume_step is None:
                    t0 = time.perf_counter()
                    env_steps = program.prefill()
                    self.train_s += time.perf_counter() - t0
                    self.steps_this_process += env_steps
                done = (env_steps - schedule.prefill_steps) // schedule.steps_per_iteration
                remaining = schedule.train_iterations - done
                while remaining > 0:
                    self.stop_if_signalled(signals, env_steps)
                    n = min(schedule.iterations_per_chunk, remaining)
                    remaining -= n
                    env_steps = self.chunk(n, env_steps, last=remaining == 0)
                if self.last_eval is None:  # resumed at the very end: evaluate again
                    self.last_eval = program.evaluate().mean(axis=1)
            finally:
                self.progress.close()
                self.writer.close()
        return self.summarize(env_steps, resume_step)

    def stop_if_signalled(self, signals: SignalFlag, env_steps: int) -> None:
        if parallel.any_process(signals.received is not None):
            signum = signals.received or signal.SIGTERM
            if self.last_saved != env_steps:
                self.save(env_steps)
            self.progress.write(
                f"dqnx: {signal.Signals(signum).name} at env step {env_steps:,d}: checkpoint "
                f"saved in {self.workdir / 'checkpoints'}, exiting"
            )
            raise Interrupted(signum, env_steps)

    def chunk(self, n: int, prev_steps: int, last: bool) -> int:
        """Runs ``n`` iterations, then logs, evaluates and checkpoints as due."""
        config, seeds = self.config, self.runs
        t0 = time.perf_counter()
        report = self.program.run_chunk(n)
        dt = time.perf_counter() - t0
        self.train_s += dt
        env_steps = report.env_steps
        self.steps_this_process += env_steps - prev_steps
        record = self.record(report, (env_steps - prev_steps) * seeds / dt)
        self.check_finite(report, record)
        every = config.eval_every
        if last or (every and prev_steps // every < env_steps // every):
            t_eval = time.perf_counter()
            self.last_eval = self.program.evaluate().mean(axis=1)
            self.eval_s += time.perf_counter() - t_eval
            record["eval_return"] = self.last_eval
        every = config.checkpoint_every
        if last or (every and prev_steps // every < env_steps // every):
            self.save(env_steps)
        record["wall_s"] = time.perf_counter() - self.t_start
        self.writer.write(record)
        sps_avg = self.steps_this_process * seeds / max(self.train_s, 1e-9)
        eta_s = max(self.progress.total_steps - env_steps, 0) * seeds / sps_avg
        if n < self.program.schedule.iterations_per_chunk:
            # A short chunk's time is mostly the fixed cost of a chunk: the console
            # shows the run's average (metrics.jsonl keeps the chunk's own).
            record = dict(record, sps=sps_avg)
        self.progress.update(record, eta_s=eta_s)
        return env_steps

    def record(self, report: ChunkReport, sps: float) -> dict:
        with np.errstate(invalid="ignore", divide="ignore"):
            train_return = np.where(
                report.episodes > 0, report.return_sum / report.episodes, np.nan
            )
        return {
            "env_steps": report.env_steps,
            "sps": sps,
            "train_return": train_return,
            "episodes": report.episodes,
            "loss": report.loss,
            "q_mean": report.q_mean,
            "epsilon": self.program.epsilon(report.env_steps),
            **report.extra,
        }

    def check_finite(self, report: ChunkReport, record: dict) -> None:
        """Raises Diverged (after writing the record) on a non-finite loss or parameter."""
        bad = (report.first_nonfinite >= 0) | ~report.params_finite
        if not bad.any():
            return
        record["wall_s"] = time.perf_counter() - self.t_start
        self.writer.write(record)
        firsts = report.first_nonfinite[bad]
        step = int(firsts[firsts >= 0].min()) if (firsts >= 0).any() else report.env_steps
        last = "none" if self.last_saved is None else f"env step {self.last_saved:,d}"
        raise Diverged(
            f"non-finite loss or parameters at env step {step:,d} in seed(s) "
            f"{np.flatnonzero(bad).tolist()}; stopped, last good checkpoint: {last} "
            f"({self.workdir / 'checkpoints'}); try a lower --learning_rate or --max_grad_norm"
        )

    def summarize(self, env_steps: int, resume_step: int | None) -> dict:
        config, seeds = self.config, self.runs
        params = self.program.online_params()
        summary = {
            "env": config.env_name,
            "num_seeds": config.num_seeds,
            "env_steps_per_seed": env_steps,
            "wall_s": time.perf_counter() - self.t_start,
            "compile_s": self.program.compile_s,
            "train_s": self.train_s,
            "eval_s": self.eval_s,
            "checkpoint_s": float(np.mean(self.checkpoint_s)) if self.checkpoint_s else None,
            "sps": self.steps_this_process * seeds / max(self.train_s, 1e-9),
            "resumed_from": resume_step,
            "exact_resume": self.program.exact_resume,
            **(
                {}
                if self.program.exact_resume
                else {"exact_resume_problem": self.program.exact_resume_problem}
            ),
            "eval_return_per_seed": self.last_eval,
            "eval_return_mean": float(np.mean(self.last_eval)),
            "params_digest": params_digests(params),
            "local_params_digest": local_params_digest(params),
        }
        entries = self.program.run_entries()
        if entries is not None:  # a sweep: one entry per (configuration, seed) run
            summary["num_runs"] = seeds
            summary["runs"] = [
                dict(e, eval_return=float(r), params_digest=d)
                for e, r, d in zip(entries, self.last_eval, summary["params_digest"], strict=True)
            ]
        if self.is_main:
            files.write_json(self.workdir / "summary.json", summary)
        self.say(
            f"done: eval return {summary['eval_return_mean']:.2f} (mean of {seeds} seed(s)), "
            f"{summary['sps'] / 1e3:.1f}k env steps/s, wall {summary['wall_s']:.1f}s, "
            f"compile {self.program.compile_s:.1f}s"
        )
        return summary
