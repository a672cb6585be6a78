"""Your own flax network in dqnx's compiled training program: Double DQN on
CartPole-v1, two seeds vmapped in one program (run: python docs/examples/custom_network.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

import dqnx


class TanhMLP(nn.Module):
    num_actions: int

    @nn.compact
    def __call__(self, obs):  # [B, *obs_shape] -> Q-values [B, A]
        h = nn.tanh(nn.Dense(64)(obs.reshape(obs.shape[0], -1).astype(jnp.float32)))
        return nn.Dense(self.num_actions)(h)


def main(total_steps=20_000, chunks=3):
    config = dqnx.Config(
        env_name="CartPole-v1", num_seeds=2, num_envs=8, total_steps=total_steps,
        buffer_size=10_000, batch_size=64, learning_starts=1_000, log_every=total_steps // 5,
    ).check_fields()  # fmt: skip
    fns = dqnx.make_train_fns(config, network=TanhMLP(num_actions=2))
    prefill = jax.jit(fns.prefill, donate_argnums=0)
    chunk = jax.jit(fns.chunk, donate_argnums=0)
    state, _ = prefill(fns.init())
    for _ in range(chunks):
        state, metrics = chunk(state)
    returns = jax.jit(fns.evaluate)(state)  # [seeds, eval_episodes] greedy returns
    print("env steps per seed:", int(state.env_steps), "greedy return:", returns.mean(axis=1))
    return returns


if __name__ == "__main__":
    main()
