"""The actor core: one batch of host environments, a policy, n-step returns and
fixed-size batches, with no thread, queue or transport of its own.

An ``ActorCore`` is driven one rollout at a time: ``next_version()`` names the
parameter version its next rollout must act with, ``rollout(params)`` steps its
``HostEnv`` ``rollout_steps`` times with those parameters and returns the
batches it completed. Threads (``actor.ActorThread``) and actor processes run the
same core, so they produce the same batches.

Everything the core does is a function of (seed, actor index, batch index):
batch ``b`` is the ``b``-th batch it sends; a rollout started while batch ``b``
is being filled acts with version ``version_for(b)`` and epsilon ``epsilon(b)``,
draws its exploration from the core's own generator and its noise from
``fold_in(key, rollouts acted)``. Where the environment's state can be captured,
``snapshot()`` and ``restore()`` move the whole core (environments, n-step
window, partial batch, generators) into a checkpoint and back.

Steps a library discarded at a reset (``valid`` False) end every window and
never start a transition. Transitions are cut into batches of exactly
``envs x rollout_steps`` items; in frame mode each rollout is one block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from dqnx import nstep as nstep_lib
from dqnx.host_actors.evaluation import greedy_actions
from dqnx.types import Transition

#: ``version_for(b)`` of a batch acted uniformly at random (nothing published yet).
RANDOM = -1


def flat_params(network, example_obs) -> tuple[Callable, Callable]:
    """``(flatten, unravel)`` of ``network``'s parameters: ``flatten`` (jitted)
    makes one flat vector (a new buffer), ``unravel`` turns it back (inside jit)."""
    shapes = jax.eval_shape(network.init, jax.random.key(0), example_obs)
    _, unravel = ravel_pytree(jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes))
    return jax.jit(lambda params: ravel_pytree(params)[0]), unravel


def kept_version(kept, version: int) -> int:
    """The version of ``kept`` (non-empty) that stands for ``version``: itself, else
    the newest older one, else the oldest (a run resumed from a checkpoint that
    lacks it)."""
    if version in kept:
        return version
    older = [v for v in kept if v <= version]
    return max(older) if older else min(kept)


class ActorBatch(NamedTuple):
    """What an actor sends the learner (host numpy arrays).

    Attributes:
      items: ``Transition`` or ``nstep.NStepTransition`` with leaves ``[B, ...]``,
        or a ``frame_replay.FrameStep`` block ``[rollout_steps, N]``.
      version: the parameter version the newest of these steps acted with
        (``RANDOM``: uniformly random acting).
      episodes: episodes that ended while these items were made.
      return_sum: the sum of their (unclipped) returns.
      length_sum: the sum of their lengths.
      actor: index of the actor that sent it.
      index: the batch's index in this actor's stream (0, 1, ...).
    """

    items: Any
    version: int
    episodes: int
    return_sum: float
    length_sum: int
    actor: int
    index: int


def _concat(parts):
    return jax.tree.map(lambda *x: np.concatenate(x), *parts)


class ActorCore:
    """One actor's environments, policy and batching (see the module docstring).

    Args:
      index: this actor's index (its seed stream and Ape-X epsilon slice).
      env: its ``HostEnv`` (reset here, with the seed it was made with).
      network: the Q-network.
      device: the device its policy runs on.
      epsilon: ``(batch index) -> epsilon``: a float or one value per environment.
      version_for: ``(batch index) -> version`` the rollouts filling that batch act
        with (``RANDOM``: uniformly random); None: whatever ``rollout`` is given.
      rollout_steps: steps per rollout, n-step push and (per environment) batch.
      n_step, gamma: n-step returns.
      seed: seeds the exploration draws and the noise.
      clip_rewards: store rewards clipped to [-1, 1] (returns stay unclipped).
      frames: send ``frame_replay.FrameStep`` blocks ``[rollout_steps, N]`` (each
        step's newest frame once; the replay builds stacks and n-step returns)
        instead of transitions. Needs stacked-frame observations ``[N, S, H, W]``
        and a same-step environment.
      unravel: ``flat -> params`` where parameters arrive as one flat vector
        (``flat_params``: one transfer per version instead of one per leaf);
        None: they arrive as the network's pytree.
    """

    def __init__(
        self,
        index: int,
        env,
        network,
        device,
        epsilon: Callable[[int], Any],
        version_for: Callable[[int], int] | None,
        *,
        rollout_steps: int,
        n_step: int,
        gamma: float,
        seed: int,
        clip_rewards: bool = False,
        frames: bool = False,
        unravel: Callable | None = None,
    ):
        self.index, self.env, self.device = index, env, device
        self.epsilon, self.version_for = epsilon, version_for
        self.rollout_steps, self.n_step, self.gamma = rollout_steps, n_step, gamma
        self.clip_rewards, self.frames = clip_rewards, frames
        self.num_envs = env.num_envs
        self.num_actions = env.spec.num_actions
        self.batch_items = self.num_envs * rollout_steps
        self._greedy = greedy_actions(network, deterministic=False, unravel=unravel)
        self._push = jax.jit(nstep_lib.push)
        # Noisy layers' and IQN's draws: the actor's own key, folded with a count.
        self._key = jax.random.fold_in(jax.random.key(seed), 1_000 + index)
        self._action_dtype = np.uint8 if self.num_actions <= 256 else np.int32
        self.seed = seed
        self.state = self._fresh_state(seed)

    # ---- state ---------------------------------------------------------------
    def _fresh_state(self, seed: int) -> dict:
        n = self.num_envs
        return {
            "obs": self.env.reset(seed=None),
            "rng": np.random.default_rng([seed, self.index, 1]),
            "acted": 0,  # rollouts acted with parameters (the noise's count)
            "made": 0,  # batches completed: the one being filled is `made`
            "steps": 0,  # env steps taken
            "first": np.ones(n, bool),  # frame mode: the obs is a reset one
            "held": None,  # NStepState of the last n-1 steps
            "held_valid": np.zeros((self.n_step - 1, n), bool),
            "pending": None,  # transitions not yet sent (leaves [M, ...])
            "stats": [0, 0.0, 0],  # episodes, return sum, length sum since the last batch
        }

    def start_over(self, batch: int) -> None:
        """Starts new episodes (the environments reset) with batch ``batch`` next:
        what an actor does after its process was restarted."""
        self.state = self._fresh_state(self.seed)
        self.state["made"] = batch

    def snapshot(self) -> dict:
        """The core's state with its environments' (``env.get_state()``): plain
        Python and numpy, for ``restore`` in this or another process."""
        state = dict(self.state)
        state["held"] = None if state["held"] is None else jax.tree.map(np.asarray, state["held"])
        return {"core": state, "env": self.env.get_state()}

    def restore(self, snapshot: dict) -> None:
        """Continues from ``snapshot()`` (of a core with the same settings)."""
        self.env.set_state(snapshot["env"])
        self.state = dict(snapshot["core"])

    @property
    def made(self) -> int:
        """Batches completed so far (the index of the one being filled)."""
        return self.state["made"]

    @property
    def steps_taken(self) -> int:
        return self.state["steps"]

    def next_version(self) -> int | None:
        """The version the next rollout must act with (None: not fixed)."""
        return None if self.version_for is None else self.version_for(self.state["made"])

    # ---- acting ----------------------------------------------------------------
    def rollout(self, params, version: int) -> list[ActorBatch]:
        """Steps ``rollout_steps`` times acting with ``params`` (None: uniformly at
        random) of ``version``; returns the batches completed."""
        s = self.state
        eps = None if params is None else np.asarray(self.epsilon(s["made"]), np.float32)
        if params is not None:
            s["acted"] += 1
        first = s["acted"] * self.rollout_steps  # the noise's draw: fold_in(key, first + t)
        rng, n = s["rng"], self.num_envs
        steps = []
        obs = s["obs"]
        for t in range(self.rollout_steps):
            actions = rng.integers(0, self.num_actions, n, dtype=np.int32)
            if params is not None:
                greedy = np.asarray(self._greedy(params, obs, self._key, first + t), np.int32)
                actions = np.where(rng.random(n) < eps, actions, greedy)
            step = self.env.step(actions)
            steps.append((obs, actions, step))
            if step.done.any():
                st = s["stats"]
                st[0] += int(step.done.sum())
                st[1] += float(step.episode_return[step.done].sum())
                st[2] += int(step.episode_length[step.done].sum())
            obs = step.obs
        s["obs"] = obs
        s["steps"] += self.batch_items
        if self.frames:
            return [self._frame_block(steps, version)]
        return self._transition_batches(steps, version)

    def _batch(self, items, version: int) -> ActorBatch:
        s = self.state
        episodes, return_sum, length_sum = s["stats"]
        s["stats"] = [0, 0.0, 0]
        batch = ActorBatch(items, version, episodes, return_sum, length_sum, self.index, s["made"])
        s["made"] += 1
        return batch

    def _frame_block(self, steps, version: int) -> ActorBatch:
        from dqnx.frame_replay import FrameStep

        s = self.state
        first, blocks = s["first"], []
        for obs, actions, step in steps:
            if not step.valid.all():
                raise ValueError("frame replay needs a same-step autoreset environment")
            reward = np.clip(step.reward, -1, 1) if self.clip_rewards else step.reward
            blocks.append(
                FrameStep(
                    obs[:, -1], actions.astype(self._action_dtype), reward.astype(np.float32),
                    step.terminated, step.truncated, first, step.next_obs[:, -1],
                )
            )  # fmt: skip
            first = step.done
        s["first"] = first
        return self._batch(jax.tree.map(lambda *x: np.stack(x), *blocks), version)  # [K, N, ...]

    def _transition_batches(self, steps, version: int) -> list[ActorBatch]:
        s = self.state
        obs = np.stack([o for o, _, _ in steps])  # [T, N, ...]
        actions = np.stack([a for _, a, _ in steps])
        valid = np.stack([st.valid for _, _, st in steps])
        reward = np.stack([st.reward for _, _, st in steps])
        if self.clip_rewards:
            reward = np.clip(reward, -1, 1)
        next_obs = np.stack([st.next_obs for _, _, st in steps])
        terminated = np.stack([st.terminated for _, _, st in steps])
        # A discarded reset step ends every window that reaches it.
        truncated = np.stack([st.truncated for _, _, st in steps]) | ~valid
        reward = reward.astype(np.float32)
        if self.n_step == 1:
            items = Transition(obs, actions, reward, next_obs, terminated)
            ok = valid
        else:
            rollout = nstep_lib.RolloutStep(obs, actions, reward, next_obs, terminated, truncated)
            held = s["held"]
            if held is None:
                held = nstep_lib.init_nstep_state(
                    jax.tree.map(lambda x: x[0], rollout), self.n_step
                )
            held, items, warm = self._push(held, rollout, np.float32(self.gamma))
            # The emitted transitions start at the oldest T steps of held ++ steps.
            windows = np.concatenate([s["held_valid"], valid])
            ok = np.asarray(warm) & windows[: len(valid)]
            s["held"], s["held_valid"] = held, windows[len(valid) :]
            items = jax.tree.map(np.asarray, items)
        keep = ok.reshape(-1)
        flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[keep], items)
        pending = flat if s["pending"] is None else _concat([s["pending"], flat])
        batches, size = [], self.batch_items
        while len(pending.action) >= size:
            batches.append(self._batch(jax.tree.map(lambda x: x[:size], pending), version))
            pending = jax.tree.map(lambda x: x[size:], pending)
        s["pending"] = pending
        return batches
