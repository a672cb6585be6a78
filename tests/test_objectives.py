"""The learner's objectives: each head's loss as the learner computes it, the
priorities it returns, and the keys of learners that draw random numbers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dqnx import actor, distributional, learner, munchausen, networks, objectives, prioritized
from dqnx.learn_step import make_learn_step
from dqnx.nstep import NStepTransition

B, OBS, A = 6, 3, 2
_rng = np.random.default_rng(0)
BATCH = NStepTransition(
    obs=jnp.asarray(_rng.normal(size=(B, OBS)), jnp.float32),
    action=jnp.asarray(_rng.integers(0, A, B), jnp.int32),
    reward=jnp.asarray(_rng.normal(size=B), jnp.float32),
    next_obs=jnp.asarray(_rng.normal(size=(B, OBS)), jnp.float32),
    terminated=jnp.asarray([False, True, False, False, True, False]),
    discount=jnp.asarray([0.9, 0.0, 0.9, 0.81, 0.0, 0.9], jnp.float32),
)
WEIGHTS = jnp.asarray(_rng.uniform(0.2, 1.0, B), jnp.float32)


def net(head=None, dueling=False):
    return networks.make_q_network("mlp", (OBS,), A, (8,), dueling, head=head)


def state_with_distinct_target(learn, network):
    """A fresh learner state whose target parameters differ from the online ones."""
    state = jax.jit(learn.init)(jax.random.key(0), BATCH.obs)
    other = jax.jit(network.init)(jax.random.key(1), BATCH.obs)
    return state._replace(target_params=other)


def test_munchausen_dqn_loss_is_the_munchausen_td_error():
    """M-DQN's loss on a fixed batch: mean of squared ``munchausen_q_learning`` TD
    errors (online q_tm1, target q_t and q_tm1); priorities are their magnitudes."""
    network = net()
    m = objectives.Munchausen(tau=0.1, alpha=0.9, l0=-1.0)
    learn = learner.make_learner(
        network, optax.sgd(0.0), objectives.DQN(loss="mse", munchausen=m), gamma=0.9
    )
    state = state_with_distinct_target(learn, network)

    @jax.jit
    def both(state):
        _, metrics, priority = learn.update_weighted(state, BATCH, None)
        q_tm1 = network.apply(state.params, BATCH.obs)
        q_t = network.apply(state.target_params, BATCH.next_obs)
        q_tm1_target = network.apply(state.target_params, BATCH.obs)
        td = jax.vmap(functools.partial(munchausen.munchausen_q_learning, **m._asdict()))(
            q_tm1, BATCH.action, BATCH.reward, BATCH.discount, q_t, q_tm1_target
        )
        return metrics, priority, td

    metrics, priority, td = both(state)
    np.testing.assert_allclose(metrics["loss"], np.mean(np.square(td)), rtol=1e-5)
    np.testing.assert_allclose(priority, np.abs(td), rtol=1e-5)
    assert np.abs(td).min() > 0  # the bonus moved every target


def test_c51_priorities_are_its_cross_entropy_and_go_to_replay():
    """Prioritized learn step (C51, Double): the learner weights the per-example
    cross-entropy and writes it (computed here directly from the head's logits) as
    each sampled item's priority."""
    head = networks.Head("c51", num_atoms=5, v_min=-3.0, v_max=3.0)
    network = net(head, dueling=True)
    learn = learner.make_learner(network, optax.sgd(0.0), objectives.c51(double_q=True), gamma=0.9)
    state = state_with_distinct_target(learn, network)
    alpha = 0.5
    buffer = prioritized.prioritized_replay(8, add_batch_size=B, priority_exponent=alpha)
    replay = buffer.add(buffer.init(jax.tree.map(lambda x: x[0], BATCH)), BATCH)
    learn_step = make_learn_step(learn, buffer, 4, prioritized=True)

    @jax.jit
    def run(state, replay, key):
        _, new_replay, _, metrics = learn_step(state, replay, key, 0.5)
        _, k_sample = jax.random.split(key)  # as make_learn_step samples
        batch, idx, weights = buffer.sample(replay, k_sample, 4, 0.5)
        logits_tm1 = network.apply(state.params, batch.obs)
        logits_t = network.apply(state.target_params, batch.next_obs)
        q_sel = networks.q_values(network, state.params, batch.next_obs)
        ce = jax.vmap(
            functools.partial(distributional.categorical_double_q_learning, atoms=head.atoms)
        )(logits_tm1, batch.action, batch.reward, batch.discount, logits_t, q_sel)
        return metrics, prioritized.priorities(new_replay, 8), idx, weights, ce

    metrics, stored, idx, weights, ce = run(state, replay, jax.random.key(3))
    np.testing.assert_allclose(metrics["loss"], np.mean(weights * ce), rtol=1e-5)
    eps = 1e-6  # prioritized_replay's default
    want = {int(i): (float(c) + eps) ** alpha for i, c in zip(idx, ce, strict=True)}
    for i, p in want.items():  # duplicates in idx carry the same value
        np.testing.assert_allclose(stored[i], p, rtol=1e-5)


@pytest.mark.parametrize("kind", ["qr", "iqn"])
def test_quantile_priorities_are_the_per_example_loss(kind):
    """QR-DQN: priorities are ``quantile_q_learning`` of each example, computed here
    directly; QR and IQN: the weighted loss is the mean of weights x priorities."""
    head = networks.Head(kind, num_quantiles=5, num_quantile_samples=3, embedding_dim=4)
    network = net(head)
    objective = (
        objectives.qr(kappa=1.0)
        if kind == "qr"
        else objectives.iqn(num_tau_samples=4, num_tau_prime_samples=6, kappa=1.0)
    )
    learn = learner.make_learner(network, optax.sgd(0.0), objective, gamma=0.9)
    state = state_with_distinct_target(learn, network)
    assert (state.key is not None) == (kind == "iqn")  # IQN samples its fractions

    @jax.jit
    def run(state):
        _, metrics, priority = learn.update_weighted(state, BATCH, WEIGHTS)
        if kind == "iqn":
            return metrics, priority, priority
        dist_tm1 = network.apply(state.params, BATCH.obs)
        dist_t = network.apply(state.target_params, BATCH.next_obs)
        q_sel = networks.q_values(network, state.params, BATCH.next_obs)[:, None]
        taus = distributional.quantile_midpoints(5)
        direct = jax.vmap(
            functools.partial(distributional.quantile_q_learning, huber_param=1.0),
            in_axes=(0, None, 0, 0, 0, 0, 0),
        )(dist_tm1, taus, BATCH.action, BATCH.reward, BATCH.discount, q_sel, dist_t)
        return metrics, priority, direct

    metrics, priority, direct = run(state)
    assert priority.shape == (B,) and (np.asarray(priority) > 0).all()
    np.testing.assert_allclose(priority, direct, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], np.mean(WEIGHTS * priority), rtol=1e-5)


def test_noisy_learner_keys_are_per_update_and_deterministic():
    """A noisy learner keeps a key; update k draws fold_in(key, k): the same state
    updates to the same result, the next update draws other noise."""
    network = net(networks.Head(noisy=True))
    learn = learner.make_learner(network, optax.adam(1e-2), objectives.double_dqn(), gamma=0.9)
    update = jax.jit(learn.update)
    s0 = jax.jit(learn.init)(jax.random.key(0), BATCH.obs)
    assert s0.key is not None
    (a, ma), (b, mb) = update(s0, BATCH), update(s0, BATCH)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    assert float(ma["loss"]) == float(mb["loss"])
    # The same parameters at update 1 instead of 0: other noise, another loss.
    _, m1 = update(s0._replace(num_updates=jnp.int32(1)), BATCH)
    assert float(m1["loss"]) != float(ma["loss"])
    # Another key (another seed's): another noise stream.
    _, m_other = update(s0._replace(key=jax.random.key(5)), BATCH)
    assert float(m_other["loss"]) != float(ma["loss"])


def test_noisy_greedy_actions_ignore_the_noise_and_acting_uses_it():
    network = net(networks.Head(noisy=True, sigma0=5.0))
    params = jax.jit(network.init)(jax.random.key(0), BATCH.obs)
    obs = jnp.asarray(np.random.default_rng(1).normal(size=(64, OBS)), jnp.float32)

    @functools.partial(jax.jit, static_argnums=1)
    def act(key, deterministic):
        return actor.select_actions(network, A, params, obs, 0, key, deterministic=deterministic)

    keys = [jax.random.key(k) for k in range(3)]
    greedy = [np.asarray(act(k, True)) for k in keys]
    np.testing.assert_array_equal(greedy[0], greedy[1])
    np.testing.assert_array_equal(greedy[0], greedy[2])
    means = jax.jit(lambda p: network.apply(p, obs, deterministic=True))(params)
    np.testing.assert_array_equal(greedy[0], np.argmax(means, axis=-1))
    noisy = [np.asarray(act(k, False)) for k in keys]
    assert any((n != greedy[0]).any() for n in noisy)  # sigma0 = 5: the noise flips some


def test_munchausen_is_a_dqn_or_iqn_objective_and_needs_their_head():
    """Munchausen exists only as DQN's and IQN's option; on a C51 network it is
    refused for the head it reads."""
    assert objectives.munchausen() == objectives.DQN(munchausen=objectives.Munchausen())
    with pytest.raises(ValueError, match="reads a 'dqn' head"):
        learner.make_learner(
            net(networks.Head("c51")), optax.sgd(0.0), objectives.munchausen(), gamma=0.9
        )
