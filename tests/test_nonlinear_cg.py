"""Nonlinear CG: the CG notes' quadratic theory, SciPy's CG, safeguards."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import trncg_jax
from tests.reference import random_symmetric
from tests.test_trust_region import TEST_FUNCTIONS, rosenbrock
from trncg_jax.nonlinear_cg import BETA_RULES

update = jax.jit(trncg_jax.nonlinear_cg_update, static_argnums=2)


def run(loss, x0, steps, **options):
  x, state = x0, trncg_jax.nonlinear_cg_init(x0, **options)
  xs, directions = [x], []
  for _ in range(steps):
    x, state = update(x, state, loss)
    xs.append(x)
    directions.append(state.direction)
  return x, state, xs, directions


@pytest.mark.parametrize("n", [5, 12])
def test_quadratic_exact_steps_all_betas_agree_conjugate_n_steps(n):
  rng = np.random.default_rng(n)
  A = jnp.asarray(random_symmetric(rng, n, "spd", cond=50.0))
  b = jnp.asarray(rng.standard_normal(n))
  loss = lambda x: 0.5 * x @ A @ x - b @ x
  xstar = np.linalg.solve(np.asarray(A), np.asarray(b))
  runs = {
    rule: run(loss, jnp.zeros(n), n, beta=rule, linesearch="exact_quadratic")
    for rule in BETA_RULES
  }
  reference = runs["polak-ribiere-plus"]
  for rule, (x, state, xs, directions) in runs.items():
    # The minimizer in at most n steps (N&W Theorem 5.1).
    np.testing.assert_allclose(x, xstar, rtol=1e-8, atol=1e-10)
    # Identical iterates for every beta formula.
    for xi, xr in zip(xs, reference[2]):
      np.testing.assert_allclose(xi, xr, rtol=1e-10, atol=1e-10)
    # Successive directions are A-conjugate (while the gradient is nonzero).
    for d0, d1 in zip(directions[:-1], directions[1:]):
      scale = np.sqrt(float(d0 @ A @ d0) * float(d1 @ A @ d1))
      if scale > 1e-20:
        assert abs(float(d0 @ A @ d1)) <= 1e-8 * scale, rule
    assert not any(bool(s) for s in [state.info.restarted]) or n == 1


def scipy_cg_iterations(loss, x0):
  res = scipy.optimize.minimize(
    lambda z: float(loss(jnp.asarray(z))),
    np.asarray(x0),
    jac=lambda z: np.asarray(jax.grad(loss)(jnp.asarray(z))),
    method="CG",
    options=dict(gtol=1e-6, maxiter=5000),
  )
  assert res.success, res.message
  return res.nit


@pytest.mark.parametrize("name", TEST_FUNCTIONS)
def test_standard_functions_within_2x_of_scipy_cg(name):
  loss, x0, xstar = TEST_FUNCTIONS[name]
  x0 = jnp.asarray(x0)
  x, state = x0, trncg_jax.nonlinear_cg_init(x0)
  for k in range(1, 5001):  # noqa: B007 (k is the count after the loop)
    x, state = update(x, state, loss)
    if float(state.info.grad_norm) < 1e-6:
      break
  np.testing.assert_allclose(x, xstar, atol=1e-5)
  ref = scipy_cg_iterations(loss, x0)
  assert k <= 2 * ref, (k, ref)


def test_optax_interface_matches_pure_form_and_chains():
  x0 = jnp.array([-1.2, 1.0, 0.5])
  x_pure, state_pure, _, _ = run(rosenbrock, x0, 25)
  opt = optax.chain(trncg_jax.nonlinear_cg(), optax.scale(1.0))
  value_and_grad = optax.value_and_grad_from_state(rosenbrock)

  @jax.jit
  def step(x, state):
    value, grad = value_and_grad(x, state=state)
    updates, state = opt.update(
      grad, state, x, value=value, grad=grad, value_fn=rosenbrock
    )
    return optax.apply_updates(x, updates), state

  x, state = x0, opt.init(x0)
  for _ in range(25):
    x, state = step(x, state)
  np.testing.assert_allclose(x, x_pure, rtol=1e-12)
  assert int(state[0].info.linesearch_steps) >= 1


def test_forced_restarts():
  x0 = jnp.array([-1.2, 1.0])
  _, state, _, _ = run(rosenbrock, x0, 1, restart_every=1)
  for _ in range(5):
    x0, state = update(x0, state, rosenbrock)
    assert bool(state.info.restarted) and float(state.info.beta) == 0.0
  # A tiny Powell threshold restarts whenever gradients are not orthogonal.
  x = jnp.array([-1.2, 1.0])
  state = trncg_jax.nonlinear_cg_init(x, powell_nu=1e-12)
  restarts = []
  for _ in range(6):
    x, state = update(x, state, rosenbrock)
    restarts.append(bool(state.info.restarted))
  assert all(restarts)
  # With the default threshold, most steps are true CG steps (beta != 0).
  x = jnp.array([-1.2, 1.0] * 5)
  state = trncg_jax.nonlinear_cg_init(x, restart_every=50)
  flags = []
  for _ in range(20):
    x, state = update(x, state, rosenbrock)
    flags.append(bool(state.info.restarted))
  assert flags[0] and flags.count(False) >= 10, flags


def test_zero_gradient_gives_no_nan():
  x = jnp.array([1.0, 1.0])  # Rosenbrock's minimizer: g = 0 exactly
  state = trncg_jax.nonlinear_cg_init(x)
  for _ in range(3):
    x, state = update(x, state, rosenbrock)
    np.testing.assert_array_equal(x, [1.0, 1.0])
    assert bool(jnp.isfinite(state.info.loss))


def test_nan_region_keeps_params_finite():
  def loss(x):
    return jnp.where(jnp.sum(x**2) < 2.0**2, rosenbrock(x), jnp.nan)

  x = jnp.array([-1.2, 1.0])
  state = trncg_jax.nonlinear_cg_init(x)
  for _ in range(200):
    x, state = update(x, state, loss)
    assert bool(jnp.all(jnp.isfinite(x)))
  np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_pytrees_and_dtypes(dtype):
  params = {"w": jnp.full((2, 2), 2.0, dtype), "b": [jnp.zeros(3, dtype)]}
  loss = lambda p: (
    jnp.sum((p["w"] - 0.5) ** 2) + jnp.sum((p["b"][0] + 1) ** 2 * 3)
  )
  state = trncg_jax.nonlinear_cg_init(params)
  for _ in range(20):
    params, state = update(params, state, loss)
  for leaf in jax.tree.leaves((params, state.direction)):
    assert leaf.dtype == dtype
  assert state.info.loss.dtype == dtype and state.info.stepsize.dtype == dtype
  np.testing.assert_allclose(params["w"], 0.5, atol=1e-3)
  np.testing.assert_allclose(params["b"][0], -1.0, atol=1e-3)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(beta="hager-zhang"), "beta must be one of"),
    (dict(restart_every=0), "restart_every must be an integer in"),
    (dict(restart_every=2.5), "restart_every must be an integer in"),
    (dict(powell_nu=0.0), r"powell_nu must be a real number in \(0.0, inf\)"),
    (dict(linesearch="armijo"), "linesearch must be None"),
  ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
  with pytest.raises(ValueError, match=match):
    trncg_jax.nonlinear_cg(**kwargs)
  with pytest.raises(ValueError, match=match):
    trncg_jax.nonlinear_cg_init(jnp.zeros(2), **kwargs)


def test_type_errors():
  with pytest.raises(TypeError, match="non-float dtype"):
    trncg_jax.nonlinear_cg_init(jnp.zeros(2, jnp.int32))
  state = trncg_jax.nonlinear_cg_init(jnp.zeros(2))
  with pytest.raises(TypeError, match="scalar"):
    update(jnp.zeros(2), state, lambda x: x)
