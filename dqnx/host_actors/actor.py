"""Host actor threads: each steps its own batch of host environments with a jitted
policy and sends fixed-size transition batches to the learner.

An actor thread loops: take the newest published parameters (never waiting for
them), choose epsilon-greedy actions (Q-values on its actor device, the
exploration draws on the host), step its ``HostEnv``, and every
``rollout_steps`` steps turn the steps into transitions with the n-step block
(``nstep.push``, jitted). Steps a library discarded at a reset (``valid``
False) end every window and never start a transition. Transitions are cut into
batches of exactly ``envs x rollout_steps`` items and put on a bounded queue,
which makes the actor wait while the learner is behind.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dqnx import nstep as nstep_lib
from dqnx.host_actors.evaluation import greedy_actions
from dqnx.types import Transition


class ActorBatch(NamedTuple):
    """What an actor thread sends the learner (host numpy arrays).

    Attributes:
      items: ``Transition`` or ``nstep.NStepTransition`` with leaves ``[B, ...]``.
      version: the parameter version the newest of these steps acted with
        (-1: uniformly random acting).
      episodes: episodes that ended while these items were made.
      return_sum: the sum of their (unclipped) returns.
      length_sum: the sum of their lengths.
      actor: index of the thread that sent it.
    """

    items: Any
    version: int
    episodes: int
    return_sum: float
    length_sum: int
    actor: int


class ParameterServer:
    """The newest published parameters, one copy per actor device.

    ``publish`` copies the learner's parameters to every actor device at once
    (the learner's own arrays are donated into its next update, so actors must
    never hold them); ``latest`` returns the newest copy without waiting.
    Version -1 (nothing published) means: act uniformly at random.
    """

    def __init__(self, devices):
        self._devices = list(devices)
        self._lock = threading.Lock()
        self._params = {d: None for d in self._devices}
        self._copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p))
        self.version = -1

    def publish(self, params, version: int) -> None:
        """Makes ``params`` the newest version (no waiting: the copies are
        ordered after the update that produced ``params``)."""
        fresh = self._copy(params)  # a new buffer even where the device is the same
        copies = {d: jax.device_put(fresh, d) for d in self._devices}
        with self._lock:
            self._params, self.version = copies, int(version)

    def latest(self, device) -> tuple[Any, int]:
        with self._lock:
            return self._params[device], self.version


class ActorThread(threading.Thread):
    """One actor: a ``HostEnv``, a policy on ``device``, a queue to the learner.

    Args:
      index: this actor's index (its seed stream and Ape-X epsilon slice).
      make_env: ``() -> HostEnv`` (called in the thread's constructor).
      network: the Q-network.
      server: the ``ParameterServer``.
      device: the actor device its policy runs on.
      out: the bounded queue of ``ActorBatch``.
      epsilon: ``(env_steps) -> epsilon``: a float or one value per environment
        of this actor.
      env_steps: ``() -> int``: the run's env steps so far (for the schedule).
      rollout_steps: steps per n-step push and per batch.
      n_step, gamma: n-step returns.
      seed: seeds the environments and the exploration draws.
      stop: set to end the thread.
      clip_rewards: store rewards clipped to [-1, 1] (returns stay unclipped).
      frames: send ``frame_replay.FrameStep`` blocks ``[rollout_steps, N]`` (each
        step's newest frame once; the replay builds stacks and n-step returns)
        instead of transitions. Needs stacked-frame observations ``[N, S, H, W]``
        and a same-step environment.
    """

    def __init__(
        self,
        index: int,
        make_env: Callable[[], Any],
        network,
        server: ParameterServer,
        device,
        out: queue.Queue,
        epsilon: Callable[[int], Any],
        env_steps: Callable[[], int],
        *,
        rollout_steps: int,
        n_step: int,
        gamma: float,
        seed: int,
        stop: threading.Event,
        clip_rewards: bool = False,
        frames: bool = False,
    ):
        super().__init__(name=f"dqnx-actor-{index}", daemon=True)
        self.index, self.server, self.device, self.out = index, server, device, out
        self.epsilon, self.env_steps, self.stop = epsilon, env_steps, stop
        self.rollout_steps, self.n_step, self.gamma = rollout_steps, n_step, gamma
        self.seed, self.clip_rewards, self.frames = seed, clip_rewards, frames
        self.env = make_env()
        self.num_envs = self.env.num_envs
        self.num_actions = self.env.spec.num_actions
        self.error: BaseException | None = None
        self.steps_taken = 0
        self._greedy = greedy_actions(network, deterministic=False)
        # Noisy layers' and IQN's draws: the thread's own key, folded with a step count.
        self._key = jax.random.fold_in(jax.random.key(seed), 1_000 + index)
        self._acted = 0
        self._push = jax.jit(nstep_lib.push, static_argnames=())

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # reported by the learner side, never lost
            self.error = e
        finally:
            self.env.close()

    def _actions(self, obs, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        params, version = self.server.latest(self.device)
        n = self.num_envs
        random = rng.integers(0, self.num_actions, n, dtype=np.int32)
        if params is None:
            return random, -1
        self._acted += 1
        greedy = self._greedy(params, jax.device_put(obs, self.device), self._key, self._acted)
        greedy = np.asarray(greedy, np.int32)
        explore = rng.random(n) < np.asarray(self.epsilon(self.env_steps()), np.float32)
        return np.where(explore, random, greedy), version

    def _loop(self) -> None:
        if self.frames:
            self._frame_loop()
            return
        rng = np.random.default_rng([self.seed, self.index, 1])
        obs = self.env.reset(seed=None)
        held = None  # NStepState of the last n-1 steps
        held_valid = np.zeros((self.n_step - 1, self.num_envs), bool)
        pending: list[Any] = []  # transition chunks not yet sent
        pending_count = 0
        batch_size = self.num_envs * self.rollout_steps
        episodes, return_sum, length_sum, version = 0, 0.0, 0, -1
        while not self.stop.is_set():
            steps, valid = [], []
            for _ in range(self.rollout_steps):
                actions, version = self._actions(obs, rng)
                step = self.env.step(actions)
                reward = np.clip(step.reward, -1, 1) if self.clip_rewards else step.reward
                # A discarded reset step ends every window that reaches it.
                truncated = step.truncated | ~step.valid
                steps.append(
                    nstep_lib.RolloutStep(
                        obs, actions, reward.astype(np.float32), step.next_obs,
                        step.terminated, truncated,
                    )
                )  # fmt: skip
                valid.append(step.valid)
                episodes += int(step.done.sum())
                return_sum += float(step.episode_return[step.done].sum())
                length_sum += int(step.episode_length[step.done].sum())
                obs = step.obs
            self.steps_taken += self.rollout_steps * self.num_envs
            stacked = jax.tree.map(lambda *x: np.stack(x), *steps)  # [T, N, ...]
            valid = np.stack(valid)  # [T, N]
            items, ok = self._transitions(stacked, valid, held_valid, held)
            if self.n_step > 1:
                held, held_valid = items[1], np.concatenate([held_valid, valid])[len(valid) :]
                items = items[0]
            keep = ok.reshape(-1)
            flat = jax.tree.map(lambda x, keep=keep: x.reshape(-1, *x.shape[2:])[keep], items)
            pending.append(flat)
            pending_count += int(ok.sum())
            while pending_count >= batch_size:
                merged = jax.tree.map(lambda *x: np.concatenate(x), *pending)
                batch = jax.tree.map(lambda x: x[:batch_size], merged)
                rest = jax.tree.map(lambda x: x[batch_size:], merged)
                pending, pending_count = [rest], pending_count - batch_size
                self._put(ActorBatch(batch, version, episodes, return_sum, length_sum, self.index))
                episodes, return_sum, length_sum = 0, 0.0, 0

    def _frame_loop(self) -> None:
        """Frame mode: one ``FrameStep`` block of ``rollout_steps`` steps per batch."""
        from dqnx.frame_replay import FrameStep

        rng = np.random.default_rng([self.seed, self.index, 1])
        obs = self.env.reset(seed=None)
        first = np.ones(self.num_envs, bool)  # the obs is a reset one
        action_dtype = np.uint8 if self.num_actions <= 256 else np.int32
        while not self.stop.is_set():
            block, episodes, return_sum, length_sum = [], 0, 0.0, 0
            for _ in range(self.rollout_steps):
                actions, version = self._actions(obs, rng)
                step = self.env.step(actions)
                if not step.valid.all():
                    raise ValueError("frame replay needs a same-step autoreset environment")
                reward = np.clip(step.reward, -1, 1) if self.clip_rewards else step.reward
                block.append(
                    FrameStep(
                        obs[:, -1], actions.astype(action_dtype), reward.astype(np.float32),
                        step.terminated, step.truncated, first, step.next_obs[:, -1],
                    )
                )  # fmt: skip
                episodes += int(step.done.sum())
                return_sum += float(step.episode_return[step.done].sum())
                length_sum += int(step.episode_length[step.done].sum())
                first, obs = step.done, step.obs
            self.steps_taken += self.rollout_steps * self.num_envs
            items = jax.tree.map(lambda *x: np.stack(x), *block)  # [K, N, ...]
            self._put(ActorBatch(items, version, episodes, return_sum, length_sum, self.index))

    def _transitions(self, steps, valid, held_valid, held):
        """Transitions of ``steps`` [T, N] and which of them to keep ([T, N] bool)."""
        if self.n_step == 1:
            items = Transition(steps.obs, steps.action, steps.reward, steps.next_obs,
                               steps.terminated)  # fmt: skip
            return items, valid
        if held is None:
            example = jax.tree.map(lambda x: x[0], steps)
            held = nstep_lib.init_nstep_state(example, self.n_step)
        held, items, warm = self._push(held, steps, np.float32(self.gamma))
        # The emitted transitions start at the oldest T steps of held ++ steps.
        starts_valid = np.concatenate([held_valid, valid])[: len(valid)]
        ok = np.asarray(warm) & starts_valid
        return (jax.tree.map(np.asarray, items), held), ok

    def _put(self, batch: ActorBatch) -> None:
        while not self.stop.is_set():
            try:
                self.out.put(batch, timeout=0.1)
                return
            except queue.Full:
                continue
