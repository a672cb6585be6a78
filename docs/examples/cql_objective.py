"""Prioritized 3-step Double DQN with a custom network and a CQL-style penalty
added through an objective, from dqnx's blocks (CartPole, one jitted scan)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dqnx import actor, envs, learner, nstep, objectives, prioritized

N, ENVS, GAMMA, ALPHA = 3, 8, 0.99, 0.1


class Net(nn.Module):  # any flax module mapping observations [B, ...] to Q-values [B, A]
    num_actions: int

    @nn.compact
    def __call__(self, obs):
        return nn.Dense(self.num_actions)(nn.swish(nn.Dense(64)(nn.swish(nn.Dense(64)(obs)))))


def cql_double_dqn(network, params, target_params, batch, discount_t, key):
    """Double DQN's per-example loss + ALPHA * (logsumexp_a Q(s, a) - Q(s, a_taken))."""
    terms = objectives.double_dqn()(network, params, target_params, batch, discount_t, key)
    q, a = terms.q_tm1, batch.action[:, None]
    penalty = jax.nn.logsumexp(q, axis=-1) - jnp.take_along_axis(q, a, axis=-1)[:, 0]
    return terms._replace(loss=terms.loss + ALPHA * penalty)


def run(num_updates=3_000, seed=0):
    env = envs.make("CartPole-v1")
    net, last = Net(env.spec.num_actions), lambda tree: jax.tree.map(lambda x: x[-1], tree)
    acting = actor.make_actor(env, net, num_envs=ENVS)
    buffer = prioritized.prioritized_replay(20_000, add_batch_size=ENVS, priority_exponent=0.6)
    learn = learner.make_learner(net, optax.adam(1e-3), cql_double_dqn, gamma=GAMMA,
                                 target_update_period=200)  # fmt: skip
    k_act, k_net, k_loop = jax.random.split(jax.random.key(seed), 3)
    actor_state, steps, _ = acting.rollout_steps(None, acting.init(k_act), 1.0, N)  # random
    window, first, _ = nstep.push(nstep.init_nstep_state(last(steps), N), steps, GAMMA)
    replay = buffer.add(buffer.init(last(last(first))), last(first))  # the first full window

    def step(carry, key):
        actor_state, learner_state, window, replay, t = carry
        epsilon = jnp.maximum(0.05, 1.0 - t / 10_000)
        actor_state, steps, _ = acting.rollout_steps(learner_state.params, actor_state, epsilon, 1)
        window, transitions, _ = nstep.push(window, steps, GAMMA)  # [1, ENVS] n-step items
        replay = buffer.add(replay, last(transitions))
        batch, idx, weights = buffer.sample(replay, key, 64, 0.4 + 0.6 * t / (num_updates * ENVS))
        learner_state, metrics, priority = learn.update_weighted(learner_state, batch, weights)
        replay = buffer.update_priorities(replay, idx, priority)
        return (actor_state, learner_state, window, replay, t + ENVS), metrics["loss"]

    carry = (actor_state, learn.init(k_net, actor_state.obs[:1]), window, replay, jnp.int32(0))
    scan = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys))
    carry, losses = scan(carry, jax.random.split(k_loop, num_updates))
    returns = jax.jit(actor.make_evaluator(env, net, num_episodes=5))(carry[1].params, k_loop)
    return losses, returns  # the loss of every update, greedy returns [5]


if __name__ == "__main__":
    losses, returns = run()
    print("final loss:", float(losses[-1]), "greedy returns:", returns)
