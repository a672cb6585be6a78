import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqnx import prioritized
from dqnx.types import Transition

try:
    from scipy.stats import chi2 as _chi2

    CHI2_7DOF_999 = float(_chi2.ppf(0.999, 7))
except ImportError:  # chi-square with 7 dof: the 99.9% quantile is 24.32
    CHI2_7DOF_999 = 24.32


def numbered(start, n):
    """n items whose every leaf encodes its sequence number."""
    ids = jnp.arange(start, start + n)
    return {"id": ids.astype(jnp.int32), "x": ids.astype(jnp.float32)[:, None] * jnp.ones((1, 3))}


def example():
    return {"id": jnp.int32(-1), "x": jnp.zeros(3)}


def filled(capacity, n, **kwargs):
    buf = prioritized.prioritized_replay(capacity, **kwargs)
    return buf, buf.add(buf.init(example()), numbered(0, n))


def sample_many(buf, state, num_batches, batch_size, beta=0.0):
    """Indices [num_batches * batch_size] and weights of independent batches."""
    keys = jax.random.split(jax.random.key(0), num_batches)
    _, idx, w = jax.jit(jax.vmap(buf.sample, in_axes=(None, 0, None, None)), static_argnums=2)(
        state, keys, batch_size, beta
    )
    return np.asarray(idx).ravel(), np.asarray(w)


def assert_tree_consistent(tree):
    tree = np.asarray(tree)
    leaves = len(tree) // 2
    for k in range(1, leaves):
        assert tree[k] == tree[2 * k] + tree[2 * k + 1], k


def test_sampling_proportions_chi_square():
    buf, state = filled(8, 8, priority_exponent=1.0, eps=0.0)
    state = buf.update_priorities(state, jnp.arange(8), jnp.arange(1.0, 9.0))
    idx, _ = sample_many(buf, state, 25_000, 4)
    counts = np.bincount(idx, minlength=8)
    expected = len(idx) * np.arange(1, 9) / 36
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < CHI2_7DOF_999, (chi2, counts)
    np.testing.assert_allclose(counts / len(idx), np.arange(1, 9) / 36, atol=0.005)


def test_priority_exponent_and_eps_applied():
    buf, state = filled(8, 5, priority_exponent=0.5, eps=0.25)
    td = jnp.array([-3.75, 0.0, 2.0, 8.75, 0.0])
    state = buf.update_priorities(state, jnp.arange(5), td)
    stored = np.asarray(prioritized.priorities(state, 8))
    np.testing.assert_allclose(stored, [2.0, 0.5, 1.5, 3.0, 0.5, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(float(state.max_priority), 9.0)


def test_importance_weights_match_numpy():
    alpha, beta, n = 0.6, 0.4, 20
    buf, state = filled(32, n, priority_exponent=alpha)
    td = np.random.default_rng(0).exponential(size=n).astype(np.float32)
    state = buf.update_priorities(state, jnp.arange(n), td)
    batch, idx, w = buf.sample(state, jax.random.key(3), 16, beta)
    idx = np.asarray(idx)
    p = (td.astype(np.float64) + 1e-6) ** alpha
    prob = p / p.sum()
    w_ref = (n * prob[idx]) ** -beta
    np.testing.assert_allclose(np.asarray(w), w_ref / w_ref.max(), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(batch["id"]), idx)
    _, _, w0 = buf.sample(state, jax.random.key(3), 16, 0.0)
    np.testing.assert_array_equal(np.asarray(w0), np.ones(16))


def test_new_items_get_max_priority():
    buf, state = filled(16, 4, priority_exponent=0.5, eps=0.0)
    np.testing.assert_allclose(prioritized.priorities(state, 16)[:4], 1.0)
    state = buf.update_priorities(state, jnp.array([0, 1]), jnp.array([9.0, 0.25]))
    state = buf.update_priorities(state, jnp.array([2]), jnp.array([4.0]))
    state = buf.add(state, numbered(4, 3))
    np.testing.assert_allclose(
        prioritized.priorities(state, 16)[:8], [3.0, 0.5, 2.0, 1.0, 3.0, 3.0, 3.0, 0.0]
    )
    state = buf.add(state, numbered(7, 2), priorities=jnp.array([16.0, 1.0]))
    np.testing.assert_allclose(prioritized.priorities(state, 16)[7:10], [4.0, 1.0, 0.0])
    assert float(state.max_priority) == 16.0
    assert_tree_consistent(state.tree)


def test_overwritten_slots_get_max_priority():
    buf, state = filled(5, 5, priority_exponent=1.0, eps=0.0)
    state = buf.update_priorities(state, jnp.arange(5), jnp.array([0.5, 0.5, 7.0, 0.5, 0.5]))
    state = buf.add(state, numbered(5, 2))  # wraps onto slots 0 and 1
    np.testing.assert_allclose(prioritized.priorities(state, 5), [7.0, 7.0, 7.0, 0.5, 0.5])
    np.testing.assert_array_equal(np.asarray(state.data["id"]), [5, 6, 2, 3, 4])


def test_update_changes_proportions():
    buf, state = filled(10, 10, priority_exponent=1.0, eps=0.0)
    idx, _ = sample_many(buf, state, 2000, 10)
    np.testing.assert_allclose(np.bincount(idx, minlength=10) / len(idx), 0.1, atol=0.01)
    state = buf.update_priorities(state, jnp.array([3]), jnp.array([10.0]))
    idx, w = sample_many(buf, state, 2000, 10)
    freq = np.bincount(idx, minlength=10) / len(idx)
    expected = np.where(np.arange(10) == 3, 10.0, 1.0) / 19.0
    np.testing.assert_allclose(freq, expected, atol=0.01)
    np.testing.assert_array_equal(w, 1.0)


def test_duplicate_indices_largest_wins():
    buf, state = filled(8, 8, priority_exponent=1.0, eps=0.0)
    orders = [[1.0, 5.0, 3.0], [5.0, 3.0, 1.0], [3.0, 1.0, 5.0]]
    trees = []
    for td in orders:
        s = buf.update_priorities(state, jnp.array([2, 2, 2]), jnp.array(td))
        trees.append(np.asarray(s.tree))
        assert_tree_consistent(s.tree)
    for tree in trees[1:]:
        np.testing.assert_array_equal(tree, trees[0])
    np.testing.assert_allclose(trees[0][8:], [1, 1, 5, 1, 1, 1, 1, 1])


@pytest.mark.parametrize("capacity", [1, 7, 100, 1000])
def test_never_samples_unwritten_slot(capacity):
    n = min(30, capacity)
    buf, state = filled(capacity, n)
    rng = np.random.default_rng(1)
    state = buf.update_priorities(
        state, jnp.asarray(rng.integers(0, n, 64)), jnp.asarray(rng.exponential(size=64) * 1e3)
    )
    idx, w = sample_many(buf, state, 200, 64, beta=1.0)
    assert (idx < n).all() and (idx >= 0).all()
    assert ((w > 0) & (w <= 1)).all()
    assert_tree_consistent(state.tree)


def test_tree_stays_consistent_and_root_is_total():
    capacity = 50
    buf = prioritized.prioritized_replay(capacity, add_batch_size=5)
    state = buf.init(example())
    add, update = jax.jit(buf.add), jax.jit(buf.update_priorities)
    rng = np.random.default_rng(2)
    for i in range(30):
        state = add(state, numbered(5 * i, 5))
        size = int(state.size)
        state = update(
            state,
            jnp.asarray(rng.integers(0, size, 16), jnp.int32),
            jnp.asarray(rng.exponential(size=16), jnp.float32),
        )
    assert_tree_consistent(state.tree)
    leaves = prioritized.priorities(state, capacity)
    np.testing.assert_allclose(float(state.tree[1]), float(leaves.sum()), rtol=1e-5)
    assert (np.asarray(state.tree)[64 + capacity :] == 0).all()


def test_dtype_kept():
    buf = prioritized.prioritized_replay(16)
    item = Transition(
        obs=jnp.zeros((10, 10, 4), jnp.bool_),
        action=jnp.int32(0),
        reward=jnp.float32(0),
        next_obs=jnp.zeros((10, 10, 4), jnp.uint8),
        terminated=jnp.bool_(False),
    )
    state = buf.init(item)
    batch = jax.tree.map(lambda x: jnp.stack([x] * 5), item)
    state = buf.add(state, batch)
    items, _, weights = buf.sample(state, jax.random.key(0), 4, 0.5)
    for stored in (state.data, items):
        assert stored.obs.dtype == jnp.bool_ and stored.next_obs.dtype == jnp.uint8
        assert stored.action.dtype == jnp.int32 and stored.terminated.dtype == jnp.bool_
    assert items.obs.shape == (4, 10, 10, 4)
    assert state.tree.dtype == jnp.float32 and weights.dtype == jnp.float32


def test_vmap_over_seeds_with_jit_matches_single_seed():
    num_seeds, capacity = 3, 12
    buf = prioritized.prioritized_replay(capacity, add_batch_size=4, priority_exponent=1.0)
    axes = prioritized.PRIORITIZED_SEED_AXES
    state = jax.vmap(buf.init, out_axes=axes)(
        {"id": jnp.zeros((num_seeds,), jnp.int32), "x": jnp.zeros((num_seeds, 3))}
    )
    assert state.tree.shape == (num_seeds, 32) and state.pos.shape == ()
    add = jax.jit(jax.vmap(buf.add, in_axes=(axes, 0), out_axes=axes))
    update = jax.jit(jax.vmap(buf.update_priorities, in_axes=(axes, 0, 0), out_axes=axes))
    sample = jax.jit(jax.vmap(buf.sample, in_axes=(axes, 0, None, None)), static_argnums=2)
    items = jax.vmap(lambda s: jax.tree.map(lambda x: x + 100 * s, numbered(0, 4)))(
        jnp.arange(num_seeds)
    )
    state = add(add(state, items), items)
    indices = jnp.array([[0, 1, 1], [2, 3, 4], [5, 5, 5]], jnp.int32)
    td = jnp.array([[50.0, 1.0, 2.0], [30.0, 3.0, 40.0], [1.0, 20.0, 5.0]])
    state = update(state, indices, td)
    keys = jax.random.split(jax.random.key(7), num_seeds)
    batch, idx, w = sample(state, keys, 64, 0.5)
    assert idx.shape == (num_seeds, 64) and w.shape == (num_seeds, 64)
    for s in range(num_seeds):
        one = jax.tree.map(lambda x, s=s: x[s], state.data)
        single = prioritized.PrioritizedState(
            one, state.pos, state.size, state.tree[s], state.max_priority[s]
        )
        b1, i1, w1 = buf.sample(single, keys[s], 64, 0.5)
        np.testing.assert_array_equal(np.asarray(idx[s]), np.asarray(i1))
        np.testing.assert_allclose(np.asarray(w[s]), np.asarray(w1), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(batch["id"][s]), np.asarray(b1["id"]))
        assert_tree_consistent(state.tree[s])
    np.testing.assert_allclose(np.asarray(state.max_priority), [50.0, 40.0, 20.0], rtol=1e-6)
    # the seeds' priorities differ, so do their most sampled slots
    top = [np.bincount(np.asarray(idx[s]), minlength=capacity).argmax() for s in range(3)]
    assert top == [0, 4, 5]


def test_sample_does_not_recompile():
    buf, state = filled(64, 20)
    sample = jax.jit(buf.sample, static_argnums=2)
    sample(state, jax.random.key(0), 8, 0.4)
    size = sample._cache_size()
    sample(state, jax.random.key(1), 8, 0.7)
    sample(buf.update_priorities(state, jnp.arange(3), jnp.ones(3)), jax.random.key(2), 8, 1.0)
    assert sample._cache_size() == size


def numpy_sum_tree(leaf_values):
    """Reference: a sum tree built bottom-up in NumPy from all leaf values."""
    leaves = len(leaf_values)
    tree = np.zeros(2 * leaves, np.float32)
    tree[leaves:] = leaf_values
    for k in range(leaves - 1, 0, -1):
        tree[k] = tree[2 * k] + tree[2 * k + 1]
    return tree


@pytest.mark.parametrize("leaves", [1, 2, 8, 64])
def test_contiguous_leaves_match_numpy_and_scatter_path(leaves):
    rng = np.random.default_rng(leaves)
    base = rng.exponential(size=leaves).astype(np.float32)
    tree = jnp.asarray(numpy_sum_tree(base))
    contiguous = jax.jit(prioritized.set_contiguous_leaves)
    scatter = jax.jit(prioritized.set_leaves)
    runs = {(0, leaves), (leaves - 1, 1), (0, 1)}
    runs |= {
        (int(s), int(k))
        for s in rng.integers(0, leaves, 12)
        for k in [rng.integers(1, leaves - s + 1)]
    }
    for start, k in sorted(runs):
        values = rng.exponential(size=k).astype(np.float32)
        expected_leaves = base.copy()
        expected_leaves[start : start + k] = values
        got = np.asarray(contiguous(tree, jnp.int32(start), jnp.asarray(values)))
        np.testing.assert_array_equal(
            got, numpy_sum_tree(expected_leaves), err_msg=f"{start=} {k=}"
        )
        slots = jnp.arange(start, start + k, dtype=jnp.int32)
        np.testing.assert_array_equal(got, np.asarray(scatter(tree, slots, jnp.asarray(values))))
