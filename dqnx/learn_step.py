"""One learning step on replay: sample -> learner update -> new priorities.

Shared by both execution modes; a building block (plain arguments, no Config).
"""

from __future__ import annotations

import jax

from dqnx import parallel


def make_learn_step(learner, buffer, batch_size: int, *, prioritized: bool, axis_name=None):
    """``learn(learner_state, replay_state, key, beta) -> (learner_state, replay_state, key,
    metrics)``: one update on ``batch_size`` items sampled from ``replay_state``.

    Args:
      learner: a ``learner.Learner`` (``update_weighted`` for prioritized replay).
      buffer: the replay (``replay.uniform_replay`` or ``prioritized.prioritized_replay``).
      batch_size: items sampled per update (per data shard).
      prioritized: the buffer is prioritized: sample with importance exponent
        ``beta``, weight the loss, write back the learner's per-example priorities
        (``|TD|`` for DQN, the example's loss for C51, QR-DQN and IQN).
      axis_name: the data axis the learner averages over; each shard samples
        with its own key, and new items get the same max priority on every shard.
    """

    def learn(learner_state, replay_state, key, beta):
        key, k_sample = jax.random.split(key)
        k_sample = parallel.shard_key(k_sample, axis_name)
        if not prioritized:
            batch, _ = buffer.sample(replay_state, k_sample, batch_size)
            learner_state, metrics = learner.update(learner_state, batch)
            return learner_state, replay_state, key, metrics
        batch, idx, weights = buffer.sample(replay_state, k_sample, batch_size, beta)
        learner_state, metrics, priority = learner.update_weighted(learner_state, batch, weights)
        replay_state = buffer.update_priorities(replay_state, idx, priority)
        if axis_name is not None:  # new items get the same max priority on every shard
            replay_state = replay_state._replace(
                max_priority=jax.lax.pmax(replay_state.max_priority, axis_name)
            )
        return learner_state, replay_state, key, metrics

    return learn
