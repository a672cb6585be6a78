"""Frame-deduplicated replay against a NumPy environment stacker and n-step reference.

Scripted streams of small frames (each frame encodes group, env, episode and
step, so a wrong frame shows), episodes ending by termination and truncation,
and one real ALE stream: every transition the buffer holds or samples is
compared byte for byte with the stacks the environment produced.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqnx import frame_replay
from dqnx.frame_replay import FrameStep

S = 4  # frames per observation
HW = (6, 6)


def scripted_frame(g, e, episode, step, final=False):
    """A 6x6 uint8 frame naming its (group, env, episode, step), never all zeros."""
    f = (np.arange(36) * 37 + 101 * g + 53 * e + 17 * episode + 7 * step + 3 * final) % 250 + 1
    f[:5] = [g + 1, e + 1, episode % 250 + 1, step % 250 + 1, 2 if final else 1]
    return f.astype(np.uint8).reshape(HW)


class Stream:
    """What the N environments of one group showed, step by step (NumPy).

    ``obs[u]`` and ``next_obs[u]`` ([N, S, H, W]) are the stacks before and after
    step ``u`` (``next_obs`` the true one, with the final frame, at an episode
    end), as an ALE-style stacker builds them: zero-filled at each reset.
    """

    def __init__(self, obs, next_obs, action, reward, terminated, truncated, first):
        self.obs, self.next_obs = obs, next_obs
        self.action, self.reward = action, reward
        self.terminated, self.truncated, self.first = terminated, truncated, first
        self.done = terminated | truncated

    def block(self, u, k):
        """FrameStep of steps ``u .. u + k - 1`` ([k, N] leaves)."""
        s = slice(u, u + k)
        return FrameStep(
            frame=jnp.asarray(self.obs[s, :, -1]),
            action=jnp.asarray(self.action[s]),
            reward=jnp.asarray(self.reward[s]),
            terminated=jnp.asarray(self.terminated[s]),
            truncated=jnp.asarray(self.truncated[s]),
            first=jnp.asarray(self.first[s]),
            final_frame=jnp.asarray(self.next_obs[s, :, -1]),
        )


def scripted_stream(rng, g, num_envs, length, max_len=7, breaks=()):
    """Episodes of 1..max_len steps ending by termination or truncation at random;
    at the steps in ``breaks`` every env is reset without an episode end (a
    stream break, as after a restore)."""
    obs = np.zeros((length, num_envs, S, *HW), np.uint8)
    next_obs = np.zeros_like(obs)
    terminated = np.zeros((length, num_envs), bool)
    truncated, first = np.zeros_like(terminated), np.zeros_like(terminated)
    action = rng.integers(0, 18, (length, num_envs)).astype(np.uint8)
    reward = rng.normal(size=(length, num_envs)).astype(np.float32)
    for e in range(num_envs):
        episode, step, ep_len = 0, 0, rng.integers(1, max_len + 1)
        stack = np.zeros((S, *HW), np.uint8)
        stack[-1] = scripted_frame(g, e, 0, 0)
        for u in range(length):
            if u in breaks and step > 0:
                episode, step, ep_len = episode + 1, 0, rng.integers(1, max_len + 1)
                stack = np.zeros_like(stack)
                stack[-1] = scripted_frame(g, e, episode, 0)
            obs[u, e], first[u, e] = stack, step == 0
            ends = step == ep_len - 1
            newest = scripted_frame(g, e, episode, step + 1, final=ends)
            next_obs[u, e] = np.concatenate([stack[1:], newest[None]])
            if ends:
                terminated[u, e] = rng.random() < 0.5
                truncated[u, e] = not terminated[u, e]
                episode, step, ep_len = episode + 1, 0, rng.integers(1, max_len + 1)
                stack = np.zeros_like(stack)
                stack[-1] = scripted_frame(g, e, episode, 0)
            else:
                stack, step = next_obs[u, e], step + 1
    return Stream(obs, next_obs, action, reward, terminated, truncated, first)


class Reference:
    """NumPy model of the buffer's contents: which steps it holds and what their
    n-step transitions are, from the streams alone."""

    def __init__(self, streams, steps_per_group, final_capacity, n, gamma):
        self.streams, self.T, self.F, self.n = streams, steps_per_group, final_capacity, n
        self.gamma = np.float32(gamma)
        self.written = [0] * len(streams)
        self.final_seq = [np.full(s.done.shape, -1) for s in streams]
        self.num_finals = 0

    def add(self, g, k):
        """Steps written, and their final frames numbered in [K, N] row-major order."""
        u = self.written[g]
        for row in range(u, u + k):
            for e in np.flatnonzero(self.streams[g].done[row]):
                self.final_seq[g][row, e] = self.num_finals
                self.num_finals += 1
        self.written[g] += k

    def step_of(self, g, t):
        """The stream step held at ring row ``t`` of group ``g`` (negative: none)."""
        w = self.written[g]
        return w - 1 - (w % self.T - 1 - t) % self.T

    def transition(self, g, u, e):
        """The expected transition of step ``u`` of env ``e``, or None if invalid
        (``ends``: whether its window stops at an episode end)."""
        st, n = self.streams[g], self.n
        oldest = max(self.written[g] - self.T, 0)
        if not oldest <= u < self.written[g]:
            return None
        for i in range(1, S):  # the frames of obs must still be held
            if st.first[u - i + 1, e]:
                break
            if u - i < oldest:
                return None
        ret, disc = np.float32(0), np.float32(1)
        for j in range(n):
            s = u + j
            ret = np.float32(ret + disc * st.reward[s, e])
            disc = np.float32(disc * self.gamma)
            if st.done[s, e]:
                if self.final_seq[g][s, e] < self.num_finals - self.F:  # evicted
                    return None
                break
            if s + 1 >= self.written[g] or st.first[s + 1, e]:  # not written, or a break
                return None
        return dict(
            ends=st.done[s, e],  # the window stops at an episode end (not a batch field)
            obs=st.obs[u, e],
            action=st.action[u, e],
            reward=ret,
            next_obs=st.next_obs[s, e],
            terminated=st.terminated[s, e],
            discount=np.float32(disc * (1 - st.terminated[s, e])),
        )

    def all_slots(self, num_envs):
        """Expected transition (or None) of every flat slot ``(g T + t) N + e``."""
        out = []
        for g in range(len(self.streams)):
            for t in range(self.T):
                u = self.step_of(g, t)
                for e in range(num_envs):
                    out.append(self.transition(g, u, e) if u >= 0 else None)
        return out


def assert_transitions(batch, rows, wants, where=""):
    """``batch`` rows ``rows`` equal the reference transitions ``wants`` (one per row)."""
    batch = jax.device_get(batch)
    for field in wants[0]:
        if field == "ends":
            continue
        got = getattr(batch, field)[np.asarray(rows)]
        want = np.stack([w[field] for w in wants])
        if field in ("reward", "discount"):
            np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"{field} {where}")
        else:
            bad = np.flatnonzero((got != want).reshape(len(wants), -1).any(axis=1))
            assert not len(bad), f"{field} {where}: rows {np.asarray(rows)[bad]}"


def check_all_slots(fns, state, ref, num_envs, leaf_is_validity=True):
    """Every slot: validity (returned, state's and tree's) as the reference
    says, and a valid one's transition equal to the reference's. Returns the
    expected validity [capacity] and transitions (None where invalid)."""
    capacity = fns.buf.capacity
    expected = ref.all_slots(num_envs)
    want_valid = np.array([x is not None for x in expected])
    batch, valid = fns.lookup(state, jnp.arange(capacity, dtype=jnp.int32))
    np.testing.assert_array_equal(np.asarray(valid), want_valid)
    np.testing.assert_array_equal(np.asarray(state.valid).reshape(-1), want_valid)
    leaves = leaf_values(state, capacity)
    if leaf_is_validity:
        np.testing.assert_array_equal(leaves, want_valid.astype(np.float32))
    else:
        assert ((leaves > 0) == want_valid).all()
    assert batch.obs.shape[:2] == (capacity, S) and batch.obs.dtype == jnp.uint8
    assert batch.action.dtype == jnp.int32 and batch.discount.dtype == jnp.float32
    rows = np.flatnonzero(want_valid)
    if len(rows):
        assert_transitions(batch, rows, [expected[i] for i in rows])
    return want_valid, expected


def leaf_values(state, capacity):
    """The sum tree's leaves over the slots (NumPy)."""
    tree = np.asarray(state.tree)
    return tree[len(tree) // 2 :][:capacity]


def example(num_envs, hw=HW):
    """A FrameStep of ``num_envs`` envs ([N] leaves) for ``init``."""
    return FrameStep(
        frame=jnp.zeros((num_envs, *hw), jnp.uint8),
        action=jnp.zeros((num_envs,), jnp.uint8),
        reward=jnp.zeros((num_envs,), jnp.float32),
        terminated=jnp.zeros((num_envs,), bool),
        truncated=jnp.zeros((num_envs,), bool),
        first=jnp.zeros((num_envs,), bool),
        final_frame=jnp.zeros((num_envs, *hw), jnp.uint8),
    )


class Compiled(NamedTuple):
    """A buffer and its jitted functions (``sample``'s batch size is static)."""

    buf: Any
    init: Any
    add: Any
    lookup: Any
    sample: Any
    update_priorities: Any = None


@functools.cache
def compiled(prioritized=False, **config):
    """One buffer per configuration, compiled once for every test that uses it."""
    factory = frame_replay.prioritized_frame_replay if prioritized else frame_replay.frame_replay
    buf = factory(**config)
    update = jax.jit(buf.update_priorities) if prioritized else None
    return Compiled(
        buf,
        jax.jit(buf.init),
        jax.jit(buf.add),
        jax.jit(buf.lookup),
        jax.jit(buf.sample, static_argnums=2),
        update,
    )


MAIN = dict(num_groups=3, num_envs=2, steps_per_group=16, gamma=0.9, final_capacity=32)
PRIO = dict(
    prioritized=True, num_groups=2, num_envs=2, steps_per_group=16, n_step=3, gamma=0.9,
    block_size=2, priority_exponent=0.5, eps=0.0,
)  # fmt: skip
BATCH = 4096  # stratified: a valid slot's count is within 2 of its expectation


def fill(fns, ref, streams, block, order, check=None):
    """Adds blocks of ``block`` steps to the groups in ``order``; ``check(state)`` after each."""
    state = fns.init(example(streams[0].action.shape[1], streams[0].obs.shape[-2:]))
    for g in order:
        state = fns.add(state, g, streams[g].block(ref.written[g], block))
        ref.add(g, block)
        if check is not None:
            check(state)
    return state


@pytest.mark.parametrize("n,block,block_size", [(1, 2, 2), (3, 3, None)])
def test_every_slot_matches_numpy_stacker_and_nstep(n, block, block_size):
    """3 groups of 2 envs, 16-row rings written in an interleaved order, each
    wrapping ~6 times; n = 1 with aligned blocks (slice writes), n = 3 with
    blocks of 3 (wrapping scatter writes); a stream break in group 1. Every
    slot after every add, then a sampled batch."""
    G, N, T, blocks = 3, 2, 16, 33
    fns = compiled(n_step=n, block_size=block_size, **MAIN)
    rng = np.random.default_rng(n)
    streams = [
        scripted_stream(rng, g, N, block * blocks, breaks=(40,) if g == 1 else ()) for g in range(G)
    ]
    ref = Reference(streams, T, MAIN["final_capacity"], n, MAIN["gamma"])
    order = rng.permutation(np.repeat(np.arange(G), blocks))
    state = fill(fns, ref, streams, block, order, check=lambda s: check_all_slots(fns, s, ref, N))
    want_valid, expected = check_all_slots(fns, state, ref, N)
    assert 0.5 * fns.buf.capacity < want_valid.sum() < fns.buf.capacity
    ends = [x for x in expected if x is not None and x["ends"]]
    assert any(x["terminated"] for x in ends) and any(not x["terminated"] for x in ends)

    batch, slots = fns.sample(state, jax.random.key(0), BATCH)
    slots = np.asarray(slots)
    assert want_valid[slots].all()  # invalid slots never sampled
    counts = np.bincount(slots, minlength=fns.buf.capacity)[want_valid]
    assert np.abs(counts - BATCH / want_valid.sum()).max() < 2.0
    assert_transitions(batch, np.arange(BATCH), [expected[i] for i in slots])


def test_evicted_final_frames_make_transitions_invalid():
    """A side ring of 4 entries (= K N) with episodes of 1..3 steps: most episode
    ends lose their final frame while their step is still held; those
    transitions (and the n-step windows reaching them) are never valid."""
    G, N, T, n, block = 2, 2, 16, 3, 2
    fns = compiled(
        num_groups=G, num_envs=N, steps_per_group=T, n_step=n, gamma=0.5, final_capacity=4,
        block_size=block,
    )  # fmt: skip
    rng = np.random.default_rng(7)
    streams = [scripted_stream(rng, g, N, 60, max_len=3) for g in range(G)]
    ref = Reference(streams, T, 4, n, 0.5)
    state = fill(
        fns, ref, streams, block, [0, 1] * 30, check=lambda s: check_all_slots(fns, s, ref, N)
    )
    # The held, complete windows that are invalid only because a final frame was evicted.
    keep_all = Reference(streams, T, 10**9, n, 0.5)
    keep_all.written, keep_all.final_seq = ref.written, ref.final_seq
    keep_all.num_finals = ref.num_finals
    lost = np.array(
        [
            a is not None and b is None
            for a, b in zip(keep_all.all_slots(N), ref.all_slots(N), strict=True)
        ]
    )
    assert lost.sum() >= 10
    _, slots = fns.sample(state, jax.random.key(1), BATCH)
    assert not lost[np.asarray(slots)].any()
    with pytest.raises(ValueError, match="K \\* 2 <= 4"):
        fns.buf.add(state, 0, streams[0].block(0, 3))


def test_prioritized_follows_priorities_and_excludes_invalid():
    G, N, T, n, block, alpha = 2, 2, 16, 3, 2, PRIO["priority_exponent"]
    fns = compiled(**PRIO)
    capacity = fns.buf.capacity
    rng = np.random.default_rng(3)
    streams = [scripted_stream(rng, g, N, 44) for g in range(G)]
    ref = Reference(streams, T, capacity // 16, n, PRIO["gamma"])
    state = fill(fns, ref, streams, block, [0, 1] * 20)
    want_valid, expected = check_all_slots(fns, state, ref, N)
    # Priorities 1..capacity on every slot, valid or not: the invalid stay at 0.
    td = np.arange(1, capacity + 1, dtype=np.float32)
    state = fns.update_priorities(state, jnp.arange(capacity), jnp.asarray(td))
    leaves = leaf_values(state, capacity)
    np.testing.assert_allclose(leaves, np.where(want_valid, td**alpha, 0), rtol=1e-6)
    assert float(state.max_priority) == capacity

    batch, slots, weights = fns.sample(state, jax.random.key(0), BATCH, 0.4)
    slots, weights = np.asarray(slots), np.asarray(weights)
    assert want_valid[slots].all()
    p = np.where(want_valid, td**alpha, 0)
    freq = np.bincount(slots, minlength=capacity) / BATCH
    np.testing.assert_allclose(freq, p / p.sum(), atol=1.5 / BATCH)
    # Importance weights (N P(i))^-beta normalized by the batch's largest.
    np.testing.assert_allclose(weights, (p[slots] / p[slots].min()) ** -0.4, rtol=1e-5)
    assert_transitions(batch, np.arange(BATCH), [expected[i] for i in slots])

    # Slots that become valid get the largest priority, new occupants of an
    # overwritten slot too; valid slots that stay keep theirs.
    def occupants():
        return np.repeat([ref.step_of(g, t) for g in range(G) for t in range(T)], N)

    before, held = leaves, occupants()
    for _ in range(2):
        state = fns.add(state, 0, streams[0].block(ref.written[0], block))
        ref.add(0, block)
    now_valid, _ = check_all_slots(fns, state, ref, N, leaf_is_validity=False)
    leaves = leaf_values(state, capacity)
    same = occupants() == held
    newly = now_valid & ~(want_valid & same)
    assert (newly & want_valid).any() and (newly & same).any()  # both cases happen
    np.testing.assert_allclose(leaves[newly], capacity**alpha, rtol=1e-6)
    kept = now_valid & want_valid & same
    np.testing.assert_array_equal(leaves[kept], before[kept])
    tree = np.asarray(state.tree)
    nodes = np.arange(1, len(tree) // 2)
    np.testing.assert_allclose(tree[nodes], tree[2 * nodes] + tree[2 * nodes + 1], rtol=1e-6)
    # One compiled add served both groups (the group index is traced).
    assert fns.add._cache_size() == 1


def test_vmap_over_seeds_matches_single_seed_runs():
    """Two seeds with their own streams (episode ends at different steps) add
    to the same groups in lockstep: each seed's state and samples equal a
    single-seed run's."""
    G, N, seeds = 2, 2, 2
    fns = compiled(**PRIO)
    buf, axes = fns.buf, frame_replay.FRAME_REPLAY_SEED_AXES
    per_seed = [
        [scripted_stream(np.random.default_rng(10 + s), g, N, 30) for g in range(G)]
        for s in range(seeds)
    ]
    state = jax.jit(jax.vmap(buf.init, out_axes=axes))(
        jax.tree.map(lambda x: jnp.stack([x] * seeds), example(N))
    )
    add = jax.jit(jax.vmap(buf.add, in_axes=(axes, None, 0), out_axes=axes))
    singles = [fns.init(example(N))] * seeds
    for i, g in enumerate([0, 1, 1, 0] * 4):
        u = 2 * (i // 2)
        blocks = [per_seed[s][g].block(u, 2) for s in range(seeds)]
        stacked = FrameStep(*(np.stack(x) for x in zip(*blocks, strict=True)))
        state = add(state, g, stacked)
        singles = [fns.add(singles[s], g, blocks[s]) for s in range(seeds)]
    assert state.frames.shape == (seeds, G, 16, N, *HW) and state.pos.shape == (G,)
    keys = jax.random.split(jax.random.key(5), seeds)
    sample = jax.jit(jax.vmap(buf.sample, in_axes=(axes, 0, None, None)), static_argnums=2)
    batch, slots, weights = jax.device_get(sample(state, keys, BATCH, 0.5))
    for s in range(seeds):
        for field, want in singles[s]._asdict().items():
            got = np.asarray(getattr(state, field))
            got = got if getattr(axes, field) is None else got[s]
            np.testing.assert_array_equal(got, np.asarray(want), err_msg=field)
        b1, i1, w1 = jax.device_get(fns.sample(singles[s], keys[s], BATCH, 0.5))
        np.testing.assert_array_equal(slots[s], i1)
        np.testing.assert_array_equal(weights[s], w1)
        for field in ("obs", "next_obs", "reward", "discount"):
            np.testing.assert_array_equal(getattr(batch, field)[s], getattr(b1, field))
    assert not np.array_equal(np.asarray(state.valid[0]), np.asarray(state.valid[1]))


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="cannot hold"):
        frame_replay.frame_replay(1, 2, 6, n_step=3)
    with pytest.raises(ValueError, match="must divide"):
        frame_replay.frame_replay(1, 2, 16, block_size=3)
    buf = frame_replay.frame_replay(1, 2, 16, block_size=2, final_capacity=8)
    with pytest.raises(ValueError, match="2 envs per group"):
        buf.init(example(3))
    state = buf.init(example(2))
    block = jax.tree.map(lambda x: jnp.stack([x] * 4), example(2))
    with pytest.raises(ValueError, match="blocks of 2 steps, got 4"):
        buf.add(state, 0, block)
    with pytest.raises(ValueError, match="must be \\[K, 2"):
        buf.add(state, 0, jax.tree.map(lambda x: jnp.stack([x] * 2), example(3)))


def test_add_writes_in_place():
    """With the state donated, ``add`` updates it in place: its temporaries are
    a few bytes a slot, nothing near the frames' size (84x84, compiled only)."""
    big = frame_replay.prioritized_frame_replay(2, 4, 4096, n_step=3, block_size=4)
    shapes = jax.eval_shape(big.init, example(4, (84, 84)))  # 230 MB of frames
    steps = jax.eval_shape(lambda: jax.tree.map(lambda x: jnp.stack([x] * 4), example(4, (84, 84))))
    memory = jax.jit(big.add, donate_argnums=0).lower(shapes, 1, steps).compile().memory_analysis()
    if memory is None:
        pytest.skip("this backend reports no memory analysis")
    assert memory.temp_size_in_bytes < 16 * big.capacity


def test_bytes_per_transition_at_84x84():
    """7,056 bytes a frame: at most 1.1 x 7,056 + 32 bytes per transition, all
    arrays included (side ring at capacity // 16, sum tree, flags)."""
    target = 1.1 * 84 * 84 + 32
    step = FrameStep(
        frame=jnp.zeros((32, 84, 84), jnp.uint8),
        action=jnp.zeros((32,), jnp.uint8),
        reward=jnp.zeros((32,), jnp.float32),
        terminated=jnp.zeros((32,), bool),
        truncated=jnp.zeros((32,), bool),
        first=jnp.zeros((32,), bool),
        final_frame=jnp.zeros((32, 84, 84), jnp.uint8),
    )
    for G, N, T in [(4, 32, 8192), (5, 25, 8000)]:  # 2^20 and 10^6 transitions
        buf = frame_replay.prioritized_frame_replay(G, N, T, n_step=3)
        shapes = jax.eval_shape(buf.init, jax.tree.map(lambda x, n=N: x[:n], step))
        per = frame_replay.bytes_per_transition(shapes)
        assert per <= target, (G, N, T, per)
    small = frame_replay.frame_replay(1, 32, 64)
    assert frame_replay.bytes_per_transition(small.init(step)) <= target


def test_real_ale_pong_stacks_match():
    """Pong, 2 envs, SAME_STEP autoreset, 25-step episodes (truncations):
    every held transition's obs / next_obs equal what ALE returned, the final
    observation included."""
    ale_vector = pytest.importorskip("ale_py.vector_env", reason="ale_py is not installed")
    from gymnasium.vector import AutoresetMode

    N, steps, n, block, T = 2, 320, 3, 4, 64
    env = ale_vector.AtariVectorEnv(
        "pong",
        N,
        num_threads=1,
        max_num_frames_per_episode=100,
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    record = {k: [] for k in ("obs", "next_obs", "action", "reward", "term", "trunc", "first")}
    first = np.ones(N, bool)
    for _ in range(steps):
        action = rng.integers(0, env.single_action_space.n, N).astype(np.int32)
        next_obs, reward, term, trunc, info = env.step(action)
        done = term | trunc
        true_next = next_obs.copy()
        if done.any():
            true_next[done] = info["final_obs"][done]
        for key, x in zip(
            record, (obs, true_next, action, reward, term, trunc, first), strict=True
        ):
            record[key].append(np.asarray(x))
        obs, first = next_obs, done
    env.close()
    r = {k: np.stack(v) for k, v in record.items()}
    stream = Stream(
        r["obs"], r["next_obs"], r["action"].astype(np.uint8), r["reward"].astype(np.float32),
        r["term"], r["trunc"], r["first"],
    )  # fmt: skip
    assert stream.truncated.sum() >= 10 and r["first"][1:].any()
    # The stacker's view: ALE's stack shifts by one frame, zero-filled at a reset.
    cont = ~stream.done[:-1]
    np.testing.assert_array_equal(stream.obs[1:][cont], stream.next_obs[:-1][cont])
    assert (stream.obs[stream.first][:, :-1] == 0).all()

    fns = compiled(
        num_groups=1, num_envs=N, steps_per_group=T, n_step=n, gamma=0.99, block_size=block
    )
    ref = Reference([stream], T, fns.buf.capacity // 16, n, 0.99)
    checks = []

    def check(state):
        if ref.written[0] % 48 == 0 or ref.written[0] == steps:
            checks.append(check_all_slots(fns, state, ref, N))

    state = fill(fns, ref, [stream], block, [0] * (steps // block), check=check)
    ends = sum(x is not None and x["ends"] for _, expected in checks for x in expected)
    assert len(checks) >= 6 and ends >= 10  # windows ending at a truncation were compared
    want_valid, expected = checks[-1]
    batch, slots = fns.sample(state, jax.random.key(0), 64)
    slots = np.asarray(slots)
    assert want_valid[slots].all()
    assert_transitions(batch, np.arange(64), [expected[i] for i in slots])
