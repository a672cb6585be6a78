import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dqnx import actor, envs, learner, networks, objectives
from dqnx.types import Transition


class Linear(nn.Module):
    """Q(s) = s @ w: Q-values that are easy to compute by hand."""

    @nn.compact
    def __call__(self, x):
        return x @ self.param("w", nn.initializers.zeros, (2, 2))


W_ONLINE = jnp.array([[1.0, 2.0], [3.0, 4.0]])
W_TARGET = jnp.array([[2.0, 0.0], [0.0, 1.0]])

# Row 0 ends in a terminal state: no bootstrap.
# Row 1 was cut by the time limit: not terminal, so it bootstraps from the
# true final observation [1, 1]:
#   Q_target([1,1]) = [2, 1];  Q_online([1,1]) = [4, 6] -> Double DQN picks action 1.
BATCH = Transition(
    obs=jnp.array([[1.0, 0.0], [0.0, 1.0]]),
    action=jnp.array([1, 0], jnp.int32),
    reward=jnp.array([1.0, 0.5]),
    next_obs=jnp.array([[0.0, 1.0], [1.0, 1.0]]),
    terminated=jnp.array([True, False]),
)


def make_state(learn):
    state = learn.init(jax.random.key(0), BATCH.obs)
    return state._replace(
        params={"params": {"w": W_ONLINE}}, target_params={"params": {"w": W_TARGET}}
    )


@pytest.mark.parametrize(
    "double_q,expected_td",
    [
        # vanilla: row 0: 1 - Q(s)[1] = 1 - 2 = -1;  row 1: 0.5 + 0.9 * max(2, 1) - 3 = -0.7
        (False, [-1.0, -0.7]),
        # double:  row 0: -1;                        row 1: 0.5 + 0.9 * Q_target[1] - 3 = -1.6
        (True, [-1.0, -1.6]),
    ],
)
def test_loss_on_hand_built_transitions(double_q, expected_td):
    learn = learner.make_learner(
        Linear(), optax.sgd(0.0), objectives.DQN(double_q, "mse"), gamma=0.9
    )
    _, metrics = jax.jit(learn.update)(make_state(learn), BATCH)
    np.testing.assert_allclose(metrics["loss"], np.mean(np.square(expected_td)), rtol=1e-6)
    np.testing.assert_allclose(metrics["td_abs"], np.mean(np.abs(expected_td)), rtol=1e-6)


def test_gradient_step_matches_numpy():
    lr = 0.1
    learn = learner.make_learner(
        Linear(), optax.sgd(lr), objectives.double_dqn(loss="mse"), gamma=0.9
    )
    state, _ = learn.update(make_state(learn), BATCH)
    # loss = mean(td^2), td = target - Q(s)[a]; dL/dw[:, a] = -2/B * td * s
    td = np.array([-1.0, -1.6])
    grad = np.zeros((2, 2))
    for i in range(2):
        grad[:, int(BATCH.action[i])] += -2 / 2 * td[i] * np.asarray(BATCH.obs[i])
    np.testing.assert_allclose(state.params["params"]["w"], W_ONLINE - lr * grad, rtol=1e-6)


def test_huber_option():
    learn = learner.make_learner(
        Linear(), optax.sgd(0.0), objectives.double_dqn(huber_delta=1.0), gamma=0.9
    )
    _, metrics = learn.update(make_state(learn), BATCH)
    # |td| = [1.0, 1.6]: 0.5 * 1^2 = 0.5 and 1.6 - 0.5 = 1.1
    np.testing.assert_allclose(metrics["loss"], (0.5 + 1.1) / 2, rtol=1e-6)


def test_hard_target_refresh_period():
    learn = learner.make_learner(
        Linear(), optax.sgd(0.1), objectives.double_dqn(), gamma=0.9, target_update_period=3
    )
    state = make_state(learn)
    update = jax.jit(learn.update)
    for i in range(1, 7):
        state, _ = update(state, BATCH)
        w, wt = state.params["params"]["w"], state.target_params["params"]["w"]
        if i % 3 == 0:
            np.testing.assert_array_equal(wt, w)
        else:
            assert not np.allclose(wt, w)
        if i < 3:
            np.testing.assert_array_equal(wt, W_TARGET)


def test_polyak_target():
    learn = learner.make_learner(
        Linear(), optax.sgd(0.1), objectives.double_dqn(), gamma=0.9, tau=0.25
    )
    state, _ = learn.update(make_state(learn), BATCH)
    w = state.params["params"]["w"]
    np.testing.assert_allclose(
        state.target_params["params"]["w"], 0.25 * w + 0.75 * W_TARGET, rtol=1e-6
    )


def test_actor_stores_true_final_observation():
    env = envs.make("CartPole-v1", max_steps_in_episode=3)
    act = actor.make_actor(env, Linear(), num_envs=2)
    state = act.init(jax.random.key(0))
    state, tr, stats = jax.jit(act.rollout, static_argnums=3)(None, state, 1.0, 4)
    # time-major [T * N]: step t of env i is row t * 2 + i
    obs = np.asarray(tr.obs).reshape(4, 2, 4)
    next_obs = np.asarray(tr.next_obs).reshape(4, 2, 4)
    terminated = np.asarray(tr.terminated).reshape(4, 2)
    np.testing.assert_array_equal(next_obs[:2], obs[1:3])  # within the episode
    assert not terminated[2].any()  # step 3 is a truncation, never a termination
    assert not np.allclose(next_obs[2], obs[3])  # final obs kept, then reset
    assert int(stats.count) == 2 and float(stats.return_sum) == 6.0


def test_annealed_learning_rate_reaches_zero():
    opt = learner.make_optimizer(1.0, anneal_steps=4)
    params = {"w": jnp.zeros(())}
    state = opt.init(params)
    sizes = []
    for _ in range(5):
        updates, state = opt.update({"w": jnp.ones(())}, state, params)
        sizes.append(abs(float(updates["w"])))
    # Adam's first steps have magnitude ~lr; lr goes 1, 0.75, 0.5, 0.25, 0
    np.testing.assert_allclose(sizes, [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-4)


def test_weighted_update_with_nstep_discount():
    """n-step batches bring their own discount; weights scale each example's loss."""
    from dqnx.nstep import NStepTransition

    # Row 0: a 3-step return ending in a terminal state (discount 0); row 1: a full
    # window, discount 0.9^3 = 0.729. Double DQN picks action 1 at [1, 1]; Q_target = 1.
    batch = NStepTransition(
        obs=BATCH.obs,
        action=BATCH.action,
        reward=jnp.array([2.0, 1.5]),
        next_obs=BATCH.next_obs,
        terminated=jnp.array([True, False]),
        discount=jnp.array([0.0, 0.729]),
    )
    learn = learner.make_learner(
        Linear(), optax.sgd(0.0), objectives.double_dqn(loss="mse"), gamma=0.9
    )
    weights = jnp.array([0.25, 1.0])
    _, metrics, priority = jax.jit(learn.update_weighted)(make_state(learn), batch, weights)
    expected_td = np.array([2.0 - 2.0, 1.5 + 0.729 * 1.0 - 3.0])
    np.testing.assert_allclose(priority, np.abs(expected_td), rtol=1e-6)  # priorities: |TD|
    np.testing.assert_allclose(
        metrics["loss"], np.mean(np.array([0.25, 1.0]) * expected_td**2), rtol=1e-6
    )
    # Unit weights are the plain update.
    _, plain = jax.jit(learn.update)(make_state(learn), batch)
    _, unit, _ = jax.jit(learn.update_weighted)(make_state(learn), batch, jnp.ones(2))
    np.testing.assert_allclose(plain["loss"], unit["loss"], rtol=1e-6)


def test_refresh_target_copies_on_the_period_and_averages_with_tau():
    online, target = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([-1.0, 0.0])}
    for n in range(1, 7):
        hard = learner.refresh_target(online, target, jnp.int32(n), period=3)
        np.testing.assert_array_equal(hard["w"], [1.0, 2.0] if n % 3 == 0 else [-1.0, 0.0])
    soft = learner.refresh_target(online, target, jnp.int32(4), period=2, tau=0.1)
    np.testing.assert_allclose(soft["w"], [0.1 * 1 + 0.9 * -1, 0.1 * 2], rtol=1e-6)
    kept = learner.refresh_target(online, target, jnp.int32(5), period=2, tau=0.1)
    np.testing.assert_array_equal(kept["w"], target["w"])


@pytest.mark.parametrize("objective", [objectives.c51(), objectives.qr(), objectives.iqn()])
def test_an_objective_for_another_head_is_refused(objective):
    """A network without a distributional head (Q-values) and a C51/QR/IQN
    objective: an error naming both heads, never a silent DQN."""
    with pytest.raises(ValueError, match=f"reads a '{objective.kind}' head.*'dqn' head"):
        learner.make_learner(Linear(), optax.sgd(0.1), objective, gamma=0.9)
    network = networks.make_q_network("mlp", (2,), 2, (4,), head=networks.Head("c51"))
    with pytest.raises(ValueError, match="'dqn' head, but the network ends in a 'c51'"):
        learner.make_learner(network, optax.sgd(0.1), objectives.double_dqn(), gamma=0.9)
