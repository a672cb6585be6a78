"""Tests for experiments/studies/adam_scale.py: Adam's second moment and the epsilon step factor."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "dqnx_adam_scale",
    Path(__file__).resolve().parents[1] / "experiments" / "studies" / "adam_scale.py",
)
adam_scale = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(adam_scale)


def _one_step_state(grads):
    """The optimizer state of dqnx.learner's chain after one update with ``grads``."""
    opt = optax.chain(optax.clip_by_global_norm(1e9), optax.adam(1e-3, eps=3.125e-4))
    params = {"w": jnp.zeros_like(grads["w"]), "b": jnp.zeros_like(grads["b"])}
    state = opt.init(params)
    _, state = opt.update(grads, state, params)
    return state


def test_one_update_gives_the_gradient_magnitude():
    # After one Adam update nu = (1 - b2) g^2 and count = 1, so the bias-corrected
    # sqrt(v) is |g| exactly: the factor for eps is |g| / (|g| + eps), by hand.
    rng = np.random.default_rng(0)
    scale = np.array([1e-6, 1e-2])
    w = rng.normal(size=(2, 3, 4)) * scale[:, None, None]
    b = rng.normal(size=(2, 5)) * scale[:, None]
    state = _one_step_state({"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)})
    moments = adam_scale.adam_moments(state)
    assert len(moments) == 1
    nus = [np.asarray(x) for x in (moments[0].nu["b"], moments[0].nu["w"])]
    out = adam_scale.step_scale(nus, moments[0].count, 2, [1e-8, 3.125e-4])
    assert out["num_params"] == 5 + 12
    for s in range(2):
        g = np.abs(np.concatenate([b[s], w[s].ravel()])).astype(np.float32).astype(np.float64)
        np.testing.assert_allclose(
            out["sqrt_v"][s], np.quantile(g, adam_scale.QUANTILES), rtol=1e-3
        )
        for eps in (1e-8, 3.125e-4):
            np.testing.assert_allclose(out["factor"][eps][s], np.mean(g / (g + eps)), rtol=1e-3)
    # Seed 0's gradients (~1e-6) sit far below eps 3.125e-4, seed 1's (~1e-2) above it.
    assert out["factor"][3.125e-4][0] < 0.05 < 0.5 < out["factor"][3.125e-4][1]


def test_device_and_seed_axes_are_flattened_in_order():
    nu = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4) ** 2  # [devices, seeds, p]
    out = adam_scale.step_scale([nu], count=10**6, num_seeds=6, eps_values=[1.0])
    np.testing.assert_allclose(out["sqrt_v"][:, 1], np.arange(6) * 4 + 1.5)
    np.testing.assert_allclose(
        out["factor"][1.0][5], np.mean(np.arange(20, 24) / np.arange(21, 25))
    )


def test_no_adam_state_is_found_in_sgd():
    state = optax.sgd(0.1).init({"w": jnp.zeros(3)})
    assert adam_scale.adam_moments(state) == []


def test_bad_eps_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        adam_scale.main(["runs/x", "--eps", "1e-8,big"])
    assert e.value.code == 2
    assert "--eps" in capsys.readouterr().err
