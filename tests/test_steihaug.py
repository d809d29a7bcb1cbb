"""CG-Steihaug against an independent NumPy implementation of N&W Alg. 7.2."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.reference import random_symmetric, steihaug_numpy
from tests.test_status import equations
from trncg_jax.preconditioner import Preconditioner
from trncg_jax.status import CGStatus
from trncg_jax.steihaug import boundary_roots, cg_steihaug

jit_steihaug = jax.jit(
  lambda g, B, radius, tol, max_steps: cg_steihaug(
    g, lambda v: B @ v, radius, tol, max_steps
  )
)


@pytest.mark.parametrize("kind", ["spd", "indefinite"])
@pytest.mark.parametrize("seed", range(12))
def test_matches_numpy_reference(kind, seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(2, 25))
  B = random_symmetric(rng, n, kind)
  g = rng.standard_normal(n)
  radius = float(rng.choice([0.05, 0.5, 5.0, 100.0]))
  tol, max_steps = 1e-8, 3 * n  # reached well within n steps: no round-off tie
  p_ref, exit_ref, steps_ref = steihaug_numpy(g, B, radius, tol, max_steps)
  res = jit_steihaug(jnp.asarray(g), jnp.asarray(B), radius, tol, max_steps)
  np.testing.assert_allclose(
    np.asarray(res.step), p_ref, rtol=1e-10, atol=1e-10
  )
  assert CGStatus(int(res.status)).name == exit_ref
  assert int(res.steps) == steps_ref
  # The predicted reduction from CG's recurrences equals the explicit model.
  explicit = -(g @ p_ref + 0.5 * p_ref @ B @ p_ref)
  np.testing.assert_allclose(
    float(res.predicted_reduction), explicit, rtol=1e-9, atol=1e-12
  )
  np.testing.assert_allclose(
    float(res.step_norm), np.linalg.norm(p_ref), rtol=1e-10
  )


@pytest.mark.parametrize("kind", ["spd", "indefinite"])
@pytest.mark.parametrize("seed", range(8))
def test_preconditioned_matches_numpy_reference(kind, seed):
  """Steihaug's preconditioned form: ``M^{-1}`` on the residual and the region
  ``||p||_M <= radius``, against a reference that forms every M-norm from the
  dense ``M`` (ours carries them by recurrences of ``M d``)."""
  rng = np.random.default_rng(100 + seed)
  n = int(rng.integers(2, 20))
  B = random_symmetric(rng, n, kind)
  M = random_symmetric(rng, n, "spd", cond=10.0)
  g = rng.standard_normal(n)
  radius = float(rng.choice([0.05, 0.5, 5.0, 100.0]))
  tol, max_steps = 1e-7, 3 * n  # loose enough that no step ties with tol
  p_ref, exit_ref, steps_ref = steihaug_numpy(g, B, radius, tol, max_steps, M)
  M_j, B_j = jnp.asarray(M), jnp.asarray(B)
  pre = Preconditioner(
    solve=lambda v: jnp.linalg.solve(M_j, v), matvec=lambda v: M_j @ v
  )
  res = jax.jit(
    lambda g: cg_steihaug(g, lambda v: B_j @ v, radius, tol, max_steps, pre)
  )(jnp.asarray(g))
  np.testing.assert_allclose(np.asarray(res.step), p_ref, rtol=1e-9, atol=1e-10)
  assert CGStatus(int(res.status)).name == exit_ref
  assert int(res.steps) == steps_ref
  np.testing.assert_allclose(
    float(res.predicted_reduction),
    -(g @ p_ref + 0.5 * p_ref @ B @ p_ref),
    rtol=1e-9,
    atol=1e-12,
  )
  np.testing.assert_allclose(
    float(res.step_norm), np.sqrt(p_ref @ M @ p_ref), rtol=1e-9
  )
  if exit_ref in ("HIT_BOUNDARY", "NEGATIVE_CURVATURE"):
    np.testing.assert_allclose(np.sqrt(p_ref @ M @ p_ref), radius, rtol=1e-9)


def test_preconditioning_with_the_matrix_itself_converges_in_one_step():
  rng = np.random.default_rng(7)
  B = jnp.asarray(random_symmetric(rng, 30, "spd", cond=1e6))
  g = jnp.asarray(rng.standard_normal(30))
  pre = Preconditioner(
    solve=lambda v: jnp.linalg.solve(B, v), matvec=lambda v: B @ v
  )
  res = cg_steihaug(g, lambda v: B @ v, 1e6, 1e-8, 100, pre)
  plain = cg_steihaug(g, lambda v: B @ v, 1e6, 1e-8, 100)
  assert int(res.steps) == 1 and CGStatus(int(res.status)) == CGStatus.CONVERGED
  assert int(plain.steps) > 10
  np.testing.assert_allclose(
    np.asarray(res.step),
    -np.linalg.solve(np.asarray(B), np.asarray(g)),
    rtol=1e-6,
  )


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
  seed=st.integers(0, 2**31 - 1),
  n=st.integers(1, 12),
  kind=st.sampled_from(["spd", "indefinite"]),
  log_radius=st.floats(-3.0, 3.0),
  max_steps=st.integers(1, 30),
)
def test_step_inside_region_and_at_least_cauchy_decrease(
  seed, n, kind, log_radius, max_steps
):
  rng = np.random.default_rng(seed)
  B = random_symmetric(rng, n, kind)
  g = rng.standard_normal(n)
  radius = 10.0**log_radius
  res = jit_steihaug(jnp.asarray(g), jnp.asarray(B), radius, 1e-12, max_steps)
  p = np.asarray(res.step)
  assert np.linalg.norm(p) <= radius * (1 + 1e-6)
  decrease = -(g @ p + 0.5 * p @ B @ p)
  gnorm = np.linalg.norm(g)
  cauchy = (
    0.5 * gnorm * min(radius, gnorm / np.linalg.norm(B, 2))
  )  # N&W Lemma 4.3
  assert decrease >= cauchy * (1 - 1e-9)


@pytest.mark.parametrize("n", [3, 10, 40])
def test_spd_quadratic_solved_in_at_most_n_steps(n):
  rng = np.random.default_rng(n)
  # Well conditioned, so that finite precision keeps CG's n-step termination.
  A = random_symmetric(rng, n, "spd", cond=10.0)
  b = rng.standard_normal(n)
  # m(p) = -b.p + p.A.p/2 is minimized at A^{-1} b.
  res = jit_steihaug(-jnp.asarray(b), jnp.asarray(A), 1e6, 1e-10, 10 * n)
  np.testing.assert_allclose(
    np.asarray(res.step), np.linalg.solve(A, b), rtol=1e-8, atol=1e-10
  )
  assert CGStatus(int(res.status)) == CGStatus.CONVERGED
  assert int(res.steps) <= n


def test_pytree_gradient_gives_same_step_as_flat():
  rng = np.random.default_rng(0)
  B = random_symmetric(rng, 7, "indefinite")
  g = rng.standard_normal(7)
  flat = jit_steihaug(jnp.asarray(g), jnp.asarray(B), 1.0, 1e-10, 50)

  def hvp(tree):
    v = jnp.concatenate([tree["a"].ravel(), tree["b"]])
    out = jnp.asarray(B) @ v
    return {"a": out[:4].reshape(2, 2), "b": out[4:]}

  tree_g = {"a": jnp.asarray(g[:4]).reshape(2, 2), "b": jnp.asarray(g[4:])}
  res = cg_steihaug(tree_g, hvp, 1.0, 1e-10, 50)
  np.testing.assert_allclose(
    np.concatenate([np.ravel(res.step["a"]), res.step["b"]]),
    np.asarray(flat.step),
    rtol=1e-12,
    atol=1e-14,
  )
  assert res.step["a"].shape == (2, 2)


def test_zero_gradient_returns_zero_step_without_hvp():
  calls = []

  def hvp(v):
    calls.append(1)
    return v

  res = cg_steihaug(jnp.zeros(3), hvp, 1.0, 0.0, 10)
  assert int(res.steps) == 0 and CGStatus(int(res.status)) == CGStatus.CONVERGED
  assert float(jnp.abs(res.step).max()) == 0.0


def test_non_finite_hvp_gives_finite_boundary_step():
  g = jnp.array([3.0, -4.0])
  res = cg_steihaug(g, lambda v: v * jnp.nan, 0.5, 1e-10, 10)
  assert CGStatus(int(res.status)) == CGStatus.NON_FINITE
  np.testing.assert_allclose(np.asarray(res.step), -0.5 * np.asarray(g) / 5.0)
  # Linear model: m(0) - m(p) = radius * ||g||.
  np.testing.assert_allclose(float(res.predicted_reduction), 0.5 * 5.0)


def test_max_steps_exit():
  rng = np.random.default_rng(3)
  A = random_symmetric(rng, 20, "spd")
  res = jit_steihaug(jnp.ones(20), jnp.asarray(A), 1e6, 1e-14, 2)
  assert CGStatus(int(res.status)) == CGStatus.MAX_STEPS and int(res.steps) == 2


def test_boundary_roots_are_stable_when_b_dominates():
  # ||z + tau d|| = radius with z nearly on the boundary and z.d huge: the
  # textbook formula loses the small root to cancellation.
  zz, zd, dd, radius = 1.0 - 1e-12, 1e8, 1.0, 1.0
  tau_neg, tau_pos = boundary_roots(
    jnp.float64(zz), jnp.float64(zd), jnp.float64(dd), radius
  )
  c = zz - radius**2
  exact_small = -c / (zd + np.sqrt(zd**2 - dd * c))  # rationalized, exact here
  np.testing.assert_allclose(float(tau_pos), exact_small, rtol=1e-12)
  np.testing.assert_allclose(float(tau_neg), -2 * zd / dd, rtol=1e-12)
  # Vieta: the product of the roots is c / a.
  np.testing.assert_allclose(
    float(tau_neg) * float(tau_pos), c / dd, rtol=1e-12
  )


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_float32_scaled_subproblem_matches_the_unscaled_reference(scale):
  """g and B scaled by 1e30 (or 1e-30) in float32: ||g||^2 and d^T B d would
  overflow (underflow); the step is that of the unscaled problem, and the
  predicted reduction scales with them."""
  rng = np.random.default_rng(7)
  n = 8
  B = random_symmetric(rng, n, "spd", cond=20.0)
  g = rng.standard_normal(n)
  p_ref, exit_ref, _ = steihaug_numpy(
    g, B, 100.0, 1e-5 * np.linalg.norm(g), 3 * n
  )
  s = np.float32(scale)
  B_s = jnp.asarray(B, jnp.float32) * s
  res = jax.jit(
    lambda g: cg_steihaug(g, lambda v: B_s @ v, 100.0, 0.0, 3 * n, rtol=1e-5)
  )(jnp.asarray(g, jnp.float32) * s)
  assert CGStatus(int(res.status)).name == exit_ref == "CONVERGED"
  np.testing.assert_allclose(np.asarray(res.step), p_ref, rtol=1e-4, atol=1e-5)
  explicit = -(g @ p_ref + 0.5 * p_ref @ B @ p_ref) * scale
  np.testing.assert_allclose(
    float(res.predicted_reduction), explicit, rtol=1e-4
  )


def test_relative_tolerance_is_relative_to_the_gradient():
  """``||r|| <= rtol ||g||``: the same CG steps at any scale of g and B,
  against the reference with the absolute tolerance ``rtol ||g||``."""
  rng = np.random.default_rng(3)
  n = 30
  B = random_symmetric(rng, n, "spd", cond=1e3)
  g = rng.standard_normal(n)
  rtol = 1e-3
  _, _, steps_ref = steihaug_numpy(g, B, 1e6, rtol * np.linalg.norm(g), 3 * n)
  for scale in (1e-6, 1.0, 1e6):
    res = jit_rtol(jnp.asarray(g) * scale, jnp.asarray(B) * scale, rtol)
    assert int(res.steps) == steps_ref, scale
    assert float(res.residual_norm) <= rtol * scale * np.linalg.norm(g)


jit_rtol = jax.jit(
  lambda g, B, rtol: cg_steihaug(g, lambda v: B @ v, 1e6, 0.0, 90, rtol=rtol)
)


def test_scaling_multiplies_rather_than_emulating_frexp_per_entry():
  """``jnp.ldexp`` on an array emulates ``frexp`` with integer and select
  operations on every entry (4x a multiplication on a CPU; 3/4 of trncg's
  time on LIARWHD, n = 5000). CG's exact rescaling must multiply instead:
  its traced program bitcasts scalars only."""
  jaxpr = jax.make_jaxpr(
    lambda g: cg_steihaug(g, lambda v: 2.0 * v, 1.0, 1e-8, 10).step
  )(jnp.ones(1000))
  bitcasts = [
    e
    for e in equations(jaxpr.jaxpr)
    if e.primitive.name == "bitcast_convert_type"
  ]
  assert bitcasts  # the walk sees the scalar ones (the exponent, 2^e)
  assert all(v.aval.shape == () for e in bitcasts for v in e.outvars)


def test_a_cg_step_costs_one_hvp_one_solve_and_three_inner_products():
  """``||z||_M``, ``z^T M d``, ``||d||_M`` and ``r^T d`` come from recurrences
  (Conn, Gould & Toint, eqs. 7.5.6-7.5.7): M itself is never applied, and
  the loop body holds ``d^T B d``, ``r^T r`` and ``r^T y`` only."""
  rng = np.random.default_rng(11)
  M = jnp.asarray(random_symmetric(rng, 6, "spd", cond=10.0))

  def never(v):
    raise AssertionError("cg_steihaug applied M")

  pre = Preconditioner(solve=lambda v: jnp.linalg.solve(M, v), matvec=never)
  B = jnp.asarray(random_symmetric(rng, 6, "spd", cond=100.0))
  jaxpr = jax.make_jaxpr(
    lambda g: cg_steihaug(g, lambda v: B @ v, 10.0, 1e-10, 20, pre).step
  )(jnp.ones(6)).jaxpr
  (loop,) = [e for e in jaxpr.eqns if e.primitive.name == "while"]
  body = loop.params["body_jaxpr"].jaxpr
  dots = [e for e in equations(body) if e.primitive.name == "dot_general"]
  # B @ v, the solve's own products, and the inner products of CG.
  inner = [e for e in dots if all(v.aval.ndim == 1 for v in e.invars)]
  inner = [e for e in inner if e.outvars[0].aval.shape == ()]
  assert len(inner) == 3
