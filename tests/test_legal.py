"""Legal-action masks: the max / argmax / draw helpers, masked acting, and the
masked bootstrap targets (Double DQN, DQN, C51) against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqnx import actor, exploration, networks, objectives
from dqnx import legal as legal_lib
from dqnx.types import Transition

Q = np.array([[1.0, 5.0, 3.0, -2.0], [0.5, 0.1, 0.2, 0.3], [2.0, 2.0, -1.0, 4.0]], np.float32)
LEGAL = np.array([[True, False, True, True], [False, True, True, False], [False] * 4])


def test_masked_max_and_argmax_match_numpy():
    """Over the legal actions only; a row with none legal counts all as legal."""
    ref_arg = [
        int(np.argmax(np.where(m if m.any() else True, q, -np.inf)))
        for q, m in zip(Q, LEGAL, strict=True)
    ]
    ref_max = [float(q[a]) for q, a in zip(Q, ref_arg, strict=True)]
    assert ref_arg == [2, 2, 3]
    np.testing.assert_array_equal(legal_lib.masked_argmax(Q, LEGAL), ref_arg)
    np.testing.assert_array_equal(legal_lib.masked_max(Q, LEGAL), ref_max)
    with pytest.raises(ValueError, match="differs"):
        legal_lib.mask_values(Q, LEGAL[:, :3])


def test_random_legal_is_uniform_over_the_legal_actions():
    draws = np.asarray(jax.vmap(lambda k: legal_lib.random_legal(k, LEGAL))(
        jax.random.split(jax.random.key(0), 3000)
    ))  # fmt: skip
    for row, mask in enumerate(LEGAL):
        allowed = np.flatnonzero(mask) if mask.any() else np.arange(4)
        counts = np.bincount(draws[:, row], minlength=4)
        assert set(np.flatnonzero(counts)) == set(allowed)
        np.testing.assert_allclose(counts[allowed] / 3000, 1 / len(allowed), atol=0.04)


def test_epsilon_greedy_with_a_mask_draws_legal_actions_only():
    """epsilon 1: uniform over the legal ones; epsilon 0: the best legal one."""
    q = jnp.asarray(np.tile(Q[:2], (500, 1)))
    legal = jnp.asarray(np.tile(LEGAL[:2], (500, 1)))
    explore = np.asarray(exploration.epsilon_greedy(jax.random.key(1), q, 1.0, legal))
    assert np.asarray(legal)[np.arange(1000), explore].all()
    assert len(set(explore[0::2])) == 3 and len(set(explore[1::2])) == 2
    greedy = np.asarray(exploration.epsilon_greedy(jax.random.key(1), q, 0.0, legal))
    np.testing.assert_array_equal(greedy, np.tile([2, 2], 500))
    # select_actions: prefill (no params) and greedy evaluation (epsilon 0) too
    network = networks.make_q_network("mlp", (3,), 4, (8,), False)
    obs = jnp.ones((1000, 3))
    params = network.init(jax.random.key(0), obs)
    for p, eps in ((None, 1.0), (params, 0), (params, 0.5)):
        a = np.asarray(
            actor.select_actions(network, 4, p, obs, eps, jax.random.key(2), legal=legal)
        )
        assert np.asarray(legal)[np.arange(1000), a].all()


# ---------------------------------------------------------------- masked targets

B, OBS, A = 5, 3, 4
_rng = np.random.default_rng(0)
OBS_TM1 = _rng.normal(size=(B, OBS)).astype(np.float32)
OBS_T = _rng.normal(size=(B, OBS)).astype(np.float32)
ACTION = np.array([0, 3, 1, 2, 1], np.int32)
REWARD = _rng.normal(size=B).astype(np.float32)
DISCOUNT = np.array([0.9, 0.0, 0.9, 0.9, 0.9], np.float32)


def _mask_without_best(values):
    """Legal masks that exclude each row's unmasked best action (so the mask
    changes every pick), the last row with a single legal action."""
    legal = np.ones((B, A), bool)
    legal[np.arange(B), values.argmax(1)] = False
    legal[-1] = False
    legal[-1, (values[-1].argmax() + 1) % A] = True
    return legal


def _pick(values, legal):
    return np.where(legal, values, -np.inf).argmax(1)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _project(atoms, target_atoms, probs):
    """C51's projection onto ``atoms``, written as in Bellemare et al. (2017), Alg. 1."""
    v_min, v_max = atoms[0], atoms[-1]
    dz = atoms[1] - atoms[0]
    out = np.zeros_like(atoms, dtype=np.float64)
    for z, p in zip(np.clip(target_atoms, v_min, v_max), probs, strict=True):
        b = min(max((z - v_min) / dz, 0.0), len(atoms) - 1.0)
        lo, hi = int(np.floor(b)), int(np.ceil(b))
        if lo == hi:
            out[lo] += p
        else:
            out[lo] += p * (hi - b)
            out[hi] += p * (b - lo)
    return out


def _setup(head=None):
    network = networks.make_q_network("mlp", (OBS,), A, (8,), False, head=head)
    params = network.init(jax.random.key(0), OBS_TM1)
    target_params = network.init(jax.random.key(1), OBS_TM1)
    return network, params, target_params


@pytest.mark.parametrize("double_q", [True, False])
def test_masked_dqn_target_matches_numpy(double_q):
    """TD errors of (Double) DQN with ``next_legal``: the next action is the best
    legal one of the online (Double) or target (DQN) network; the target network
    evaluates it. The unmasked objective is unchanged by the field's absence."""
    network, params, target_params = _setup()
    q_tm1 = np.asarray(network.apply(params, OBS_TM1))
    q_t_online = np.asarray(network.apply(params, OBS_T))
    q_t_target = np.asarray(network.apply(target_params, OBS_T))
    selector = q_t_online if double_q else q_t_target
    legal = _mask_without_best(selector)
    a_t = _pick(selector, legal)
    td = REWARD + DISCOUNT * q_t_target[np.arange(B), a_t] - q_tm1[np.arange(B), ACTION]

    objective = objectives.DQN(double_q=double_q)
    batch = Transition(OBS_TM1, ACTION, REWARD, OBS_T, DISCOUNT == 0, jnp.asarray(legal))
    terms = objective(network, params, target_params, batch, jnp.asarray(DISCOUNT), None)
    np.testing.assert_allclose(terms.priority, np.abs(td), rtol=1e-5, atol=1e-6)

    unmasked = objective(network, params, target_params, batch._replace(next_legal=None),
                         jnp.asarray(DISCOUNT), None)  # fmt: skip
    a_free = selector.argmax(1)
    td_free = REWARD + DISCOUNT * q_t_target[np.arange(B), a_free] - q_tm1[np.arange(B), ACTION]
    np.testing.assert_allclose(unmasked.priority, np.abs(td_free), rtol=1e-5, atol=1e-6)
    assert not np.allclose(td[DISCOUNT > 0], td_free[DISCOUNT > 0])


@pytest.mark.parametrize("double_q", [True, False])
def test_masked_c51_target_matches_numpy(double_q):
    """C51's cross-entropy with ``next_legal``: the next action is the best legal
    one by expected value (online network for Double, target network otherwise);
    the target network's distribution of it, shifted, is projected (NumPy)."""
    head = networks.Head("c51", num_atoms=7, v_min=-2.0, v_max=2.0)
    network, params, target_params = _setup(head)
    atoms = np.linspace(-2.0, 2.0, 7)
    logits_tm1 = np.asarray(network.apply(params, OBS_TM1), np.float64)  # [B, A, K]
    probs_t_online = _softmax(np.asarray(network.apply(params, OBS_T), np.float64))
    probs_t_target = _softmax(np.asarray(network.apply(target_params, OBS_T), np.float64))
    selector = (probs_t_online if double_q else probs_t_target) @ atoms  # [B, A]
    legal = _mask_without_best(selector)
    a_t = _pick(selector, legal)
    log_p = np.log(_softmax(logits_tm1))
    loss = [
        -np.sum(_project(atoms, REWARD[i] + DISCOUNT[i] * atoms, probs_t_target[i, a_t[i]])
                * log_p[i, ACTION[i]])
        for i in range(B)
    ]  # fmt: skip

    objective = objectives.c51(double_q=double_q)
    batch = Transition(OBS_TM1, ACTION, REWARD, OBS_T, DISCOUNT == 0, jnp.asarray(legal))
    terms = objective(network, params, target_params, batch, jnp.asarray(DISCOUNT), None)
    np.testing.assert_allclose(terms.loss, loss, rtol=1e-4)


def test_masked_quantile_target_picks_legal_actions():
    """QR-DQN with a mask equals QR-DQN whose selector is the masked mean."""
    head = networks.Head("qr", num_quantiles=5)
    network, params, target_params = _setup(head)
    dist_t = np.asarray(network.apply(target_params, OBS_T))  # [B, N, A]
    selector = dist_t.mean(1)
    legal = _mask_without_best(selector)
    a_t = _pick(selector, legal)
    objective = objectives.qr(double_q=False, kappa=1.0)
    batch = Transition(OBS_TM1, ACTION, REWARD, OBS_T, DISCOUNT == 0, jnp.asarray(legal))
    terms = objective(network, params, target_params, batch, jnp.asarray(DISCOUNT), None)
    dist_tm1 = np.asarray(network.apply(params, OBS_TM1))
    taus = (np.arange(5) + 0.5) / 5
    ref = []
    for i in range(B):
        target = REWARD[i] + DISCOUNT[i] * dist_t[i, :, a_t[i]]
        u = target[None, :] - dist_tm1[i, :, ACTION[i]][:, None]
        huber = np.where(np.abs(u) <= 1, 0.5 * u**2, np.abs(u) - 0.5)
        ref.append(np.sum(np.mean(np.abs(taus[:, None] - (u < 0)) * huber, axis=1)))
    np.testing.assert_allclose(terms.loss, ref, rtol=1e-4, atol=1e-6)


def test_munchausen_refuses_a_mask():
    network, params, target_params = _setup()
    objective = objectives.munchausen()
    batch = Transition(OBS_TM1, ACTION, REWARD, OBS_T, DISCOUNT == 0, jnp.ones((B, A), bool))
    with pytest.raises(ValueError, match="legal-action mask"):
        objective(network, params, target_params, batch, jnp.asarray(DISCOUNT), None)
