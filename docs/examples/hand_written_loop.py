"""dqnx's blocks without a Config: a hand-written, jitted loop of act -> add ->
sample -> update on CartPole-v1, with a custom elementwise TD loss (log-cosh
instead of Huber). Run: python docs/examples/hand_written_loop.py"""

import jax
import jax.numpy as jnp
import optax

from dqnx import actor, envs, learner, networks, objectives, replay
from dqnx.types import Transition


def main(num_iterations=3_000, num_envs=8):
    env = envs.make("CartPole-v1")
    net = networks.make_q_network("mlp", env.spec.obs_shape, env.spec.num_actions, (64, 64))
    acting = actor.make_actor(env, net, num_envs=num_envs)
    buffer = replay.uniform_replay(10_000, add_batch_size=num_envs)
    # Double DQN with any map of TD errors [B] to losses [B] (here log-cosh).
    objective = objectives.double_dqn(loss=lambda td: jnp.log(jnp.cosh(td)))
    learn = learner.make_learner(
        net, optax.adam(1e-3), objective, gamma=0.99, target_update_period=100
    )
    evaluate = jax.jit(actor.make_evaluator(env, net, num_episodes=5))

    k_actor, k_net, k_loop = jax.random.split(jax.random.key(0), 3)
    actor_state = acting.init(k_actor)
    learner_state = learn.init(k_net, actor_state.obs[:1])
    obs0 = actor_state.obs[0]
    example = Transition(obs0, jnp.int32(0), jnp.float32(0), obs0, jnp.bool_(False))
    replay_state = buffer.init(example)

    @jax.jit
    def train(carry, keys):
        def step(carry, key):
            actor_state, learner_state, replay_state, t = carry
            epsilon = jnp.maximum(0.05, 1.0 - t / 10_000)
            actor_state, transitions, _ = acting.rollout(
                learner_state.params, actor_state, epsilon, 1
            )
            replay_state = buffer.add(replay_state, transitions)
            batch, _ = buffer.sample(replay_state, key, 64)
            learner_state, metrics = learn.update(learner_state, batch)
            return (actor_state, learner_state, replay_state, t + num_envs), metrics["loss"]

        return jax.lax.scan(step, carry, keys)

    carry = (actor_state, learner_state, replay_state, jnp.int32(0))
    carry, losses = train(carry, jax.random.split(k_loop, num_iterations))
    returns = evaluate(carry[1].params, jax.random.key(1))  # [5] greedy returns
    print("final loss:", losses[-1], "greedy returns:", returns)
    return losses, returns


if __name__ == "__main__":
    main()
