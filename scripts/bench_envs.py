"""Env steps/s of compiled environments alone: gymnax ids beside the suites'.

  python scripts/bench_envs.py [--envs=CartPole-v1,pgx:tic_tac_toe,...] \
      [--num_envs=16] [--steps=500] [--repeats=3] [--out=bench.json]

For each environment (built as ``--env_name`` builds it, ``NAME|KEY=VALUE`` adding
an ``--env_options`` item): one jitted ``lax.scan`` of ``--steps`` steps of
``--num_envs`` vmapped environments, uniformly random legal actions (what prefill
does: no network), episode ends reset in the same step. ``compile_s``: lowering +
compiling that program; ``steps_per_s``: ``steps x num_envs`` over the median of
``--repeats`` timed calls (after one untimed call), summed over the rewards so the
work cannot be dropped. One process, all of the machine's cores to XLA.
"""

from __future__ import annotations

import sys
import time

import benchlib
import jax
import jax.numpy as jnp
from absl import app, flags

import dqnx
from dqnx import builder
from dqnx.legal import random_legal

flags.DEFINE_list(
    "envs",
    [
        "CartPole-v1",
        "Breakout-MinAtar",
        "pgx:tic_tac_toe",
        "navix:Navix-Empty-5x5-v0",
        "jumanji:Snake-v1|obs_keys=grid",
        "craftax:Craftax-Classic-Symbolic-v1",
    ],
    "Environment names (NAME|KEY=VALUE for options).",
)
flags.DEFINE_integer("num_envs", 16, "Environments stepped together (vmap).")
flags.DEFINE_integer("steps", 500, "Steps per timed call.")
flags.DEFINE_integer("repeats", 3, "Timed calls (median).")
flags.DEFINE_string("out", "", "Optional JSON output path.")
FLAGS = flags.FLAGS


def measure(text: str, num_envs: int, steps: int, repeats: int) -> dict:
    name, *options = text.split("|")
    env = builder.make_env(dqnx.Config(env_name=name, env_options=tuple(options)))
    n_actions = env.spec.num_actions

    def run(key):
        obs, state = jax.vmap(env.reset)(jax.random.split(key, num_envs))

        def body(carry, key):
            state, total = carry
            k_act, k_env = jax.random.split(key)
            legal = (
                jax.vmap(env.legal)(state)
                if env.legal is not None
                else jnp.ones((num_envs, n_actions), bool)
            )
            action = random_legal(k_act, legal)
            state, step = jax.vmap(env.step)(jax.random.split(k_env, num_envs), state, action)
            return (state, total + step.reward.sum()), None

        (_, total), _ = jax.lax.scan(body, (state, jnp.float32(0)), jax.random.split(key, steps))
        return total

    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    keys = iter(range(1, repeats + 2))
    us = benchlib.median_us(compiled, lambda: (jax.random.key(next(keys)),), repeats)
    return {
        "env": text,
        "num_envs": num_envs,
        "steps": steps,
        "compile_s": round(compile_s, 2),
        "steps_per_s": round(steps * num_envs / (us * 1e-6)),
        "legal_mask": env.legal is not None,
    }


def main(argv):
    del argv
    info = benchlib.machine_info()
    print(
        f"# {info['cpu']}, {info['cores_usable']} usable cores, jax {info['jax']} "
        f"({info['backend']}), load {info['load_avg_1m']:.2f}; random legal actions, "
        f"{FLAGS.num_envs} envs x {FLAGS.steps} steps per call, median of {FLAGS.repeats}"
    )
    print("| env | env steps/s | compile s | mask |\n|---|---:|---:|---|")
    results = []
    for text in FLAGS.envs:
        r = measure(text, FLAGS.num_envs, FLAGS.steps, FLAGS.repeats)
        results.append(r)
        print(f"| {r['env']} | {r['steps_per_s']:,} | {r['compile_s']:.1f} | "
              f"{'yes' if r['legal_mask'] else 'no'} |", flush=True)  # fmt: skip
    benchlib.write_json(FLAGS.out, {"machine": info, "results": results})


if __name__ == "__main__":
    app.run(main, argv=sys.argv)
