"""The tiny CartPole configuration the end-to-end tests derive theirs from (``.replace``)."""

import dqnx

# 2 seeds x 4 environments, 2,000 env steps: a run compiles in seconds and takes less.
CARTPOLE = dqnx.Config(
    env_name="CartPole-v1",
    num_seeds=2,
    num_envs=4,
    buffer_size=1_000,
    batch_size=32,
    hidden_sizes=(16,),
    learning_starts=64,
    total_steps=2_000,
    log_every=200,
    checkpoint_every=400,
    eval_every=1_000,
    eval_episodes=2,
)
