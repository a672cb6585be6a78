"""The parts of a dqnx training iteration, each alone, for ``scripts/bench.py``.

Each part is a function ``(carry, *extra) -> (carry, checksum[S])`` that scans
``n`` iterations on one device's seeds, vmapped over seeds as ``dqnx.compiled``
does: acting with the current parameters, acting with random actions, replay
(add, then ``updates_per_iteration`` samples) and the learner
(``updates_per_iteration`` updates on batches sampled before the loop).
Outputs a part does not otherwise need are summed into the per-seed checksum
so that XLA cannot drop their computation. ``compile_part`` compiles one for
the (seeds x data) device layout of the full loop.

Imported by ``scripts/bench.py`` after it has set the CPU device count.
"""

from __future__ import annotations

import time

import benchlib
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dqnx import compiled, parallel, xla

LEARNER_BATCHES = 4  # distinct sampled batches the isolated learner cycles through


def make_parts(fns: compiled.TrainFns, n: int) -> dict:
    config, buffer, layout = fns.config, fns.buffer, fns.layout
    data_axis = layout.data_axis
    updates = config.updates_per_iteration
    batch_size = config.batch_size // layout.data
    add_size = config.num_envs // layout.data * config.rollout_steps
    spi = config.steps_per_iteration
    prioritized = hasattr(buffer, "update_priorities")
    replay_axes = compiled.seed_axes(config).replay
    local_envs = config.num_envs // layout.data

    def epsilon_at(env_steps):
        # As the full loop acts: Ape-X gives each data shard its slice of the per-env values.
        eps = fns.schedules.epsilon(env_steps)
        if config.exploration == "linear" or data_axis is None:
            return eps
        start = jax.lax.axis_index(data_axis) * local_envs
        return jax.lax.dynamic_slice_in_dim(eps, start, local_envs)

    def scan_updates(body, carry):
        if updates == 1:
            return body(carry, None)
        carry, out = jax.lax.scan(body, carry, None, length=updates)
        return carry, out.sum(0)

    def acting(random: bool):
        def run(actor_state, params, env_steps):
            def rollout(p, a, eps):
                return fns.actor.rollout(p, a, eps, config.rollout_steps)

            def body(carry, _):
                actor_state, t, acc = carry
                p = None if random else params
                actor_state, transitions, stats = jax.vmap(
                    rollout, in_axes=(None if random else 0, 0, None)
                )(p, actor_state, epsilon_at(t))
                acc = acc + benchlib.seed_checksum(transitions) + stats.return_sum
                return (actor_state, t + spi, acc), None

            acc = jnp.zeros(actor_state.key.shape[:1], jnp.float32)
            (actor_state, _, acc), _ = jax.lax.scan(
                body, (actor_state, env_steps, acc), None, length=n
            )
            return actor_state, acc

        return run

    def sample_one(replay_state, key, beta=1.0):
        key, k = jax.random.split(key)
        k = parallel.shard_key(k, data_axis)
        if prioritized:
            batch, idx, weights = buffer.sample(replay_state, k, batch_size, beta)
            return key, batch, idx, weights
        batch, idx = buffer.sample(replay_state, k, batch_size)
        return key, batch, idx, None

    def replay_part(carry):
        replay_state, keys = carry
        axes = replay_axes
        add = jax.vmap(buffer.add, in_axes=(axes, 0), out_axes=axes)
        # Items of the right shapes and dtypes: the first slots of each seed's buffer.
        items = jax.tree.map(lambda x: x[:, :add_size], replay_state.data)

        def sample_and_touch(rs, key):
            key, batch, idx, _ = sample_one(rs, key)
            acc = benchlib.checksum(batch)
            if prioritized:  # the full loop writes new priorities after each update
                rs = buffer.update_priorities(rs, idx, jnp.abs(batch.reward) + 0.5)
            return rs, key, acc

        touch = jax.vmap(sample_and_touch, in_axes=(axes, 0), out_axes=(axes, 0, 0))

        def body(carry, _):
            rs, keys, acc = carry
            rs = add(rs, items)

            def one(c, _):
                rs, keys = c
                rs, keys, a = touch(rs, keys)
                return (rs, keys), a

            (rs, keys), a = scan_updates(one, (rs, keys))
            return (rs, keys, acc + a), None

        acc = jnp.zeros(keys.shape[:1], jnp.float32)
        (replay_state, keys, acc), _ = jax.lax.scan(body, (replay_state, keys, acc), None, length=n)
        return (replay_state, keys), acc

    def learner_part(learner_state, replay_state, keys):
        axes = replay_axes
        # LEARNER_BATCHES batches sampled up front, used in turn: the update's
        # input changes every time, as in the full loop, so XLA cannot hoist the
        # work that depends on the batch alone (casts, conv patches) out of the loop.
        batches = []
        for _ in range(LEARNER_BATCHES):
            keys, batch, _, weights = jax.vmap(sample_one, in_axes=(axes, 0))(replay_state, keys)
            batches.append((batch, weights))
        batches = jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *batches)  # [S, K, ...]
        if prioritized:
            update = jax.vmap(lambda s, b, w: fns.learner.update_weighted(s, b, w)[:2])
        else:
            update = jax.vmap(lambda s, b, w: fns.learner.update(s, b))

        def body(carry, _):
            ls, acc, t = carry

            def one(c, _):
                ls, t = c
                batch, weights = jax.tree.map(
                    lambda x: jax.lax.dynamic_index_in_dim(x, t % LEARNER_BATCHES, 1, False),
                    batches,
                )
                ls, metrics = update(ls, batch, weights)
                return (ls, t + 1), metrics["loss"]

            (ls, t), loss = scan_updates(one, (ls, t))
            return (ls, acc + loss, t), None

        acc = jnp.zeros(keys.shape[:1], jnp.float32)
        (learner_state, acc, _), _ = jax.lax.scan(
            body, (learner_state, acc, jnp.int32(0)), None, length=n
        )
        return learner_state, acc

    return {
        "acting": acting(False),
        "acting_random": acting(True),
        "replay": replay_part,
        "learner": learner_part,
    }


def specs_of(tree):
    """The PartitionSpec of every array of ``tree`` as it lies on the mesh."""
    return jax.tree.map(lambda x: getattr(x.sharding, "spec", P()), tree)


def compile_part(fn, mesh, carry, extra, options=None):
    """jit(shard_map(fn)) donating ``carry``, compiled ahead of time for the
    arrays as they lie, with compile ``options`` (the chunk's, for a learner);
    returns (compiled, seconds)."""
    in_specs = (specs_of(carry), *[specs_of(e) for e in extra])
    out_specs = (specs_of(carry), P(parallel.SEEDS))
    wrapped = parallel.spmd(fn, mesh, in_specs, out_specs)
    t0 = time.perf_counter()
    lowered = jax.jit(wrapped, donate_argnums=(0,)).lower(carry, *extra)
    compiled = xla.compile(lowered, options)
    return compiled, time.perf_counter() - t0
