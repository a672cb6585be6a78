"""dqnx.xla: the CPU compile settings keep the numbers, and compiles run in parallel."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqnx import xla

ROOT = Path(__file__).resolve().parents[1]

RANDOM_BITS = """
import hashlib, jax, numpy as np
from dqnx import xla
xla.prepare()
f = jax.jit(lambda k: (jax.random.uniform(k, (1000,)), jax.random.randint(k, (999,), 0, 7),
                       jax.random.split(k, 5), jax.random.normal(k, (3, 5))))
lowered = f.lower(jax.random.key(3))
u, r, ks, n = lowered.compile()(jax.random.key(3))
h = hashlib.sha256()
for x in (u, r, jax.random.key_data(ks), n):
    h.update(np.asarray(x).tobytes())
print(h.hexdigest(), lowered.as_text().count("stablehlo.while"))
"""


def _random_bits(tuning: str):
    env = {**os.environ, "DQNX_XLA_CPU_TUNING": tuning, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", RANDOM_BITS], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    digest, loops = out.stdout.split()
    return digest, int(loops)


def test_unrolled_threefry_gives_the_same_bits_without_loops():
    tuned, tuned_loops = _random_bits("1")
    plain, plain_loops = _random_bits("0")
    assert tuned == plain
    assert plain_loops > 0  # JAX's CPU lowering: a while loop per hash
    assert tuned_loops == 0


def test_unknown_compiler_options_are_dropped():
    assert xla._supported({"xla_no_such_option_anywhere": True}) == ()
    options = xla.compiler_options()
    assert isinstance(options, dict)
    if jax.default_backend() == "cpu" and xla.tuning_enabled():
        assert set(options) <= set(xla.CPU_COMPILER_OPTIONS)


def test_parallel_compiler_compiles_every_program():
    x = jnp.arange(6.0)
    with xla.ParallelCompiler(workers=2) as pc:
        pc.submit("double", jax.jit(lambda v: 2 * v).lower(x))
        pc.submit("sum", jax.jit(jnp.sum).lower(x), hot=False, run_once=True)
        pc.submit("square", jax.jit(lambda v: v * v).lower(x), hot=False)
        pc.submit("max", jax.jit(jnp.max).lower(x), hot=False, trivial=True)
    compiled, seconds = pc.results()
    assert set(compiled) == set(seconds) == {"double", "sum", "square", "max"}
    assert float(compiled["max"](x)) == 5.0
    np.testing.assert_array_equal(compiled["double"](x), 2 * np.arange(6.0))
    assert float(compiled["sum"](x)) == 15.0
    np.testing.assert_array_equal(compiled["square"](x), np.arange(6.0) ** 2)
    assert all(s >= 0 for s in seconds.values())


def test_background_compile_is_waited_for_and_raises_its_error():
    x = jnp.arange(4.0)
    program = xla.compile_in_background(jax.jit(lambda v: v + 1), x)
    np.testing.assert_array_equal(program(x), np.arange(4.0) + 1)
    assert program.done() and program.seconds() > 0

    def broken(v):
        raise ValueError("traced and failed")

    failing = xla.compile_in_background(jax.jit(broken), x)
    with pytest.raises(ValueError, match="traced and failed"):
        failing(x)


def test_a_program_compiled_before_is_reused_for_the_same_devices_and_options():
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    def lowered(device, scale=2.0):
        sharding = NamedSharding(Mesh(np.array([device]), ("x",)), P())
        x = jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding)
        return jax.jit(lambda v: v * scale, out_shardings=sharding).lower(x)  # a new function

    d0, d1 = jax.devices()[:2]  # conftest: two CPU devices
    xla.clear_executables()
    a = xla.compile(lowered(d0))
    assert xla.compile(lowered(d0)) is a  # same text, devices, options: not compiled again
    assert xla.compile(lowered(d1)) is not a  # other device
    assert xla.compile(lowered(d0, scale=3.0)) is not a  # other program
    options = dict(xla._supported_level(1))
    assert not options or xla.compile(lowered(d0), options) is not a  # other options
    x = jax.device_put(jnp.arange(4.0), d0)
    np.testing.assert_array_equal(xla.compile(lowered(d0))(x), 2 * np.arange(4.0))
    xla.clear_executables()
    assert xla.compile(lowered(d0)) is not a


def test_one_text_for_arguments_of_another_structure_is_compiled_again():
    """An input the program does not use is left out of its text: the same text can
    come with arguments of another pytree structure, whose executable differs."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    d0 = jax.devices()[0]
    sharding = NamedSharding(Mesh(np.array([d0]), ("x",)), P())
    x = jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding)

    def lowered(unused):
        return jax.jit(lambda s: s[0] * 2.0, out_shardings=sharding).lower((x, unused))

    as_tuple, as_list = lowered((x,)), lowered([x])
    assert as_tuple.as_text() == as_list.as_text()
    xla.clear_executables()
    assert xla.compile(as_tuple) is not xla.compile(as_list)
    v = jax.device_put(jnp.arange(4.0), d0)
    np.testing.assert_array_equal(xla.compile(as_list)((v, [v])), 2 * np.arange(4.0))
    xla.clear_executables()


def test_a_program_that_calls_back_into_python_is_never_reused():
    from jax.sharding import SingleDeviceSharding

    seen = []
    sharding = SingleDeviceSharding(jax.devices()[0])
    x = jax.device_put(jnp.arange(3.0), sharding)

    def program(tag):
        def f(v):
            jax.debug.callback(lambda v: seen.append((tag, float(v.sum()))), v)
            return v + 1

        # the same text for both tags; shardings given, so only the callback stops reuse
        return jax.jit(f, in_shardings=sharding, out_shardings=sharding).lower(x)

    jax.block_until_ready(xla.compile(program("a"))(x))
    jax.block_until_ready(xla.compile(program("b"))(x))
    jax.effects_barrier()
    assert [t for t, _ in seen] == ["a", "b"]
