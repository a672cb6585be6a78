import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqnx import heads
from dqnx.noisy import NoisyDense

P, Q = 6, 4
X = jnp.asarray(np.random.default_rng(0).normal(size=(3, P)), jnp.float32)


def _init(layer, x=X, key=0):
    return jax.jit(layer.init)(jax.random.key(key), x)


# ----------------------------------------------------------------- NoisyDense


def test_parameter_shapes_and_init_ranges():
    layer = NoisyDense(64, sigma0=0.5)
    x = jnp.ones((2, 100))
    params = _init(layer, x)["params"]
    assert {k: v.shape for k, v in params.items()} == {
        "mu_w": (100, 64),
        "sigma_w": (100, 64),
        "mu_b": (64,),
        "sigma_b": (64,),
    }
    bound = 1 / np.sqrt(100)
    for name in ("mu_w", "mu_b"):
        mu = np.asarray(params[name])
        assert np.all(np.abs(mu) <= bound)
        assert mu.max() > 0.8 * bound and mu.min() < -0.8 * bound  # spread over the range
    np.testing.assert_allclose(params["sigma_w"], 0.5 * bound, rtol=1e-6)
    np.testing.assert_allclose(params["sigma_b"], 0.5 * bound, rtol=1e-6)


def test_same_key_same_output_different_keys_differ():
    layer = NoisyDense(Q)
    params = _init(layer)
    apply_jit = jax.jit(lambda k: layer.apply(params, X, rngs={"noise": k}))
    apply = lambda k: apply_jit(jax.random.key(k))
    np.testing.assert_array_equal(apply(1), apply(1))
    assert not np.allclose(apply(1), apply(2))


def test_deterministic_is_the_mean():
    params = _init(NoisyDense(Q))
    p = params["params"]
    expected = X @ p["mu_w"] + p["mu_b"]

    @jax.jit
    def outputs(params, key):
        return (
            NoisyDense(Q).apply(params, X, deterministic=True),
            NoisyDense(Q, deterministic=True).apply(params, X),
            # The call argument overrides the attribute.
            NoisyDense(Q, deterministic=True).apply(
                params, X, deterministic=False, rngs={"noise": key}
            ),
        )

    by_argument, by_attribute, noisy = outputs(params, jax.random.key(0))
    np.testing.assert_allclose(by_argument, expected, rtol=1e-6)
    np.testing.assert_allclose(by_attribute, expected, rtol=1e-6)
    assert not np.allclose(noisy, expected)


def test_missing_noise_rng_is_an_error():
    params = _init(NoisyDense(Q))
    with pytest.raises(ValueError, match="noise"):
        NoisyDense(Q).apply(params, X)


def test_noise_scales_are_learned():
    # With noise, d sum(y) / d sigma_b = sum over rows of f(e_out): nonzero; with the
    # means only, sigma gets no gradient.
    params = _init(NoisyDense(Q))

    @jax.jit
    def grads(params, key):
        loss = lambda p, det: NoisyDense(Q).apply(p, X, det, rngs={"noise": key}).sum()
        return jax.grad(loss)(params, False), jax.grad(loss)(params, True)

    noisy, mean_only = grads(params, jax.random.key(3))
    assert np.all(np.abs(noisy["params"]["sigma_b"]) > 0)
    assert np.abs(noisy["params"]["sigma_w"]).max() > 0
    np.testing.assert_array_equal(mean_only["params"]["sigma_w"], 0.0)
    np.testing.assert_array_equal(mean_only["params"]["sigma_b"], 0.0)
    np.testing.assert_allclose(noisy["params"]["mu_b"], np.full(Q, X.shape[0]), rtol=1e-6)


def test_output_covariance_matches_factorised_formula():
    # y = x @ mu_w + mu_b + f(e_out) * ((x * f(e_in)) @ sigma_w + sigma_b), with
    # E f(e)^2 = E|e| = sqrt(2/pi) =: c and independent e_in, e_out. For two rows x, x'
    # (the same noise sample): Cov(y_j, y'_k) = 0 for j != k and
    # Cov(y_j, y'_j) = c * (sigma_b_j^2 + c * sum_i x_i x'_i sigma_w_ij^2).
    rng = np.random.default_rng(1)
    layer = NoisyDense(Q)
    params = _init(layer)
    sigma_w = rng.uniform(0.1, 1.0, size=(P, Q)).astype(np.float32)
    sigma_b = rng.uniform(0.1, 1.0, size=Q).astype(np.float32)
    params = {"params": {**params["params"], "sigma_w": sigma_w, "sigma_b": sigma_b}}
    x = X[:2]
    keys = jax.random.split(jax.random.key(0), 100_000)
    ys = jax.jit(jax.vmap(lambda k: layer.apply(params, x, rngs={"noise": k})))(keys)  # [S, 2, Q]
    ys = np.asarray(ys, np.float64).reshape(len(keys), 2 * Q)
    c = np.sqrt(2 / np.pi)
    xx = np.asarray(x, np.float64)
    cov = np.zeros((2 * Q, 2 * Q))
    for r1 in range(2):
        for r2 in range(2):
            block = c * (sigma_b**2 + c * (xx[r1] * xx[r2]) @ sigma_w.astype(np.float64) ** 2)
            cov[r1 * Q : (r1 + 1) * Q, r2 * Q : (r2 + 1) * Q] = np.diag(block)
    mean = np.asarray(x @ params["params"]["mu_w"] + params["params"]["mu_b"]).reshape(-1)
    scale = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(ys.mean(axis=0), mean, atol=0.02 * scale.max())
    np.testing.assert_allclose(np.cov(ys, rowvar=False), cov, atol=0.03 * cov.max())


# ---------------------------------------------------------------------- heads


def _shape(head, *inputs, **kwargs):
    """Output shape of ``head`` (traced only: ``jax.eval_shape``)."""
    params = jax.eval_shape(head.init, jax.random.key(0), *inputs)
    rngs = {"noise": jax.random.key(1)}
    return jax.eval_shape(lambda p: head.apply(p, *inputs, rngs=rngs, **kwargs), params).shape


def test_head_shapes():
    h = jnp.ones((5, 8))
    taus = jnp.full((5, 7), 0.5)
    for dueling in (False, True):
        for noisy in (False, True):
            kw = dict(dueling=dueling, noisy=noisy, hidden_sizes=(16,))
            assert _shape(heads.DistributionalHead(3, 11, **kw), h) == (5, 3, 11)
            assert _shape(heads.QuantileHead(3, 9, **kw), h) == (5, 9, 3)
            assert _shape(heads.IQNHead(3, embedding_dim=32, **kw), h, taus) == (5, 7, 3)
        assert _shape(heads.NoisyQHead(3, dueling=dueling), h) == (5, 3)
        assert _shape(heads.NoisyQHead(3, dueling=dueling), h, deterministic=True) == (5, 3)


def test_noisy_heads_use_noisy_layers():
    h = jnp.ones((2, 8))
    head = heads.DistributionalHead(3, 5, dueling=True, noisy=True)
    params = jax.eval_shape(head.init, jax.random.key(0), h)
    assert set(params["params"]) == {"value", "advantage"}
    assert set(params["params"]["advantage"]) == {"mu_w", "sigma_w", "mu_b", "sigma_b"}
    head = heads.NoisyQHead(3)
    params = jax.jit(head.init)(jax.random.key(0), h)
    apply = jax.jit(lambda k: head.apply(params, h, rngs={"noise": k}))
    a, b = apply(jax.random.key(1)), apply(jax.random.key(2))
    assert not np.allclose(a, b)


def test_c51_dueling_identity():
    h = jnp.asarray(np.random.default_rng(2).normal(size=(4, 8)), jnp.float32)
    head = heads.DistributionalHead(3, 5, dueling=True)
    params = jax.jit(head.init)(jax.random.key(0), h)
    logits = jax.jit(head.apply)(params, h)  # [B, A, K]
    p = params["params"]
    value = (h @ p["value"]["kernel"] + p["value"]["bias"])[:, None, :]  # [B, 1, K]
    adv = (h @ p["advantage"]["kernel"] + p["advantage"]["bias"]).reshape(4, 3, 5)
    np.testing.assert_allclose(logits, value + adv - adv.mean(axis=1, keepdims=True), atol=1e-6)
    # The mean over actions is the value stream's logits.
    np.testing.assert_allclose(logits.mean(axis=1, keepdims=True), value, atol=1e-6)


def test_iqn_embedding_matches_numpy():
    rng = np.random.default_rng(3)
    b, d, n, a, emb = 2, 6, 4, 3, 8
    h = rng.normal(size=(b, d)).astype(np.float32)
    taus = rng.random(size=(b, n)).astype(np.float32)
    head = heads.IQNHead(a, embedding_dim=emb)
    params = jax.jit(head.init)(jax.random.key(0), h, taus)
    apply = jax.jit(head.apply)
    out = apply(params, h, taus)
    p = jax.tree.map(np.asarray, params["params"])
    cosines = np.cos(np.pi * np.arange(emb)[None, None, :] * taus[..., None])  # [B, N, emb]
    phi = np.maximum(cosines @ p["tau_embedding"]["kernel"] + p["tau_embedding"]["bias"], 0.0)
    expected = (h[:, None, :] * phi) @ p["q"]["kernel"] + p["q"]["bias"]  # [B, N, A]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # Different fractions give different values; the same fraction, the same values.
    same = apply(params, h, np.broadcast_to(taus[:, :1], (b, n)))
    np.testing.assert_allclose(same, np.broadcast_to(same[:, :1], same.shape), rtol=1e-6)
    assert not np.allclose(out[:, 0], out[:, 1])
