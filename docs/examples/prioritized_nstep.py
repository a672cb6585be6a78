"""Prioritized replay and 3-step returns from dqnx's blocks, in a hand-written loop
on CartPole-v1 (run: python docs/examples/prioritized_nstep.py).

Each iteration: act one step in every environment -> n-step window -> add to the
prioritized replay (new items get the largest priority seen) -> sample with
importance weights -> weighted update -> the sampled items' new priorities.
"""

import jax
import jax.numpy as jnp
import optax

from dqnx import actor, envs, learner, networks, nstep, objectives, prioritized

N_STEP = 3
GAMMA = 0.99


def main(num_iterations=3_000, num_envs=8, batch_size=64):
    env = envs.make("CartPole-v1")
    net = networks.make_q_network("mlp", env.spec.obs_shape, env.spec.num_actions, (64, 64))
    acting = actor.make_actor(env, net, num_envs=num_envs)
    buffer = prioritized.prioritized_replay(
        10_000,
        add_batch_size=num_envs,
        priority_exponent=0.6,  # alpha
    )
    learn = learner.make_learner(
        net, optax.adam(1e-3), objectives.double_dqn(), gamma=GAMMA, target_update_period=100
    )
    evaluate = jax.jit(actor.make_evaluator(env, net, num_episodes=5))

    k_actor, k_net, k_loop = jax.random.split(jax.random.key(0), 3)
    actor_state = acting.init(k_actor)
    learner_state = learn.init(k_net, actor_state.obs[:1])

    # The n-step window carries the last N_STEP - 1 steps of every environment. Fill it
    # with random steps first, so that every transition it emits afterwards is real.
    actor_state, steps, _ = acting.rollout_steps(learner_state.params, actor_state, 1.0, N_STEP - 1)
    window = nstep.init_nstep_state(jax.tree.map(lambda x: x[0], steps), N_STEP)
    window, _, _ = nstep.push(window, steps, GAMMA)
    # A transition as stored: its `discount` (gamma^k, 0 after a termination) is what
    # the learner bootstraps with, instead of gamma * (1 - terminated).
    obs0 = actor_state.obs[0]
    example = nstep.NStepTransition(
        obs0, jnp.int32(0), jnp.float32(0), obs0, jnp.bool_(False), jnp.float32(0)
    )
    replay_state = buffer.init(example)

    @jax.jit
    def train(carry, keys):
        def step(carry, key):
            actor_state, window, learner_state, replay_state, i = carry
            epsilon = jnp.maximum(0.05, 1.0 - i * num_envs / 10_000)
            beta = 0.4 + 0.6 * i / num_iterations  # importance exponent, annealed to 1
            actor_state, steps, _ = acting.rollout_steps(
                learner_state.params, actor_state, epsilon, 1
            )  # leaves [1, num_envs, ...]
            window, transitions, _ = nstep.push(window, steps, GAMMA)
            transitions = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), transitions)
            replay_state = buffer.add(replay_state, transitions)  # largest priority so far
            batch, indices, weights = buffer.sample(replay_state, key, batch_size, beta)
            learner_state, metrics, priority = learn.update_weighted(learner_state, batch, weights)
            replay_state = buffer.update_priorities(replay_state, indices, priority)
            carry = (actor_state, window, learner_state, replay_state, i + 1)
            return carry, metrics["loss"]

        return jax.lax.scan(step, carry, keys)

    carry = (actor_state, window, learner_state, replay_state, jnp.int32(0))
    carry, losses = train(carry, jax.random.split(k_loop, num_iterations))
    returns = evaluate(carry[2].params, jax.random.key(1))  # [5] greedy returns
    print("final loss:", losses[-1], "greedy returns:", returns)
    return losses, returns


if __name__ == "__main__":
    main()
