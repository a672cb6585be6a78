"""One place decides every CPU-specific choice (``dqnx.platforms``): asked about a
GPU or TPU (on this CPU machine) it turns each of them off, on CPU it keeps
today's; the sites that make the choices follow it. ``--compute_dtype``: float32
is the old maths exactly, bfloat16 puts the network's matmuls in bfloat16 with
float32 parameters, optimizer state, loss and Q-values."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqnx import builder, networks, parallel, platforms, xla
from dqnx.compiled import seed_group_size
from dqnx.config import Config
from dqnx.heads import Head
from dqnx.types import Transition

CPU_TODAY = {
    "unroll_threefry": True,
    "fast_compile_cold": True,
    "cache_sized_seed_groups": True,
    "conv_impl": "patches",
    "strided_conv_impl": "xla",
    "split_seed_data": False,
    "quantile_native_reductions": True,
}
ACCELERATOR = {
    "unroll_threefry": False,
    "fast_compile_cold": False,
    "cache_sized_seed_groups": False,
    "conv_impl": "xla",
    "strided_conv_impl": "xla",
    "split_seed_data": True,
    "quantile_native_reductions": False,
}


def choices(platform, **kw):
    c = dataclasses.asdict(platforms.choices_for(platform, **kw))
    assert c.pop("platform") == platforms.normalize(platform)
    return c


def test_cpu_keeps_todays_choices_and_accelerators_turn_them_off():
    assert choices("cpu", tuning=True) == CPU_TODAY
    for platform in ("gpu", "tpu", "cuda", "rocm"):
        assert choices(platform) == ACCELERATOR, platform
    # DQNX_XLA_CPU_TUNING=0 turns off the XLA:CPU compile choices only.
    off = dict(
        CPU_TODAY, unroll_threefry=False, fast_compile_cold=False, quantile_native_reductions=False
    )
    assert choices("cpu", tuning=False) == off
    assert platforms.current().platform == platforms.normalize(jax.default_backend())


@pytest.fixture
def on(monkeypatch):
    """``on(platform)``: every site that asks ``platforms.current()`` sees ``platform``."""

    def pretend(platform):
        monkeypatch.setattr(platforms, "current", lambda: platforms.choices_for(platform))

    return pretend


def test_seed_groups_follow_the_platform(on):
    small, large = 128 * 11_000, 64 * 132_566
    assert seed_group_size(0, 8, learner_size=small, platform="cpu") == 2
    assert seed_group_size(0, 8, learner_size=large, platform="cpu") == 1
    for platform in ("gpu", "tpu"):
        assert seed_group_size(0, 8, learner_size=large, platform=platform) == 8
    assert seed_group_size(4, 8, learner_size=small, platform="gpu") == 4  # asked for: kept
    on("gpu")
    assert seed_group_size(0, 6, learner_size=small) == 6


ON_CPU = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU sites, on CPU")


@ON_CPU
def test_layout_and_compile_options_follow_the_platform(on):
    # conftest: two CPU devices. On CPU one seed never has its data split ...
    assert parallel.choose_layout(1, 0, 8, 64, 1000) == parallel.Layout(1, 1)
    if platforms.tuning_enabled():
        assert xla.program_options(hot=False, trivial=True)  # legacy emitters, LLVM level 0
        # A quantile learner's hot program keeps YNNPACK for matmuls and convolutions only.
        assert xla.program_options(quantile_loss=True) == xla.QUANTILE_OPTIONS
    assert xla.program_options() == {}  # other hot programs: XLA's defaults
    on("gpu")  # ... on an accelerator the idle device takes half of its data
    assert parallel.choose_layout(1, 0, 8, 64, 1000) == parallel.Layout(1, 2)
    assert xla.program_options(hot=False, trivial=True) == {}
    assert xla.program_options(quantile_loss=True) == {}
    assert xla.compiler_options() == {}


def minatar(conv_impl="auto", dtype=None):
    return networks.make_q_network(
        "minatar_cnn", (10, 10, 4), 3, (32,), conv_impl=conv_impl, dtype=dtype
    )


def equations(fn, *args):
    """Every equation of ``fn``'s jaxpr, those of nested jaxprs (scan, custom_vjp) too."""

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for value in eqn.params.values():
                for x in value if isinstance(value, tuple | list) else (value,):
                    sub = x if hasattr(x, "eqns") else getattr(x, "jaxpr", None)
                    if hasattr(sub, "eqns"):
                        yield from walk(sub)

    yield from walk(jax.make_jaxpr(fn)(*args).jaxpr)


def primitives(fn, *args) -> set:
    return {eqn.primitive.name for eqn in equations(fn, *args)}


def test_conv_impl_auto_is_the_platforms_layer_with_the_same_parameters(on):
    obs = jax.random.bernoulli(jax.random.key(1), 0.3, (5, 10, 10, 4))
    patches, conv = minatar("patches"), minatar("xla")
    params = jax.jit(patches.init)(jax.random.key(0), obs)
    shapes = jax.eval_shape(conv.init, jax.random.key(0), obs)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, shapes)
    tol = 1e-5 if jax.default_backend() == "cpu" else 2e-2  # accelerators: TF32 convolutions
    np.testing.assert_allclose(
        jax.jit(conv.apply)(params, obs), jax.jit(patches.apply)(params, obs), rtol=tol, atol=tol
    )
    on("cpu")
    auto = minatar()
    used = primitives(auto.apply, params, obs)
    assert "conv_general_dilated" not in used  # CPU: patches
    assert used == primitives(patches.apply, params, obs)
    on("tpu")
    assert "conv_general_dilated" in primitives(auto.apply, params, obs)
    with pytest.raises(ValueError, match="conv_impl"):
        minatar("cudnn")


def test_float32_compute_dtype_is_the_old_maths_exactly():
    obs = jax.random.bernoulli(jax.random.key(1), 0.3, (4, 10, 10, 4))
    for dtype in ("float32", jnp.float32):
        old, new = minatar(), minatar(dtype=dtype)
        params = jax.eval_shape(old.init, jax.random.key(0), obs)

        def loss(net):
            return jax.grad(lambda p: (net.apply(p, obs) ** 2).sum())

        assert str(jax.make_jaxpr(loss(new))(params)) == str(jax.make_jaxpr(loss(old))(params))


def dot_dtypes(fn, *args) -> set:
    """(operand dtypes, result dtype) of every dot_general/convolution in ``fn``."""
    return {
        (e.primitive.name, tuple(str(v.aval.dtype) for v in e.invars), str(e.outvars[0].aval.dtype))
        for e in equations(fn, *args)
        if e.primitive.name in ("dot_general", "conv_general_dilated")
    }


@pytest.mark.parametrize(
    "flags",
    [
        dict(env_name="Breakout-MinAtar", network="minatar_cnn", hidden_sizes=(32,)),
        dict(env_name="Breakout-MinAtar", hidden_sizes=(32,), conv_impl="xla", dueling=True),
        dict(hidden_sizes=(16, 8), learner="c51", noisy=True, num_atoms=5),
    ],
    ids=["minatar", "minatar-xla-dueling", "mlp-c51-noisy"],
)
def test_bfloat16_learner_has_bf16_dots_and_float32_state(flags):
    config = Config(compute_dtype="bfloat16", batch_size=8, **flags)
    spec = builder.make_env(config).spec
    net = builder.make_network(config, spec.obs_shape, spec.num_actions)
    learn = builder.make_learner(config, net)
    obs = jnp.zeros((8, *spec.obs_shape), spec.obs_dtype)
    state = learn.init(jax.random.key(0), obs[:1])
    batch = Transition(obs, jnp.zeros(8, jnp.int32), jnp.ones(8), obs, jnp.zeros(8, bool))
    # parameters, target parameters and Adam's moments: all float32
    assert {x.dtype for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)} == {
        jnp.dtype(jnp.float32)
    }
    dots = dot_dtypes(learn.update, state, batch)
    network_dots = {d for d in dots if d[1] != ("float32", "float32")}
    assert network_dots and all(ins == ("bfloat16", "bfloat16") for _, ins, _ in network_dots)
    # forward and kernel-gradient matmuls accumulate into float32
    assert any(out == "float32" for _, _, out in network_dots)
    # the only float32 dot left is C51's expectation over atoms (not a layer)
    assert {d for d in dots if d[1] == ("float32", "float32")} <= {
        ("dot_general", ("float32", "float32"), "float32")
    }
    new_state, metrics = jax.eval_shape(learn.update, state, batch)
    assert metrics["loss"].dtype == jnp.float32
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
    q = jax.eval_shape(lambda p: networks.q_values(net, p, obs, jax.random.key(2)), state.params)
    assert q.dtype == jnp.float32


def test_bfloat16_update_runs_and_stays_close_to_float32():
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = Config(compute_dtype=dtype, batch_size=8, hidden_sizes=(16,))
        net = builder.make_network(config, (4,), 2)
        learn = builder.make_learner(config, net)
        obs = jax.random.normal(jax.random.key(1), (8, 4))
        state = learn.init(jax.random.key(0), obs[:1])
        batch = Transition(obs, jnp.zeros(8, jnp.int32), jnp.ones(8), obs, jnp.zeros(8, bool))
        _, metrics = jax.jit(learn.update)(state, batch)
        losses[dtype] = float(metrics["loss"])
    assert np.isfinite(losses["bfloat16"])
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.05)


def test_bfloat16_dots_reach_the_compiled_program():
    config = Config(compute_dtype="bfloat16", hidden_sizes=(16,))
    net = builder.make_network(config, (4,), 2)
    params = net.init(jax.random.key(0), jnp.zeros((1, 4)))
    hlo = jax.jit(net.apply).lower(params, jnp.zeros((3, 4))).as_text()
    assert "bf16" in hlo and "dot_general" in hlo
    assert "tensor<4x16xf32>" in hlo  # the parameters come in as float32


def test_config_checks_the_new_flags():
    from dqnx.errors import ConfigError

    with pytest.raises(ConfigError, match="--compute_dtype"):
        Config(compute_dtype="float16").check_fields()
    with pytest.raises(ConfigError, match="--conv_impl"):
        Config(conv_impl="cudnn").check_fields()
    assert "conv_impl" in Config.result_neutral_fields()
    assert "compute_dtype" not in Config.result_neutral_fields()
    # the default network of a Head-less plain config is unchanged
    assert networks.head_of(builder.make_network(Config(), (4,), 2)) == Head()
