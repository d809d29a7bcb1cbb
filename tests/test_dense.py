"""The dense Gauss-Newton subproblem against NumPy closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trncg_jax
from trncg_jax import dense
from trncg_jax.status import CGStatus
from trncg_jax.trust_region import (
  DENSE_MAX_PARAMS,
  TRNCGHyperparams,
  uses_dense_solver,
)


def _linear_problem(n=12, p=5, seed=0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  jac, y = rng.normal(size=(n, p)), rng.normal(size=n)
  loss = trncg_jax.LeastSquares(
    lambda x: jnp.asarray(jac, dtype) @ x - jnp.asarray(y, dtype)
  )
  return jac, y, loss


def _reference(jac, y, x, radius, damping_rel):
  """The A-norm subproblem solved in NumPy from its definition."""
  r = jac @ x - y
  g, b = 2 * jac.T @ r, 2 * jac.T @ jac
  mu = max(
    damping_rel * np.trace(b) / len(x),
    dense.DAMPING_FLOOR_ULPS * np.finfo(float).eps * np.trace(b),
  )
  a = b + mu * np.eye(len(x))
  d = -np.linalg.solve(a, g)
  d_norm = np.sqrt(d @ a @ d)
  p = min(1.0, radius / d_norm) * d
  return p, -(g @ p + 0.5 * p @ b @ p), np.sqrt(p @ a @ p)


@pytest.mark.parametrize("radius", [1e3, 0.3])
@pytest.mark.parametrize("damping", [0.0, 1e-2])
def test_matches_numpy_reference(radius, damping):
  jac, y, loss = _linear_problem()
  x = jnp.asarray(np.linspace(-1, 1, 5))
  grad = jax.grad(loss)(x)
  res = dense.dense_gauss_newton(loss, x, grad, jnp.asarray(radius), damping)
  p, pred, norm = _reference(jac, y, np.asarray(x), radius, damping)
  np.testing.assert_allclose(res.step, p, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(res.predicted_reduction, pred, rtol=1e-9)
  np.testing.assert_allclose(res.step_norm, norm, rtol=1e-9)
  assert int(res.steps) == 5  # the Jacobian's JVPs
  expected = CGStatus.CONVERGED if radius > 10 else CGStatus.HIT_BOUNDARY
  assert CGStatus(int(res.status)) == expected


def test_trncg_solves_linear_least_squares_like_lstsq():
  jac, y, loss = _linear_problem(n=30, p=6, seed=1)
  res = trncg_jax.solve(
    loss,
    jnp.zeros(6),
    grad_tol=1e-10,
    max_steps=50,
    optimizer=trncg_jax.trncg(hvp_mode="gauss_newton"),
  )
  np.testing.assert_allclose(
    res.params, np.linalg.lstsq(jac, y)[0], rtol=1e-8, atol=1e-10
  )
  # Each iteration forms J by P = 6 JVPs: the work counter says so.
  assert set(res.history["hvps"][1 : res.num_steps + 1].tolist()) == {6}


def test_pytree_params_float32_and_scaling():
  """Dict params in float32; residuals scaled by 2^60 give the same step
  (the system is scaled by a power of two, exactly)."""

  def residuals(p, scale):
    return scale * jnp.concatenate(
      [p["w"] @ jnp.ones(3) - 1.0, p["b"] - jnp.arange(2.0)]
    )

  params = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.zeros(2, jnp.float32)}
  steps = []
  for scale in (1.0, 2.0**60):
    loss = trncg_jax.LeastSquares(
      lambda p, s=scale: residuals(p, jnp.float32(s))
    )
    grad = jax.grad(loss)(params)
    res = dense.dense_gauss_newton(
      loss, params, grad, jnp.float32(1e30), jnp.float32(0.0)
    )
    assert res.step["w"].dtype == jnp.float32
    assert np.all(np.isfinite(res.step["w"]))
    steps.append(res.step)
  np.testing.assert_allclose(steps[0]["w"], steps[1]["w"], rtol=1e-5)
  np.testing.assert_allclose(steps[0]["b"], steps[1]["b"], rtol=1e-5)


def test_non_finite_jacobian_gives_zero_step():
  loss = trncg_jax.LeastSquares(jnp.sqrt)  # J = 1 / (2 sqrt(x)): NaN at x < 0
  x = jnp.array([-1.0, 2.0])
  res = dense.dense_gauss_newton(loss, x, jnp.ones(2), jnp.asarray(1.0), 0.0)
  assert CGStatus(int(res.status)) == CGStatus.NON_FINITE
  np.testing.assert_array_equal(res.step, 0.0)


def test_batched_jacobian_matches_jacfwd(monkeypatch):
  loss = trncg_jax.LeastSquares(lambda x: jnp.sin(jnp.outer(x, x)).ravel())
  x = jnp.linspace(0.1, 1.0, 7)
  full = dense.residual_jacobian(loss, x)
  jaxpr = jax.make_jaxpr(jax.linearize(loss.residual_fn, x)[1])(x).jaxpr
  one_jvp = dense.intermediate_bytes(jaxpr)
  assert one_jvp >= 49 * x.dtype.itemsize  # at least its output, 49 residuals
  monkeypatch.setattr(dense, "JACOBIAN_BATCH_BYTES", 2 * one_jvp)
  batched = dense.residual_jacobian(loss, x)  # batches of 2 JVPs
  np.testing.assert_allclose(full, batched, rtol=1e-12)
  np.testing.assert_allclose(
    full.T, jax.jacfwd(loss.residual_fn)(x), rtol=1e-12
  )


def test_auto_selects_dense_for_small_gauss_newton_only():
  small, big = jnp.zeros(10), jnp.zeros(DENSE_MAX_PARAMS + 1)
  gn = TRNCGHyperparams(hvp_mode="gauss_newton")
  assert uses_dense_solver(gn, small)
  assert not uses_dense_solver(gn, big)
  assert not uses_dense_solver(TRNCGHyperparams(), small)
  assert not uses_dense_solver(
    TRNCGHyperparams(hvp_mode="gauss_newton", nystrom_rank=2), small
  )
  assert uses_dense_solver(
    TRNCGHyperparams(hvp_mode="gauss_newton", solver="dense"), big
  )
  assert not uses_dense_solver(
    TRNCGHyperparams(hvp_mode="gauss_newton", solver="cg"), small
  )


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(solver="qr"), "solver must be one of"),
    (dict(solver="dense"), "solver='dense' needs hvp_mode='gauss_newton'"),
    (
      dict(solver="dense", hvp_mode="gauss_newton", nystrom_rank=2),
      "nystrom_rank=0",
    ),
    (dict(dense_damping=-1.0), "dense_damping"),
  ],
)
def test_invalid_solver_configuration(kwargs, match):
  with pytest.raises(ValueError, match=match):
    trncg_jax.trncg(**kwargs)


def test_dense_needs_least_squares_loss():
  with pytest.raises(TypeError, match="LeastSquares"):
    trncg_jax.solve(
      lambda x: jnp.sum(x**2),
      jnp.ones(2),
      max_steps=2,
      optimizer=trncg_jax.trncg(hvp_mode="gauss_newton", solver="dense"),
    )
