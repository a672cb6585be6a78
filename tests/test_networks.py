"""Q-networks: ``PatchConv`` is ``nn.Conv(..., strides, padding="VALID")``
(forward, gradients, parameters) and ``MinAtarCNN`` and ``NatureCNN`` keep their
parameter trees whichever convolution they use."""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dqnx import layers, networks, platforms


def assert_close(actual, desired, rtol=1e-5):
    """Equal to ``rtol`` relative to the scale of ``desired`` (its largest
    magnitude), and in norm."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape and actual.dtype == desired.dtype
    scale = float(np.abs(desired).max())
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale)
    assert np.linalg.norm(actual - desired) <= rtol * np.linalg.norm(desired)


def tree_assert_close(actual, desired, rtol=1e-5):
    assert jax.tree.structure(actual) == jax.tree.structure(desired)
    jax.tree.map(lambda a, d: assert_close(a, d, rtol), actual, desired)


def random_conv_params(rng, kernel_shape, leading=()):
    """Conv parameters drawn with numpy (cheaper than compiling a JAX RNG), with
    a non-zero bias so its gradient path is exercised too."""
    return {
        "params": {
            "kernel": jnp.asarray(rng.normal(0.0, 0.3, (*leading, *kernel_shape)), jnp.float32),
            "bias": jnp.asarray(rng.normal(0.0, 0.3, (*leading, kernel_shape[-1])), jnp.float32),
        }
    }


def conv_pair(features=16, kernel_size=(3, 3)):
    return nn.Conv(features, kernel_size, padding="VALID"), networks.PatchConv(
        features, kernel_size
    )


@pytest.mark.parametrize("channels,kernel_size", [(4, (3, 3)), (7, (2, 3))])
def test_patch_conv_same_params_as_nn_conv(channels, kernel_size):
    ref, patch = conv_pair(16, kernel_size)
    x = jnp.zeros((2, 10, 10, channels), jnp.float32)
    key = jax.random.key(3)
    p_ref, p_patch = ref.init(key, x), patch.init(key, x)
    assert jax.tree.map(jnp.shape, p_ref) == jax.tree.map(jnp.shape, p_patch)
    assert p_patch["params"]["kernel"].shape == (*kernel_size, channels, 16)
    jax.tree.map(np.testing.assert_array_equal, p_patch, p_ref)  # bitwise: same init


def forward_and_grads(module, target):
    """x -> (y, d loss / d params, d loss / d x) for one module, in one program."""

    def loss(p, x):
        return jnp.mean((jax.nn.relu(module.apply(p, x)) - target) ** 2)

    def fn(p, x):
        return module.apply(p, x), *jax.grad(loss, argnums=(0, 1))(p, x)

    return fn


@pytest.mark.parametrize("channels,kernel_size", [(4, (3, 3)), (7, (2, 3))])
def test_patch_conv_forward_and_grads_match_nn_conv(channels, kernel_size):
    ref, patch = conv_pair(16, kernel_size)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 10, 10, channels)), jnp.float32)
    params = random_conv_params(rng, (*kernel_size, channels, 16))
    out_shape = (32, 11 - kernel_size[0], 11 - kernel_size[1], 16)
    target = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    want = jax.jit(forward_and_grads(ref, target))(params, x)
    got = jax.jit(forward_and_grads(patch, target))(params, x)
    assert got[0].shape == out_shape
    tree_assert_close(got, want)

    # Bool observations go in uncast (patches built as bool, then promoted).
    obs = x > 0.5
    y = jax.jit(patch.apply)(params, obs)
    assert y.dtype == jnp.float32
    assert_close(y, ref.apply(params, obs.astype(jnp.float32)))


def test_patch_conv_under_vmap_over_seeds():
    """Per-seed parameters and data (as in training): a batched matmul."""
    ref, patch = conv_pair()
    seeds = 3
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(seeds, 16, 10, 10, 4)), jnp.float32)
    params = random_conv_params(rng, (3, 3, 4, 16), leading=(seeds,))
    target = jnp.asarray(rng.normal(size=(16, 8, 8, 16)), jnp.float32)
    want = jax.jit(jax.vmap(forward_and_grads(ref, target)))(params, x)
    got = jax.jit(jax.vmap(forward_and_grads(patch, target)))(params, x)
    tree_assert_close(got, want)


# The Nature CNN's three layers (input, features, kernel, strides) and one whose
# stride does not divide its kernel (no space-to-depth: strided slices).
STRIDED_LAYERS = {
    "nature_0": ((84, 84, 4), 32, (8, 8), (4, 4)),
    "nature_1": ((20, 20, 32), 64, (4, 4), (2, 2)),
    "nature_2": ((9, 9, 64), 64, (3, 3), (1, 1)),
    "odd_stride": ((11, 12, 3), 8, (3, 3), (2, 3)),
}


@pytest.mark.parametrize("layer", list(STRIDED_LAYERS))
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_strided_patch_conv_matches_nn_conv(layer, dtype):
    """Forward and gradients (parameters, input) of ``PatchConv`` equal
    ``nn.Conv``'s on the same parameters with the same strides: to 1e-5 of the
    largest magnitude in float32 (sums in another order); in bfloat16 (both
    round their operands and the output gradient to bfloat16, accumulate in
    float32, and round the input gradient to bfloat16) to 1e-2. The Nature
    CNN's first layer takes the uint8 stack and scales its patches by 1/255, as
    ``nn.Conv`` on ``pixels_nhwc``'s image."""
    shape, features, size, strides = STRIDED_LAYERS[layer]
    rng = np.random.default_rng(0)
    kw = layers.compute_kwargs(dtype, conv=True)
    ref = nn.Conv(features, size, strides, "VALID", **kw)
    params = random_conv_params(rng, (*size, shape[-1], features))
    pixels = layer == "nature_0"
    if pixels:
        x = jnp.asarray(rng.integers(0, 256, (3, *shape)), jnp.uint8)
        patch = networks.PatchConv(features, size, strides, dtype, input_divisor=255.0)
        scaled = x.astype(jnp.float32) / 255.0
    else:
        x = jnp.asarray(rng.normal(size=(3, *shape)), jnp.float32)
        patch, scaled = networks.PatchConv(features, size, strides, dtype), x
    assert jax.tree.map(jnp.shape, patch.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, ref.init(jax.random.key(0), scaled)
    )
    y_ref = jax.jit(ref.apply)(params, scaled)
    target = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
    argnums = (0,) if pixels else (0, 1)  # no gradient of uint8 pixels

    def loss(module, p, x):
        return jnp.mean((jax.nn.relu(module.apply(p, x)) - target) ** 2)

    want = jax.jit(jax.grad(functools.partial(loss, ref), argnums))(params, scaled)
    got = jax.jit(jax.grad(functools.partial(loss, patch), argnums))(params, x)
    y = jax.jit(patch.apply)(params, x)
    assert y.shape == y_ref.shape and y.dtype == jnp.float32
    rtol = 1e-5 if dtype is None else 1e-2
    assert_close(y, y_ref, rtol)
    tree_assert_close(got, want, rtol)


def test_nature_cnn_conv_impls_share_parameters():
    """``conv_impl`` "patches" and "xla" build the same parameter tree with the
    same initial values (a checkpoint of one loads into the other); Q-values and
    gradients agree to 1e-5 of their scale."""
    nets = {
        impl: networks.make_q_network("nature_cnn", (4, 84, 84), 6, dueling=True, conv_impl=impl)
        for impl in ("patches", "xla")
    }
    obs = jnp.asarray(np.random.default_rng(3).integers(0, 256, (2, 4, 84, 84)), jnp.uint8)
    params = {k: jax.jit(n.init)(jax.random.key(1), obs) for k, n in nets.items()}
    jax.tree.map(np.testing.assert_array_equal, params["patches"], params["xla"])  # bitwise
    conv = params["xla"]["params"]
    assert [conv[f"Conv_{i}"]["kernel"].shape for i in range(3)] == [
        (8, 8, 4, 32), (4, 4, 32, 64), (3, 3, 64, 64)
    ]  # fmt: skip

    def q_and_grads(net):
        loss = lambda p: jnp.sum(net.apply(p, obs) ** 2)  # noqa: E731
        return jax.jit(lambda p: (net.apply(p, obs), jax.grad(loss)(p)))(params["xla"])

    tree_assert_close(q_and_grads(nets["patches"]), q_and_grads(nets["xla"]))
    assert platforms.resolve_conv_impl("auto", "cpu", strided=True) == "xla"


class ReferenceMinAtarCNN(nn.Module):
    """``MinAtarCNN`` as it was with ``nn.Conv``: the parameter tree and maths
    the patch convolution must keep."""

    num_actions: int
    hidden_sizes: Sequence[int] = (128,)
    dueling: bool = False

    @nn.compact
    def __call__(self, obs):
        h = obs.astype(jnp.float32)
        h = nn.relu(nn.Conv(16, (3, 3), padding="VALID")(h))
        h = h.reshape(h.shape[0], -1)
        for size in self.hidden_sizes:
            h = nn.relu(nn.Dense(size)(h))
        return networks.QHead(self.num_actions, self.dueling)(h)


@pytest.mark.parametrize("dueling", [False, True])
def test_minatar_cnn_matches_nn_conv_version(dueling):
    obs_shape, num_actions = (10, 10, 4), 3
    net = networks.make_q_network("auto", obs_shape, num_actions, (128,), dueling)
    assert isinstance(net, networks.MinAtarCNN)
    ref = ReferenceMinAtarCNN(num_actions, (128,), dueling)
    obs = jnp.asarray(np.random.default_rng(5).random((8, *obs_shape)) < 0.3)
    key = jax.random.key(2)
    params, params_ref = net.init(key, obs), ref.init(key, obs)
    # Same tree (params['Conv_0']['kernel'] etc.), same values from the same key.
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, params_ref)
    assert params["params"]["Conv_0"]["kernel"].shape == (3, 3, 4, 16)
    assert params["params"]["Conv_0"]["bias"].shape == (16,)
    jax.tree.map(np.testing.assert_array_equal, params, params_ref)

    q = jax.jit(net.apply)(params, obs)
    assert q.shape == (8, num_actions) and q.dtype == jnp.float32
    assert_close(q, ref.apply(params, obs))
    batch = jax.jit(jax.vmap(net.apply, in_axes=(None, 0)))(params, obs.reshape(2, 4, *obs_shape))
    assert batch.shape == (2, 4, num_actions)


def test_dense_is_nn_dense_with_the_same_gradients():
    """``networks.Dense``: nn.Dense's parameters (names, shapes, initial values),
    forward values, and gradients (input and kernel, checked against NumPy too),
    also under vmap over per-seed parameters."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 24)), jnp.float32)
    ours, theirs = networks.Dense(7), nn.Dense(7)
    p = ours.init(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_array_equal, p, theirs.init(jax.random.key(1), x))
    p = {"params": {"kernel": p["params"]["kernel"], "bias": jnp.asarray(rng.normal(size=7))}}
    assert_close(ours.apply(p, x), theirs.apply(p, x))
    g = jnp.asarray(rng.normal(size=(32, 7)), jnp.float32)

    def grads(module, p, x):
        return jax.grad(lambda p, x: jnp.sum(module.apply(p, x) * g), argnums=(0, 1))(p, x)

    (gp, gx), (tp, tx) = grads(ours, p, x), grads(theirs, p, x)
    tree_assert_close(gp, tp)
    assert_close(gx, tx)
    xn, gn = np.asarray(x, np.float64), np.asarray(g, np.float64)
    assert_close(np.asarray(gp["params"]["kernel"], np.float64), xn.T @ gn)
    # Per-seed parameters and inputs, as the learner vmaps them.
    seeds = jax.vmap(lambda k: ours.init(k, x))(jax.random.split(jax.random.key(2), 3))
    xs = jnp.stack([x, 2 * x, -x])
    ours_v = jax.vmap(lambda p, x: grads(ours, p, x))(seeds, xs)
    theirs_v = jax.vmap(lambda p, x: grads(theirs, p, x))(seeds, xs)
    tree_assert_close(ours_v, theirs_v)


def test_networks_use_dense_and_keep_parameter_names():
    mlp = networks.MLP(3, (16, 8), dueling=True)
    params = mlp.init(jax.random.key(0), jnp.zeros((2, 5)))["params"]
    assert set(params) == {"Dense_0", "Dense_1", "QHead_0"}
    assert set(params["QHead_0"]) == {"value", "advantage"}


# Atari networks: ALE's channel-first uint8 stacks [B, 4, 84, 84].
ATARI_OBS = (4, 84, 84)


def conv_reference(x, p, stride, padding):
    """A 2-D convolution NHWC x HWIO with bias, straight from lax."""
    y = lax.conv_general_dilated(
        x, p["kernel"], (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + p["bias"]


def dense_reference(x, p):
    return x @ p["kernel"] + p["bias"]


def nature_reference(params, h):
    """The Nature CNN written out with lax, on float NHWC inputs taken as they are."""
    for i, stride in enumerate((4, 2, 1)):
        h = jax.nn.relu(conv_reference(h, params[f"Conv_{i}"], stride, "VALID"))
    h = jax.nn.relu(dense_reference(h.reshape(h.shape[0], -1), params["Dense_0"]))
    return dense_reference(h, params["QHead_0"]["q"])


def impala_reference(params, h):
    """The IMPALA CNN written out with lax (sections of conv, max-pool, 2
    residual blocks), on float NHWC inputs taken as they are."""
    for s in range(3):
        h = conv_reference(h, params[f"Conv_{s}"], 1, "SAME")
        h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
        for b in range(2):
            p = params[f"ImpalaResidualBlock_{2 * s + b}"]
            r = conv_reference(jax.nn.relu(h), p["Conv_0"], 1, "SAME")
            h = h + conv_reference(jax.nn.relu(r), p["Conv_1"], 1, "SAME")
    h = jax.nn.relu(h).reshape(h.shape[0], -1)
    h = jax.nn.relu(dense_reference(h, params["Dense_0"]))
    return dense_reference(h, params["QHead_0"]["q"])


def count(params):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def numpy_params(net, obs, seed=0):
    """Parameters of ``net``'s shapes drawn with NumPy, scaled by fan-in (much
    cheaper than compiling ``net.init``), and their shapes."""
    shapes = jax.eval_shape(net.init, jax.random.key(0), obs)
    rng = np.random.default_rng(seed)

    def draw(x):
        fan_in = int(np.prod(x.shape[:-1])) if len(x.shape) > 1 else 1
        return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(fan_in), x.shape), jnp.float32)

    return jax.tree.map(draw, shapes), shapes


def atari_obs(batch, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch, *ATARI_OBS)), jnp.uint8)


@pytest.mark.parametrize(
    "kind,reference,expected_params",
    [
        (
            "nature_cnn",
            nature_reference,
            (8 * 8 * 4 * 32 + 32)  # conv 32 8x8/4: 84 -> 20
            + (4 * 4 * 32 * 64 + 64)  # conv 64 4x4/2: 20 -> 9
            + (3 * 3 * 64 * 64 + 64)  # conv 64 3x3/1: 9 -> 7
            + (7 * 7 * 64 * 512 + 512)  # dense 512
            + (512 * 6 + 6),  # Q head, 6 actions: 1,687,206 in all
        ),
        (
            "impala_cnn",
            impala_reference,
            (3 * 3 * 4 * 16 + 16)
            + 4 * (3 * 3 * 16 * 16 + 16)  # section 16: 84 -> 42
            + (3 * 3 * 16 * 32 + 32)
            + 4 * (3 * 3 * 32 * 32 + 32)  # section 32: 42 -> 21
            + (3 * 3 * 32 * 32 + 32)
            + 4 * (3 * 3 * 32 * 32 + 32)  # section 32: 21 -> 11
            + (11 * 11 * 32 * 256 + 256)  # dense 256
            + (256 * 6 + 6),  # Q head: 1,090,774 in all
        ),
    ],
)
def test_atari_networks_match_published_architecture(kind, reference, expected_params):
    """Parameter count of the published network. Q-values [B, A] float32 equal
    a lax version of it on ``obs / 255`` in NHWC: the network transposes ALE's
    channel-first stack and scales it. Pixel intensities are scaled whatever
    their dtype: the uint8 stack and the same values as float32 give the same
    Q-values; floats already in [0, 1] would be scaled again."""
    net = networks.make_q_network(kind, ATARI_OBS, 6)
    obs = atari_obs(3)
    params, shapes = numpy_params(net, obs)
    assert count(shapes) == expected_params

    @jax.jit
    def outputs(params, obs):
        as_float = obs.astype(jnp.float32)
        scaled_nhwc = jnp.transpose(as_float / 255.0, (0, 2, 3, 1))
        return (
            net.apply(params, obs),
            net.apply(params, as_float),
            net.apply(params, as_float / 255.0),
            reference(params["params"], scaled_nhwc),
        )

    q, q_float, q_prescaled, q_reference = outputs(params, obs)
    assert q.shape == (3, 6) and q.dtype == jnp.float32
    assert_close(q, q_reference, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(q_float), np.asarray(q))
    assert not np.allclose(q_prescaled, q, rtol=1e-3)


@pytest.mark.parametrize("cls", [networks.NatureCNN, networks.ImpalaCNN])
def test_atari_networks_dueling(cls):
    """Dueling head: parameters value [D, 1] and advantage [D, A]; mean_a Q = V."""
    net = cls(5, dueling=True)
    obs = atari_obs(2, seed=1)
    params, _ = numpy_params(net, obs, seed=1)
    head = params["params"]["QHead_0"]
    width = net.hidden_sizes[-1]
    assert head["value"]["kernel"].shape == (width, 1)
    assert head["advantage"]["kernel"].shape == (width, 5)
    q, state = jax.jit(lambda p, x: net.apply(p, x, capture_intermediates=True))(params, obs)
    assert q.shape == (2, 5) and q.dtype == jnp.float32
    value = state["intermediates"]["QHead_0"]["value"]["__call__"][0]  # [B, 1]
    assert_close(q.mean(axis=-1), value[:, 0], rtol=1e-5)
    assert float(jnp.std(q - value)) > 0  # the advantages differ between actions


def test_make_q_network_auto_picks_nature_cnn_for_channel_first_images():
    assert isinstance(networks.make_q_network("auto", (4, 84, 84), 6), networks.NatureCNN)
    assert isinstance(networks.make_q_network("auto", (4, 64, 64), 6), networks.NatureCNN)
    # Unchanged: MinAtar's [10, 10, C], small channel-first images, vectors.
    for shape in [(10, 10, 4), (10, 10, 7), (4, 10, 10), (84, 84, 4)]:
        assert isinstance(networks.make_q_network("auto", shape, 3), networks.MinAtarCNN), shape
    assert isinstance(networks.make_q_network("auto", (4,), 2), networks.MLP)
    net = networks.make_q_network("impala_cnn", (4, 84, 84), 6, hidden_sizes=(64, 64), dueling=True)
    assert isinstance(net, networks.ImpalaCNN) and net.dueling
    assert tuple(net.hidden_sizes) == (256,)  # the published dense layer
    assert {"nature_cnn", "impala_cnn"} <= set(networks.NETWORKS)
    with pytest.raises(ValueError, match="unknown network"):
        networks.make_q_network("resnet", (4, 84, 84), 6)


# Heads: every torso ends in a ``Head``; ``q_values`` maps any head's output to Q-values.
HEAD_OBS = jnp.asarray(np.random.default_rng(7).normal(size=(3, 5)), jnp.float32)
HEADS = {
    "c51": networks.Head("c51", num_atoms=7, v_min=-2.0, v_max=4.0),
    "qr": networks.Head("qr", num_quantiles=6),
    "iqn": networks.Head("iqn", num_quantile_samples=4, embedding_dim=8),
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_heads_outputs_and_q_values(name):
    head = HEADS[name]
    net = networks.make_q_network("mlp", (5,), 2, (16, 8), dueling=True, head=head)
    params = jax.jit(net.init)(jax.random.key(0), HEAD_OBS)
    names = set(params["params"])

    @jax.jit
    def outputs(params, key):
        out = networks.forward(net, params, HEAD_OBS, noise_key=key)
        q = networks.q_values(net, params, HEAD_OBS, key)
        return out, q, net.apply(params, HEAD_OBS, taus=jnp.full((3, 4), 0.3), deterministic=True)

    out, q, fixed = outputs(params, jax.random.key(1))
    assert q.shape == (3, 2)
    if name == "c51":
        assert out.shape == (3, 2, 7)
        probs = np.asarray(jax.nn.softmax(out, axis=-1), np.float64)
        np.testing.assert_allclose(q, probs @ np.linspace(-2, 4, 7), rtol=1e-5, atol=1e-6)
    elif name == "qr":
        assert out.shape == (3, 6, 2)
        np.testing.assert_allclose(q, np.asarray(out).mean(axis=1), rtol=1e-6)
    else:  # IQN: the last dense layer moves into the head; the product enters it
        assert names == {"Dense_0", "IQNHead_0"}
        head_params = params["params"]["IQNHead_0"]
        assert head_params["tau_embedding"]["kernel"].shape == (8, 16)
        assert head_params["value_hidden_0"]["kernel"].shape == (16, 8)
        assert out.shape == (3, 4, 2)  # taus=None: the K midpoints
        assert fixed.shape == (3, 4, 2)
        assert not np.allclose(q, fixed.mean(axis=1))  # acting samples its own fractions
    if head.needs_key():
        with pytest.raises(ValueError, match="need a key"):
            networks.q_values(net, params, HEAD_OBS)


def test_noisy_q_values_deterministic_uses_the_means():
    net = networks.make_q_network("mlp", (5,), 2, (16,), head=networks.Head(noisy=True))
    params = jax.jit(net.init)(jax.random.key(0), HEAD_OBS)
    assert set(params["params"]) == {"Dense_0", "NoisyQHead_0"}
    q = jax.jit(lambda k, d: networks.q_values(net, params, HEAD_OBS, k, deterministic=d),
                static_argnums=1)  # fmt: skip
    np.testing.assert_array_equal(q(jax.random.key(1), True), q(jax.random.key(2), True))
    means = jax.jit(lambda p: net.apply(p, HEAD_OBS, deterministic=True))(params)
    np.testing.assert_allclose(q(jax.random.key(1), True), means, rtol=1e-6)
    np.testing.assert_array_equal(q(jax.random.key(1), False), q(jax.random.key(1), False))
    assert not np.allclose(q(jax.random.key(1), False), q(jax.random.key(2), False))
