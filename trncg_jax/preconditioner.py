"""Preconditioners for CG-Steihaug: the identity and a randomized Nyström one.

A preconditioner ``M`` (symmetric positive definite) changes both CG's
iteration and the trust-region norm to ``||p||_M = sqrt(p^T M p)``. CG-Steihaug
needs ``M^{-1} r`` for the preconditioned residual and ``M d`` for the norms of
its iterates, so a :class:`Preconditioner` carries both.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from trncg_jax._checks import all_finite


class Preconditioner(NamedTuple):
  """A symmetric positive definite ``M``, applied to pytrees.

  Attributes:
    solve: ``v -> M^{-1} v``.
    matvec: ``v -> M v``.
  """

  solve: Callable[[Any], Any]
  matvec: Callable[[Any], Any]


IDENTITY = Preconditioner(solve=lambda v: v, matvec=lambda v: v)


class NystromFactors(NamedTuple):
  """The Nyström preconditioner ``M = U diag(inside) U^T + outside (I - U
  U^T)`` as arrays, so that a state can keep it between iterations.

  Attributes:
    basis: ``U``, ``n x s`` with orthonormal columns, on the raveled params.
    inside: the ``s`` eigenvalues of ``M`` on the columns of ``U``.
    outside: its eigenvalue on the rest.
  """

  basis: jax.Array
  inside: jax.Array
  outside: jax.Array

  @classmethod
  def identity(cls, like: Any, rank: int) -> "NystromFactors":
    """``M = I``, in the shapes of a rank-``rank`` sketch of ``like``."""
    flat = ravel_pytree(like)[0]
    return cls(
      jnp.zeros((flat.size, rank), flat.dtype),
      jnp.ones(rank, flat.dtype),
      jnp.ones((), flat.dtype),
    )

  def norm(self, v: Any) -> jax.Array:
    """``||v||_M = sqrt(v^T M v)`` of a pytree ``v``, from ``M``'s
    eigenvalues: ``outside ||v||^2 + sum (inside - outside) (U^T v)^2``."""
    x = ravel_pytree(v)[0]
    c = self.basis.T @ x
    square = self.outside * (x @ x) + jnp.sum(
      (self.inside - self.outside) * c**2
    )
    return jnp.sqrt(jnp.maximum(square, 0.0))

  def preconditioner(self, like: Any) -> Preconditioner:
    """``M`` and ``M^{-1}`` on pytrees like ``like``."""
    unravel = ravel_pytree(like)[1]
    u = self.basis

    def apply(inside, outside):
      """``v -> U diag(inside) U^T v + outside (I - U U^T) v``."""

      def fn(v):
        x = ravel_pytree(v)[0]
        return unravel(outside * x + u @ ((inside - outside) * (u.T @ x)))

      return fn

    return Preconditioner(
      solve=apply(1.0 / self.inside, 1.0 / self.outside),
      matvec=apply(self.inside, self.outside),
    )


def nystrom(
  matvec: Callable[[Any], Any],
  like: Any,
  rank: int,
  key: jax.Array,
  damping: float = 0.0,
) -> Preconditioner:
  """The randomized Nyström preconditioner of a positive semidefinite ``A``;
  see :func:`nystrom_factors`."""
  return nystrom_factors(matvec, like, rank, key, damping).preconditioner(like)


def nystrom_factors(
  matvec: Callable[[Any], Any],
  like: Any,
  rank: int,
  key: jax.Array,
  damping: float = 0.0,
) -> NystromFactors:
  """The randomized Nyström preconditioner of a positive semidefinite ``A``.

  ``rank`` products ``A omega_i``, with ``Omega`` the orthonormalized
  ``jax.random.normal(key, (n, rank))``, give the rank-``s`` approximation
  ``A ~ U diag(lam) U^T`` (Frangella, Tropp & Udell, Algorithm 2.1), and

  .. math::

    M = \\frac{U (\\Lambda + \\mu I) U^\\top
      + (\\lambda_s + \\mu)(I - U U^\\top)}{\\lambda_1 + \\mu},
    \\qquad \\mu = \\nu + \\text{damping}\\cdot\\lambda_1,

  their preconditioner for ``A + mu I`` (eq. 5.3), scaled to a largest
  eigenvalue of one. ``M^{-1} A`` has its top ``s`` eigenvalues near
  ``lam_1`` and the rest below. ``nu = sqrt(n) eps ||A Omega||`` is the
  algorithm's stability shift; it keeps ``M`` invertible when ``A`` has rank
  below ``s``.

  The scale (Frangella et al. divide by ``lam_s + mu``) leaves CG's iterates
  unchanged and sets the trust-region norm: ``||p||_M <= ||p||``, with
  equality along the stiffest direction, so the radius keeps the units of the
  params (and its defaults), while the region stretches along flat directions
  by up to ``1 / sqrt(damping)``. ``lam_1`` also moves little from one
  iteration to the next, unlike ``lam_s``; and ``A = 0`` gives ``M = I``, as
  does a sketch with a NaN or inf.

  The ``n x s`` factor ``U`` is a dense matrix that an SVD acts on, so it is
  kept on the raveled params (``jax.flatten_util.ravel_pytree``); the vectors
  passed in and out are pytrees like ``like``. The ``rank`` products are one
  ``jax.vmap`` of ``matvec``, not a loop.

  Args:
    matvec: ``v -> A v`` on pytrees like ``like``; ``A`` positive semidefinite
      (e.g. a Gauss-Newton matrix).
    like: a pytree of float arrays with the shape and dtype of ``v``.
    rank: the sketch size ``s``, at most the number of entries of ``like``.
    key: a ``jax.random`` key for the test matrix.
    damping: ``mu`` relative to ``lam_1``, ``>= 0``; it bounds the
      stretch of the trust region along flat directions.

  Returns:
    Its :class:`NystromFactors`; ``.preconditioner(like)`` applies it.

  Examples:
    A rank-2 matrix is captured exactly by a rank-2 sketch, so ``M^{-1} A``
    is ``lam_1 = 100`` times the projection on its range:

    >>> import jax, jax.numpy as jnp
    >>> from trncg_jax.preconditioner import nystrom_factors
    >>> a = jnp.diag(jnp.array([100.0, 1.0, 0.0, 0.0]))
    >>> factors = nystrom_factors(lambda v: a @ v, jnp.zeros(4), 2,
    ...                           jax.random.key(0))
    >>> pre = factors.preconditioner(jnp.zeros(4))
    >>> x = pre.solve(a @ jnp.ones(4))
    >>> bool(jnp.allclose(x, jnp.array([100.0, 100.0, 0.0, 0.0]), rtol=1e-3, atol=1e-2))
    True

  References:
    Frangella, Tropp & Udell, "Randomized Nyström preconditioning", SIAM J.
    Matrix Anal. Appl. 44(2), 2023, pp. 718-752: Algorithm 2.1 and eq. (5.3).
    Rathore, Lei, Frangella, Lu & Udell, "Challenges in training PINNs: a loss
    landscape perspective", ICML 2024 (Nyström-preconditioned Newton-CG).
  """
  flat, unravel = ravel_pytree(like)
  dtype = flat.dtype
  omega = jax.random.normal(key, (flat.size, rank), dtype)
  omega = jnp.linalg.qr(omega)[0]
  sketch = jax.vmap(
    lambda w: ravel_pytree(matvec(unravel(w)))[0], in_axes=1, out_axes=1
  )(omega)
  # The floor keeps M = I (not 0/0) when A vanishes on the sketch; sqrt(tiny)
  # rather than tiny, so that nu * omega does not underflow to zero.
  nu = jnp.maximum(
    jnp.sqrt(flat.size) * jnp.finfo(dtype).eps * jnp.linalg.norm(sketch, 2),
    jnp.sqrt(jnp.finfo(dtype).tiny),
  )
  shifted = sketch + nu * omega
  core = omega.T @ shifted
  chol = jnp.linalg.cholesky(0.5 * (core + core.T))
  factor = jax.scipy.linalg.solve_triangular(chol, shifted.T, lower=True).T
  u, sigma, _ = jnp.linalg.svd(factor, full_matrices=False)
  lam = jnp.maximum(sigma**2 - nu, 0.0)
  # Singular values come sorted: lam[0] is the largest, lam[-1] the smallest.
  mu = nu + damping * lam[0]
  factors = NystromFactors(
    u, (lam + mu) / (lam[0] + mu), (lam[-1] + mu) / (lam[0] + mu)
  )
  # A sketch with a NaN or inf (A's products, or a breakdown) gives M = I:
  # CG then runs unpreconditioned rather than on garbage.
  return optax.tree.where(
    all_finite(factors), factors, NystromFactors.identity(like, rank)
  )
