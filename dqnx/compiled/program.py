"""``CompiledProgram``: the compiled mode as the host loop drives it."""

from __future__ import annotations

import shlex

import jax
import numpy as np

from dqnx import builder, parallel, platforms, sweep
from dqnx.checkpoint import CheckpointError
from dqnx.compiled import hyper
from dqnx.compiled.compile import compile_train
from dqnx.compiled.train_fns import make_train_fns
from dqnx.config import Config
from dqnx.shell.program import ChunkReport, Schedule


class CompiledProgram:
    """Builds and compiles the run ``config`` describes; see ``shell.Program``.

    Resume is exact: the checkpointed ``TrainState`` holds the replay, the
    environments' states, every key and counter (and a sweep's hyperparameters).

    With ``program`` (one program of a sweep; default: the config's sweep, if it
    makes one program) its runs take the place of the seeds: ``num_runs`` of them.
    """

    exact_resume = True
    exact_resume_problem = None

    def __init__(self, config: Config, program: sweep.ProgramPlan | None = None):
        self.config = config
        if program is None and config.sweep:
            (program,) = sweep.plan(config).programs
        self.program = program
        self.num_runs = len(program.runs) if program else config.num_seeds
        layout = builder.choose_layout(config.replace(num_seeds=self.num_runs))
        self.fns = make_train_fns(config, layout=layout, program=program)
        self.programs = compile_train(self.fns)
        self.compile_s = self.programs.compile_s
        self.state = self.programs.initial_state
        self.env_steps = 0
        self.schedule = Schedule(
            prefill_steps=config.prefill_steps,
            steps_per_iteration=config.steps_per_iteration,
            train_iterations=config.train_iterations,
            iterations_per_chunk=config.iterations_per_chunk,
        )
        layout = self.programs.layout
        self.where = f"{layout.seeds}x{layout.data} device(s)"
        if jax.process_count() > 1:
            self.where += f" over {jax.process_count()} processes"

    def checkpoint_template(self):
        return self.state

    def checkpoint_files(self) -> dict[str, bytes]:
        return {}  # the checkpointed state holds everything

    def restore(self, state, env_steps: int, read_file=None) -> None:
        s = self.schedule
        if env_steps < s.prefill_steps or (env_steps - s.prefill_steps) % s.steps_per_iteration:
            raise CheckpointError(
                f"checkpoint step {env_steps} is not an iteration boundary of this config"
            )
        self.state, self.env_steps = state, env_steps

    def prefill(self) -> int:
        self.state, _ = self.programs.prefill(self.state)
        self.env_steps = int(parallel.to_host(self.state.env_steps))
        return self.env_steps

    def run_chunk(self, num_iterations: int) -> ChunkReport:
        self.state, m = self.programs.chunk(self.state, num_iterations)
        m = parallel.to_host(m)
        num_updates = max(int(m.num_updates), 1)
        self.env_steps += num_iterations * self.schedule.steps_per_iteration
        return ChunkReport(
            env_steps=self.env_steps,
            episodes=np.asarray(m.episodes.count),
            return_sum=np.asarray(m.episodes.return_sum),
            loss=np.asarray(m.loss_sum) / num_updates,
            q_mean=np.asarray(m.q_sum) / num_updates,
            first_nonfinite=np.asarray(m.first_nonfinite),
            params_finite=np.asarray(m.params_finite),
            extra=sweep.run_columns(self.program) if self.program else {},
        )

    def evaluate(self) -> np.ndarray:
        return np.asarray(parallel.to_host(self.programs.evaluate(self.state)))

    def checkpoint_state(self):
        return self.state

    def checkpoint_meta(self) -> dict:
        return {"layout": list(self.programs.layout)}

    def online_params(self):
        return self.state.learner.params

    def epsilon(self, env_steps: int) -> float | list[float]:
        traced = self.program.traced if self.program else ()
        if self.config.exploration == "linear" and set(traced) & set(hyper.EPSILON_FIELDS):
            return hyper.host_epsilons(self.program, env_steps)  # one per run
        return self.fns.schedules.mean_epsilon(env_steps)

    def run_entries(self) -> list[dict] | None:
        """A sweep's runs for the summary: index, seed, overrides and the command
        that reproduces the run's bits (None: no sweep).

        Bits depend on the device layout: a run computes the same numbers alone as
        in a sweep when each device advances as many runs side by side
        (``seed_group_size``) on as many devices (XLA:CPU's code for a program on
        two devices is not the code for one). ``command`` trains the run's
        configuration with that layout: ``--num_seeds`` = devices x group, the run's
        seed first, so the run's bits are that command's first seed's."""
        if not self.program:
            return None
        from dqnx import flags

        layout, group = self.programs.layout, self.fns.seed_group
        width = layout.seeds * group
        same = dict(num_seeds=width, num_devices=layout.num_devices, seed_group_size=group)
        # The layout depends on program fields only: the same for every run.
        if builder.choose_layout(self.config.replace(**same)) != layout:  # a data split
            same["num_seeds"] = len(self.program.runs)  # the width changes
        prefix = "" if platforms.tuning_enabled() else "DQNX_XLA_CPU_TUNING=0 "
        entries = []
        for r in self.program.runs:
            alone = self.program.run_config(r).replace(**same)
            args = " ".join(shlex.quote(a) for a in flags.flag_args(alone))
            command = f"{prefix}python experiments/run.py {args}"
            entries.append(dict(run=r.index, seed=r.seed, **r.overrides, command=command))
        return entries

    def close(self) -> None:
        pass
