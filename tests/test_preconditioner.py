"""The randomized Nyström preconditioner against a dense NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.reference import nystrom_numpy
from trncg_jax.preconditioner import IDENTITY, nystrom


def dense(fn, n):
  """The n x n matrix of the linear map ``fn``, column by column."""
  return np.stack([np.asarray(fn(jnp.asarray(e))) for e in np.eye(n)], 1)


def decaying_psd(rng, n, decay=0.7):
  """A PSD matrix with eigenvalues decay^i, as PINN Gauss-Newton spectra."""
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  return (q * decay ** np.arange(n)) @ q.T


@pytest.mark.parametrize(
  "rank,damping", [(1, 0.0), (5, 0.0), (12, 0.0), (12, 1e-3)]
)
def test_matches_dense_reference(rank, damping):
  rng = np.random.default_rng(rank)
  A = decaying_psd(rng, 30)
  key = jax.random.key(3)
  pre = nystrom(lambda v: jnp.asarray(A) @ v, jnp.zeros(30), rank, key, damping)
  # The documented test matrix: standard normal from ``key``, n x rank.
  omega = np.asarray(jax.random.normal(key, (30, rank), jnp.float64))
  M, M_inverse = nystrom_numpy(A, omega, damping)
  v = rng.standard_normal(30)
  np.testing.assert_allclose(
    np.asarray(pre.matvec(jnp.asarray(v))), M @ v, rtol=1e-9, atol=1e-12
  )
  np.testing.assert_allclose(
    np.asarray(pre.solve(jnp.asarray(v))), M_inverse @ v, rtol=1e-9, atol=1e-12
  )


def test_solve_inverts_matvec_and_is_symmetric_positive():
  rng = np.random.default_rng(0)
  A = decaying_psd(rng, 25)
  pre = nystrom(
    lambda v: jnp.asarray(A) @ v, jnp.zeros(25), 8, jax.random.key(0)
  )
  M, M_inverse = dense(pre.matvec, 25), dense(pre.solve, 25)
  np.testing.assert_allclose(M @ M_inverse, np.eye(25), atol=1e-9)
  np.testing.assert_allclose(M, M.T, atol=1e-12)
  assert np.linalg.eigvalsh(M).min() > 0


def test_exact_for_low_rank_and_clusters_the_spectrum():
  rng = np.random.default_rng(1)
  n, r = 40, 6
  B = rng.standard_normal((n, r)) * np.logspace(0, 4, r)
  A = B @ B.T  # rank 6, condition number of its range ~ 1e8
  pre = nystrom(
    lambda v: jnp.asarray(A) @ v, jnp.zeros(n), r, jax.random.key(2)
  )
  M = dense(pre.matvec, n)
  eig_A = np.linalg.eigvalsh(A)
  # A rank-r sketch recovers a rank-r matrix: lam_1 M = A + lam_r (I - P).
  projector = B @ np.linalg.pinv(B)
  np.testing.assert_allclose(
    eig_A[-1] * M,
    A + eig_A[-r] * (np.eye(n) - projector),
    atol=1e-6 * eig_A[-1],
  )
  # Preconditioned spectrum on the range: all lam_1, from a spread of 1e8.
  eig = np.linalg.eigvals(np.linalg.solve(M, A)).real
  np.testing.assert_allclose(np.sort(eig)[-r:], eig_A[-1], rtol=1e-4)
  assert eig_A[-1] / eig_A[-r] > 1e6


def test_pytree_vectors_match_flat():
  rng = np.random.default_rng(4)
  A = jnp.asarray(decaying_psd(rng, 9))
  key = jax.random.key(5)
  # ravel_pytree's order for this dict: "b" (3 entries), then "w" (2 x 3).
  ravel = lambda t: jnp.concatenate([t["b"], t["w"].ravel()])
  unravel = lambda x: {"b": x[:3], "w": x[3:].reshape(2, 3)}
  flat = nystrom(lambda v: A @ v, jnp.zeros(9), 4, key)
  tree = nystrom(lambda t: unravel(A @ ravel(t)), unravel(jnp.zeros(9)), 4, key)
  v = jnp.asarray(rng.standard_normal(9))
  for method in ("solve", "matvec"):
    out = getattr(tree, method)(unravel(v))
    assert jax.tree.structure(out) == jax.tree.structure(unravel(v))
    np.testing.assert_allclose(
      np.asarray(ravel(out)), np.asarray(getattr(flat, method)(v)), rtol=1e-10
    )


def test_damping_bounds_the_stretch():
  rng = np.random.default_rng(6)
  A = decaying_psd(rng, 40, decay=0.5)  # eigenvalues down to 2e-12
  for damping in (0.0, 1e-4, 1e-2):
    pre = nystrom(
      lambda v: jnp.asarray(A) @ v,
      jnp.zeros(40),
      30,
      jax.random.key(1),
      damping,
    )
    M = dense(pre.matvec, 40)
    eig = np.linalg.eigvalsh(0.5 * (M + M.T))
    np.testing.assert_allclose(eig.max(), 1.0, rtol=1e-9)
    assert eig.min() >= damping / (1 + damping) * (1 - 1e-9)
    if damping == 0.0:  # undamped, the flat directions get lam_s / lam_1
      assert eig.min() < 1e-6


@pytest.mark.parametrize(
  "matvec", [lambda v: 0.0 * v, lambda v: jnp.nan * v], ids=["vanishing", "nan"]
)
def test_float32_is_kept_and_degenerate_sketch_gives_identity(matvec):
  pre = nystrom(matvec, jnp.zeros(5, jnp.float32), 3, jax.random.key(0))
  v = jnp.arange(5, dtype=jnp.float32)
  for out in (pre.solve(v), pre.matvec(v)):
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.asarray(v), rtol=1e-6)
  assert IDENTITY.solve(v) is v
