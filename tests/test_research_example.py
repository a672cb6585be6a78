"""The library guide's research example (docs/examples/cql_objective.py):
prioritized 3-step Double DQN with a custom network and a CQL-style penalty
added through an objective. It runs (a few hundred updates here), and its
objective is Double DQN's loss plus the penalty, computed here with NumPy."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dqnx import networks
from dqnx.nstep import NStepTransition

PATH = Path(__file__).resolve().parents[1] / "docs" / "examples" / "cql_objective.py"


def load():
    spec = importlib.util.spec_from_file_location("cql_objective", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_runs_and_its_losses_are_finite():
    losses, returns = load().run(num_updates=150)
    assert losses.shape == (150,) and np.isfinite(np.asarray(losses)).all()
    assert returns.shape == (5,) and (np.asarray(returns) >= 1).all()


def test_the_penalised_objective_matches_numpy():
    example = load()
    net = example.Net(2)
    rng = np.random.default_rng(0)
    b = 5
    batch = NStepTransition(
        obs=jnp.asarray(rng.normal(size=(b, 4)), jnp.float32),
        action=jnp.asarray(rng.integers(0, 2, b), jnp.int32),
        reward=jnp.asarray(rng.normal(size=b), jnp.float32),
        next_obs=jnp.asarray(rng.normal(size=(b, 4)), jnp.float32),
        terminated=jnp.zeros(b, bool),
        discount=jnp.asarray([0.9, 0.0, 0.81, 0.9, 0.729], jnp.float32),
    )
    params = net.init(jax.random.key(0), batch.obs)
    target = net.init(jax.random.key(1), batch.obs)
    terms = example.cql_double_dqn(net, params, target, batch, batch.discount, None)
    q, q_next = (
        np.asarray(net.apply(params, batch.obs)),
        np.asarray(net.apply(params, batch.next_obs)),
    )
    q_target = np.asarray(net.apply(target, batch.next_obs))
    a = np.asarray(batch.action)
    bootstrap = q_target[np.arange(b), q_next.argmax(-1)]  # Double DQN: online argmax
    td = np.asarray(batch.reward) + np.asarray(batch.discount) * bootstrap - q[np.arange(b), a]
    huber = np.where(np.abs(td) <= 1, 0.5 * td**2, np.abs(td) - 0.5)
    logsumexp = np.log(np.exp(q).sum(-1))
    expected = huber + example.ALPHA * (logsumexp - q[np.arange(b), a])
    np.testing.assert_allclose(terms.loss, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms.priority, np.abs(td), rtol=1e-5, atol=1e-6)
    assert networks.head_of(net).kind == "dqn"  # a plain module: Q-values
