"""Gauss-Newton curvature for LeastSquares losses, against closed forms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import trncg_jax
from tests.test_transform import run_optax
from trncg_jax.hvp import make_hvp


def exp_residuals(params, a, y):
  """r_i = exp(a_i . w) + b - y_i, split over a dict of params (a pytree)."""
  return jnp.exp(a @ params["w"]) + params["b"] - y


def exp_jacobian(params, a):
  """The Jacobian of exp_residuals by hand: dr_i/dw = a_i exp(a_i . w),
  dr_i/db = 1; columns (w, b)."""
  a = np.asarray(a)
  e = np.exp(a @ np.asarray(params["w"]))
  return np.concatenate([e[:, None] * a, np.ones((len(e), 1))], axis=1)


def _data(seed=0, n=7):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((n, 3)) * 0.5
  y = rng.standard_normal(n)
  params = {
    "w": jnp.asarray(rng.standard_normal(3) * 0.3),
    "b": jnp.asarray(np.float64(0.1)),
  }
  return params, jnp.asarray(a), jnp.asarray(y)


def test_loss_is_the_sum_of_squares_and_bind_keeps_kwargs():
  params, a, y = _data()
  loss = trncg_jax.LeastSquares(exp_residuals)
  r = np.exp(np.asarray(a) @ np.asarray(params["w"])) + 0.1 - np.asarray(y)
  np.testing.assert_allclose(loss(params, a, y), np.sum(r**2), rtol=1e-13)
  bound = loss.bind(a=a, y=y)
  assert isinstance(bound, trncg_jax.LeastSquares)
  np.testing.assert_allclose(bound(params), np.sum(r**2), rtol=1e-13)


def test_bind_keeps_the_jacobian_fn():
  """A hand-written Jacobian in jacrev's layout survives ``bind`` (with
  kwargs) and is what the dense solver uses: it equals the closed form."""
  from trncg_jax.dense import residual_jacobian

  def jacobian(params, a, y):
    e = jnp.exp(a @ params["w"])
    return {"w": e[:, None] * a, "b": jnp.ones_like(y)}

  params, a, y = _data()
  bound = trncg_jax.LeastSquares(exp_residuals, jacobian).bind(a=a, y=y)
  by_keys = exp_jacobian(params, a)[:, [3, 0, 1, 2]]  # ravel order: b, w
  np.testing.assert_allclose(
    residual_jacobian(bound, params).T, by_keys, rtol=1e-13
  )


def test_reduction_is_the_difference_of_the_sums_of_squares():
  """Against exact rational arithmetic on the float32 residuals themselves
  (a pytree with two leaves), where the plain difference has no digit left."""
  from fractions import Fraction

  from trncg_jax.least_squares import reduction

  rng = np.random.default_rng(0)
  r = {"a": rng.uniform(1e3, 2e3, 500), "b": rng.uniform(-1.0, 1.0, 7)}
  r = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), r)
  new = jax.tree.map(
    lambda v: v * (1 - jnp.float32(2**-20) * jnp.sign(v)), r
  )  # each |r_i| shrinks by 2^-20 relative, about 1 ulp
  exact = sum(
    Fraction(float(u)) ** 2 - Fraction(float(v)) ** 2
    for u, v in zip(
      np.concatenate([np.ravel(x) for x in jax.tree.leaves(r)]),
      np.concatenate([np.ravel(x) for x in jax.tree.leaves(new)]),
    )
  )
  np.testing.assert_allclose(float(reduction(r, new)), float(exact), rtol=1e-5)
  squares = lambda t: sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(t))
  plain = float(squares(r) - squares(new))
  assert abs(plain - float(exact)) > 1e-2 * float(exact)


def test_gauss_newton_product_is_two_jt_j_in_closed_form():
  params, a, y = _data()
  loss = trncg_jax.LeastSquares(exp_residuals).bind(a, y)
  v = {"w": jnp.array([0.3, -1.0, 2.0]), "b": jnp.asarray(-0.7)}
  out = jax.jit(lambda p, v: make_hvp(loss, p, "gauss_newton")(v))(params, v)
  assert jax.tree.structure(out) == jax.tree.structure(params)
  jac = exp_jacobian(params, a)
  v_flat = np.concatenate([np.asarray(v["w"]), [float(v["b"])]])
  expected = 2 * jac.T @ (jac @ v_flat)
  np.testing.assert_allclose(out["w"], expected[:3], rtol=1e-12)
  np.testing.assert_allclose(out["b"], expected[3], rtol=1e-12)
  # It is not the Hessian: the residuals' curvature term is missing.
  hessian_v = make_hvp(loss, params, "forward_over_reverse")(v)
  assert not np.allclose(hessian_v["w"], out["w"], rtol=1e-3)


def test_gauss_newton_product_from_the_jacobian_fn(monkeypatch):
  """With a ``jacobian_fn``, the product is ``2 J^T (J v)`` of the given
  ``J`` (the closed form); a ``jacobian_fn`` that doubles ``J`` quadruples
  the product, so the given ``J`` is what is used. Past
  ``DENSE_MAX_ENTRIES`` entries of ``J`` the residuals are linearized
  instead, and the doubled ``J`` is ignored."""
  from trncg_jax import least_squares

  def jacobian(params, a, y, scale=1.0):
    e = jnp.exp(a @ params["w"])
    return {"w": scale * e[:, None] * a, "b": scale * jnp.ones_like(y)}

  params, a, y = _data()
  v = {"w": jnp.array([0.3, -1.0, 2.0]), "b": jnp.asarray(-0.7)}
  jac = exp_jacobian(params, a)
  v_flat = np.concatenate([np.asarray(v["w"]), [float(v["b"])]])
  expected = 2 * jac.T @ (jac @ v_flat)

  def product(scale):
    loss = trncg_jax.LeastSquares(
      exp_residuals, lambda p, a, y: jacobian(p, a, y, scale)
    ).bind(a, y)
    out = jax.jit(lambda p, v: make_hvp(loss, p, "gauss_newton")(v))(params, v)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    dtypes = lambda t: jax.tree.map(lambda x: x.dtype, t)
    assert dtypes(out) == dtypes(params)
    return np.concatenate([np.asarray(out["w"]), [float(out["b"])]])

  np.testing.assert_allclose(product(1.0), expected, rtol=1e-12)
  np.testing.assert_allclose(product(2.0), 4 * expected, rtol=1e-12)
  monkeypatch.setattr(least_squares, "DENSE_MAX_ENTRIES", 4 * a.shape[0] - 1)
  np.testing.assert_allclose(product(2.0), expected, rtol=1e-12)


def test_linear_least_squares_solved_in_one_step():
  """For r = A x - b, G is the Hessian 2 A^T A: one full CG solve inside a
  large radius lands on the least-squares solution of NumPy's lstsq."""
  rng = np.random.default_rng(1)
  a = rng.standard_normal((20, 5))
  b = rng.standard_normal(20)
  loss = trncg_jax.LeastSquares(lambda x, a, b: a @ x - b)
  state = trncg_jax.trncg_init(
    jnp.zeros(5),
    hvp_mode="gauss_newton",
    initial_radius=100.0,
    max_radius=100.0,
    cg_tol=1e-12,
    inexact_newton=False,
  )
  x, state = trncg_jax.trncg_update(jnp.zeros(5), state, loss, a, b)
  assert int(state.info.cg_status) == trncg_jax.CGStatus.CONVERGED
  assert int(state.info.cg_steps) <= 5  # CG is exact in n steps
  np.testing.assert_allclose(
    x, np.linalg.lstsq(a, b, rcond=None)[0], rtol=1e-9, atol=1e-12
  )


def rosenbrock_residuals(x):
  """Rosenbrock as least squares: f = 100 (x1 - x0^2)^2 + (1 - x0)^2."""
  return jnp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def test_reaches_the_rosenbrock_minimum_without_negative_curvature():
  loss = trncg_jax.LeastSquares(rosenbrock_residuals)
  x0 = jnp.array([-1.2, 1.0])
  gn = trncg_jax.solve(
    loss,
    x0,
    grad_tol=1e-10,
    max_steps=200,
    optimizer=trncg_jax.trncg(hvp_mode="gauss_newton"),
  )
  assert gn.status == trncg_jax.SolveStatus.GRAD_TOL
  np.testing.assert_allclose(gn.params, [1.0, 1.0], rtol=1e-8)
  negative = trncg_jax.CGStatus.NEGATIVE_CURVATURE
  assert not np.any(gn.history["cg_status"] == negative)
  # G = 2 J^T J is positive semidefinite where the Hessian is not: at (0, 1),
  # H = diag(-398, 200) in closed form.
  x = jnp.array([0.0, 1.0])
  hvp = make_hvp(loss, x, "forward_over_reverse")
  gvp = make_hvp(loss, x, "gauss_newton")
  np.testing.assert_allclose(hvp(jnp.array([1.0, 0.0])), [-398.0, 0.0])
  for v in np.random.default_rng(0).standard_normal((20, 2)):
    assert float(v @ gvp(jnp.asarray(v))) >= 0.0


def test_optax_interface_with_kwargs_and_no_retracing():
  params, a, y = _data(seed=2)
  loss = trncg_jax.LeastSquares(exp_residuals)
  opt = trncg_jax.trncg(hvp_mode="gauss_newton")
  value_and_grad = optax.value_and_grad_from_state(loss)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state):
    value, grad = value_and_grad(params, state=state, a=a, y=y)
    updates, state = opt.update(
      grad, state, params, value=value, grad=grad, value_fn=loss, a=a, y=y
    )
    return optax.apply_updates(params, updates), state

  state = opt.init(params)
  for _ in range(30):
    params, state = step(params, state)
  # Stationary: J^T r = 0, checked with the hand-written Jacobian.
  r = np.asarray(exp_residuals(params, a, y))
  np.testing.assert_allclose(exp_jacobian(params, a).T @ r, 0.0, atol=1e-8)
  # The same iterates as the helper in test_transform, which re-traces freely.
  same, _ = run_optax(opt, loss, _data(seed=2)[0], 30, a=a, y=y)
  np.testing.assert_allclose(same["w"], params["w"], rtol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_preserved(dtype):
  loss = trncg_jax.LeastSquares(rosenbrock_residuals)
  x = jnp.array([-1.2, 1.0], dtype)
  state = trncg_jax.trncg_init(x, hvp_mode="gauss_newton")
  x, state = jax.jit(trncg_jax.trncg_update, static_argnums=2)(x, state, loss)
  assert x.dtype == dtype and state.value.dtype == dtype
  assert state.info.step_norm.dtype == dtype


def test_misuse_errors():
  x = jnp.array([-1.2, 1.0])
  plain = lambda p: jnp.sum(rosenbrock_residuals(p) ** 2)
  state = trncg_jax.trncg_init(x, hvp_mode="gauss_newton")
  with pytest.raises(TypeError, match="LeastSquares"):
    trncg_jax.trncg_update(x, state, plain)
  with pytest.raises(TypeError, match="callable"):
    trncg_jax.LeastSquares(np.ones(3))
  with pytest.raises(TypeError, match="callable jacobian_fn"):
    trncg_jax.LeastSquares(rosenbrock_residuals, np.ones(3))
  integer = trncg_jax.LeastSquares(lambda p: jnp.ones(2, jnp.int32) * 0)
  with pytest.raises(TypeError, match="float"):
    make_hvp(integer, x, "gauss_newton")
  with pytest.raises(ValueError, match="has_aux"):
    trncg_jax.trncg(hvp_mode="gauss_newton", has_aux=True)
