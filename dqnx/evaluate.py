"""Greedy evaluation of a run's latest checkpoint, and a GIF of one episode.

  python -m dqnx.evaluate --workdir=runs/cartpole-8 [--episodes=100] [--epsilon=0.0] [--step=N]
      [--gif=episode.gif [--gif_seed=0] [--gif_max_steps=500]]

Rebuilds the run from its ``config.json``, loads the newest checkpoint that
reads (a damaged newer one is named in one line on stderr and skipped, never
changed) or the one ``--step`` (alias ``--restore_step``) names, plays
``--episodes`` episodes per seed in parallel on device with ``--epsilon``-greedy
actions from the online parameters, prints the mean return per seed and writes
``evaluation.json`` next to the checkpoints. ``--gif`` also plays one episode
with seed ``--gif_seed``'s parameters (stopping at its end or after
``--gif_max_steps`` steps) and draws it with gymnax's visualizer (for the
environments gymnax can draw; classic control needs pygame). Exit code 2 with
one line on stderr for a missing run, an unusable checkpoint or an environment
that cannot be drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

from dqnx.files import as_path

# Discrete-action gymnax envs that gymnax.visualize.Visualizer draws (gymnax 1.0).
# For any other env it writes a GIF of blank frames, so dqnx refuses instead.
RENDERABLE_ENVS = (
    "Acrobot-v1",
    "CartPole-v1",
    "MountainCar-v0",
    "Catch-bsuite",
    "Asterix-MinAtar",
    "Breakout-MinAtar",
    "Freeway-MinAtar",
    "Seaquest-MinAtar",
    "SpaceInvaders-MinAtar",
    "Pong-misc",
    "MetaMaze-misc",
    "FourRooms-misc",
)
# Drawn through Gymnasium's own renderer, which needs pygame.
_NEEDS_PYGAME = ("Acrobot-v1", "CartPole-v1", "MountainCar-v0")


class _Loaded(NamedTuple):
    config: Any
    fns: Any  # compiled.TrainFns (None for a host-actor run)
    programs: Any  # compiled.Compiled, or the host-actor run's HostActorProgram
    state: Any  # compiled.TrainState, or host_actors.HostLearnerState
    step: int


def _read_config(workdir: Path):
    from dqnx.config import Config
    from dqnx.errors import ConfigError

    try:
        saved = json.loads((workdir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{workdir} is not a dqnx run directory ({e})") from None
    return Config.from_dict(saved)


def _validate(config):
    from dqnx import checks

    return checks.validate(config)


def _load(workdir: Path, config, step) -> _Loaded:
    """Rebuilds ``config``'s programs and restores checkpoint ``step`` (default: the
    newest one that reads; damaged newer ones are named on stderr and skipped).

    Raises:
      CheckpointError: no checkpoint, none usable, or checkpoint ``step`` damaged.
      ConfigError: no checkpoint ``step``.
    """
    from dqnx import builder, checkpoint, compiled
    from dqnx.shell.resume import Resumer

    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    try:
        resumer = Resumer(ckpt, step=-1 if step is None else step, move_aside=False)
        step = resumer.pick()
        if step is None:
            raise checkpoint.CheckpointError(f"no checkpoint in {workdir / 'checkpoints'}")
        if builder.uses_host_actors(config):  # host environments: the host program plays
            from dqnx.host_actors import HostActorProgram

            program = HostActorProgram(config)
            state, step = resumer.restore(program.checkpoint_template(), step)
            program.state, program.env_steps = state, int(step)
            return _Loaded(config, None, program, state, int(step))
        fns = compiled.make_train_fns(config, layout=builder.choose_layout(config))
        programs = compiled.compile_train(fns, training=False)
        state, step = resumer.restore(programs.initial_state, step)
    finally:
        ckpt.close()
    return _Loaded(config, fns, programs, state, int(step))


def _evaluate_loaded(run: _Loaded, workdir: Path) -> dict:
    import numpy as np

    from dqnx import parallel

    if run.fns is None:  # a host-actor run: [1, episodes] played on host environments
        returns = run.programs.evaluate()
    else:
        returns = np.asarray(parallel.to_host(run.programs.evaluate(run.state)))
    result = {
        "env_steps": run.step,
        "episodes": run.config.eval_episodes,
        "epsilon": run.config.eval_epsilon,
        "return_per_seed": returns.mean(axis=1).tolist(),
        "return_mean": float(returns.mean()),
    }
    if parallel.is_main_process():
        from dqnx.files import write_json

        write_json(workdir / "evaluation.json", result)
    return result


def evaluate(workdir: str | Path, episodes: int = 100, epsilon: float = 0.0, step=None) -> dict:
    """Returns ``{"env_steps", "episodes", "epsilon", "return_per_seed", "return_mean"}``."""
    workdir = as_path(workdir)
    config = _read_config(workdir).replace(eval_episodes=episodes, eval_epsilon=epsilon)
    return _evaluate_loaded(_load(workdir, _validate(config), step), workdir)


def check_renderable(env_name: str) -> None:
    """Raises ConfigError (one line) unless ``--gif`` can draw ``env_name`` here."""
    import importlib.util

    from dqnx.errors import ConfigError

    if env_name not in RENDERABLE_ENVS:
        raise ConfigError(
            f"--gif: gymnax cannot draw {env_name}; it draws {', '.join(RENDERABLE_ENVS)}"
        )
    if env_name in _NEEDS_PYGAME and importlib.util.find_spec("pygame") is None:
        raise ConfigError(
            f"--gif: drawing {env_name} needs pygame (pip install pygame, or dqnx[render])"
        )


def play_episode(fns, params, key, epsilon: float = 0.0, max_steps: int = 500):
    """One ``epsilon``-greedy episode of ``fns.env`` with one seed's ``params``.

    Runs a jitted ``lax.scan`` of ``max_steps`` steps and cuts it on the host at
    the first episode end. Returns ``(states, rewards, ended)``: the raw gymnax
    states ``[T + 1]`` from the reset one to the one the last action reached
    (before gymnax's auto-reset), as one pytree with a leading time axis; the
    rewards ``[T]``; whether the episode ended (terminated or hit the env's
    time limit) within ``max_steps``, else ``T == max_steps``.
    """
    from dqnx.envs import import_gymnax

    gymnax = import_gymnax()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dqnx.actor import make_policy_step

    raw_env, raw_params = gymnax.make(fns.config.env_name)
    env = fns.env
    policy_step = make_policy_step(env, fns.network)
    one = lambda x: x[None]  # noqa: E731  (a batch of one environment)

    def select(pred, on_true, on_false):
        return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)

    @jax.jit
    def play(params, key):
        key, k_reset = jax.random.split(key)
        obs, state = env.reset(k_reset)

        def body(carry, _):
            obs, state, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            new_state, step, action = policy_step(
                params, one(obs), jax.tree.map(one, state), epsilon, k_act, one(k_env)
            )
            new_state, step, action = jax.tree.map(lambda x: x[0], (new_state, step, action))
            # On an episode end the adapter's state is already the next episode's
            # reset one: take the state the action reached from gymnax's step_env,
            # with the key half gymnax's step() gives it.
            _, reached, *_ = raw_env.step_env(
                jax.random.split(k_env)[0], state.inner, action, raw_params
            )
            shown = select(step.done, reached, new_state.inner)
            return (step.obs, new_state, key), (shown, step.reward, step.done)

        _, (states, rewards, dones) = jax.lax.scan(body, (obs, state, key), None, max_steps)
        states = jax.tree.map(lambda s0, s: jnp.concatenate([s0[None], s]), state.inner, states)
        return states, rewards, dones

    states, rewards, dones = jax.device_get(play(params, key))
    ends = np.flatnonzero(dones)
    length = int(ends[0]) + 1 if ends.size else max_steps
    states = jax.tree.map(lambda x: x[: length + 1], states)
    return states, np.asarray(rewards[:length]), bool(ends.size)


def _render_loaded(run: _Loaded, path, seed: int, epsilon: float, max_steps: int) -> dict:
    from dqnx.envs import import_gymnax

    gymnax = import_gymnax()
    import jax
    import numpy as np

    from dqnx import parallel

    config = run.config
    check_renderable(config.env_name)
    params = jax.tree.map(lambda x: np.asarray(x[seed]), parallel.to_host(run.state.learner.params))
    key = jax.random.fold_in(jax.random.key(config.seed + seed), 2)
    states, rewards, ended = play_episode(run.fns, params, key, epsilon, max_steps)
    length = len(rewards)
    frames = [jax.tree.map(lambda x, t=t: x[t], states) for t in range(length + 1)]
    cum_rewards = np.concatenate([[0.0], np.cumsum(rewards)])  # the return shown on each frame

    import os

    # Gymnasium draws classic control off screen with pygame: no display, no sound
    # (else SDL prints audio and XDG_RUNTIME_DIR errors for every frame).
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    from gymnax.visualize import Visualizer

    raw_env, raw_params = gymnax.make(config.env_name)
    path = Path(path)
    if parallel.is_main_process():  # every process played the same episode
        path.parent.mkdir(parents=True, exist_ok=True)
        Visualizer(raw_env, raw_params, frames, cum_rewards).animate(str(path))
    return {
        "path": str(path),
        "env_steps": run.step,
        "seed": seed,
        "episode_length": length,
        "return": float(cum_rewards[-1]),
        "frames": length + 1,
        "ended": ended,
    }


def _check_gif_args(config, seed: int, max_steps: int) -> None:
    from dqnx.errors import ConfigError

    check_renderable(config.env_name)
    if not 0 <= seed < config.num_seeds:
        raise ConfigError(f"--gif_seed={seed} must be in [0, {config.num_seeds}) for this run")
    if max_steps < 1:
        raise ConfigError(f"--gif_max_steps={max_steps} must be >= 1")


def render_gif(
    workdir: str | Path,
    path: str | Path,
    *,
    seed: int = 0,
    epsilon: float = 0.0,
    step=None,
    max_steps: int = 500,
) -> dict:
    """Draws one ``epsilon``-greedy episode of seed ``seed`` of checkpoint ``step``
    (default: newest) to the GIF ``path``, one frame per state from the reset one
    to the last, titled with the step and the return so far.

    Returns ``{"path", "env_steps", "seed", "episode_length", "return", "frames", "ended"}``.
    """
    workdir = as_path(workdir)
    config = _validate(_read_config(workdir).replace(eval_episodes=1))
    _check_gif_args(config, seed, max_steps)
    return _render_loaded(_load(workdir, config, step), path, seed, epsilon, max_steps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--epsilon", type=float, default=0.0)
    p.add_argument(
        "--step",
        "--restore_step",
        dest="step",
        type=int,
        default=None,
        help="checkpoint step (default: the newest that reads)",
    )
    p.add_argument("--gif", default=None, metavar="PATH", help="also draw one episode to PATH")
    p.add_argument("--gif_seed", type=int, default=0, help="whose parameters play it")
    p.add_argument("--gif_max_steps", type=int, default=500, help="cut the episode here")
    args = p.parse_args(argv)
    from dqnx.checkpoint import CheckpointError
    from dqnx.errors import ConfigError

    workdir = as_path(args.workdir)
    try:
        config = _validate(
            _read_config(workdir).replace(eval_episodes=args.episodes, eval_epsilon=args.epsilon)
        )
        if args.gif is not None:
            _check_gif_args(config, args.gif_seed, args.gif_max_steps)
        run = _load(workdir, config, args.step)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = _evaluate_loaded(run, workdir)
    per_seed = ", ".join(f"{x:.2f}" for x in r["return_per_seed"])
    print(
        f"{args.workdir} @ env step {r['env_steps']:,d}: return {r['return_mean']:.2f} "
        f"(per seed: {per_seed}; {r['episodes']} episodes each, epsilon {r['epsilon']})"
    )
    if args.gif is not None:
        g = _render_loaded(run, args.gif, args.gif_seed, args.epsilon, args.gif_max_steps)
        cut = "" if g["ended"] else f", cut at --gif_max_steps={args.gif_max_steps}"
        print(
            f"wrote {g['path']}: seed {g['seed']}, {g['episode_length']} steps{cut}, "
            f"return {g['return']:.2f} ({g['frames']} frames)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
