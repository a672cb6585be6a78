import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqnx import replay
from dqnx.types import Transition


def item(obs_dtype=jnp.bool_):
    return Transition(
        obs=jnp.zeros((10, 10, 4), obs_dtype),
        action=jnp.int32(0),
        reward=jnp.float32(0),
        next_obs=jnp.zeros((10, 10, 4), obs_dtype),
        terminated=jnp.bool_(False),
    )


def numbered(start, n):
    """n items whose every leaf encodes its sequence number."""
    ids = jnp.arange(start, start + n)
    return {"id": ids.astype(jnp.int32), "x": ids.astype(jnp.float32)[:, None] * jnp.ones((1, 3))}


def test_dtype_kept_and_shapes():
    buf = replay.uniform_replay(100)
    state = buf.init(item())
    assert state.data.obs.dtype == jnp.bool_ and state.data.obs.shape == (100, 10, 10, 4)
    assert state.data.action.dtype == jnp.int32
    assert state.data.reward.dtype == jnp.float32
    batch = jax.tree.map(lambda x: jnp.stack([x] * 5), item())
    state = buf.add(state, batch)
    assert state.data.obs.dtype == jnp.bool_
    assert int(state.size) == 5 and int(state.pos) == 5


@pytest.mark.parametrize("capacity,n", [(10, 3), (12, 4), (7, 7), (10, 1)])
@pytest.mark.parametrize("declare_size", [False, True])
def test_wraparound_keeps_newest(capacity, n, declare_size):
    buf = replay.uniform_replay(capacity, add_batch_size=n if declare_size else None)
    state = buf.init({"id": jnp.int32(0), "x": jnp.zeros(3)})
    add = jax.jit(buf.add)
    total = 0
    for _ in range(2 * capacity // n + 3):
        state = add(state, numbered(total, n))
        total += n
    ids = np.asarray(state.data["id"])
    expected = np.arange(total - capacity, total)
    # slot of item k is k % capacity: the buffer holds exactly the newest `capacity` items
    np.testing.assert_array_equal(np.sort(ids), expected)
    np.testing.assert_array_equal(ids[expected % capacity], expected)
    np.testing.assert_array_equal(np.asarray(state.data["x"])[:, 0], ids.astype(np.float32))
    assert int(state.size) == capacity and int(state.pos) == total % capacity


def test_mixed_add_sizes_wrap_correctly():
    buf = replay.uniform_replay(8)
    state = buf.init({"id": jnp.int32(0), "x": jnp.zeros(3)})
    total = 0
    for n in [4, 3, 4, 4, 1, 2]:  # misaligns pos for the aligned fast path
        state = buf.add(state, numbered(total, n))
        total += n
    ids = np.asarray(state.data["id"])
    expected = np.arange(total - 8, total)
    np.testing.assert_array_equal(ids[expected % 8], expected)


def test_never_samples_unwritten_slot():
    buf = replay.uniform_replay(1000)
    state = buf.add(buf.init({"id": jnp.int32(-1), "x": jnp.zeros(3)}), numbered(0, 30))
    sample = jax.jit(buf.sample, static_argnums=2)
    for k in range(20):
        batch, idx = sample(state, jax.random.key(k), 256)
        assert (np.asarray(idx) < 30).all()
        assert (np.asarray(batch["id"]) >= 0).all()
        np.testing.assert_array_equal(np.asarray(batch["id"]), np.asarray(idx))


def test_sampling_is_uniform():
    n = 50
    buf = replay.uniform_replay(64)
    state = buf.add(buf.init({"id": jnp.int32(0), "x": jnp.zeros(3)}), numbered(0, n))
    _, idx = buf.sample(state, jax.random.key(0), 200_000)
    counts = np.bincount(np.asarray(idx), minlength=64)
    assert counts[n:].sum() == 0
    expected = 200_000 / n
    chi2 = ((counts[:n] - expected) ** 2 / expected).sum()
    # chi-square with 49 dof: the 99.9% quantile is about 85.4
    assert chi2 < 85.4, chi2


def test_seed_vmap_shares_position():
    buf = replay.uniform_replay(6)
    axes = replay.REPLAY_SEED_AXES
    state = jax.vmap(buf.init, out_axes=axes)(
        {"id": jnp.zeros((3,), jnp.int32), "x": jnp.zeros((3, 3))}
    )
    assert state.data["id"].shape == (3, 6) and state.pos.shape == ()
    items = jax.vmap(lambda s: jax.tree.map(lambda x: x + 100 * s, numbered(0, 4)))(jnp.arange(3))
    add = jax.vmap(buf.add, in_axes=(axes, 0), out_axes=axes)
    state = add(add(state, items), items)
    assert int(state.pos) == 2 and int(state.size) == 6
    ids = np.asarray(state.data["id"])
    for s in range(3):
        np.testing.assert_array_equal(ids[s], 100 * s + np.array([2, 3, 2, 3, 0, 1]))


def test_declared_add_size_is_enforced():
    buf = replay.uniform_replay(8, add_batch_size=4)
    with pytest.raises(ValueError, match="adds 4 items"):
        buf.add(buf.init({"id": jnp.int32(0), "x": jnp.zeros(3)}), numbered(0, 3))


def test_rejects_oversized_add():
    buf = replay.uniform_replay(4)
    with pytest.raises(ValueError, match="capacity 4"):
        buf.add(buf.init({"id": jnp.int32(0), "x": jnp.zeros(3)}), numbered(0, 5))
