"""The Gauss-Newton trust-region subproblem solved densely, for small nets.

For a :class:`trncg_jax.LeastSquares` loss ``f = ||r||^2`` with few params
or few residuals, the residuals' Jacobian ``J`` (``N x P``) costs ``P`` JVPs
(or one call of the loss's ``jacobian_fn``), and the damped Gauss-Newton
system ``A d = -g``, ``A = B + mu I`` with ``B = 2 J^T J``, one Cholesky
factorization of size ``min(N, P)``. The region is measured in the norm of
``A``:

.. math::

  \\min_p\\; g^\\top p + \\tfrac12 p^\\top A p
  \\quad\\text{subject to}\\quad \\|p\\|_A \\le \\Delta,
  \\qquad p = \\tau d,\\; d = -A^{-1} g,\\;
  \\tau = \\min(1, \\Delta / \\|d\\|_A),

exactly (in the coordinates ``A^{1/2} p`` the model is a round bowl). Since
``||p||_A^2 ~ ||J p||^2``, the radius bounds how far the step moves the
residuals (function space), not the params: the step is always the
Gauss-Newton direction, as in energy natural gradient descent (ENGD), with a
length set by the trust region instead of a line search. The Euclidean region
of CG-Steihaug instead bends the step towards the stiff directions, which on
PINNs kept the radius at the edge of a ping-pong of accepted and rejected
steps.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from trncg_jax._checks import norm_exponent, scale_tree
from trncg_jax.hvp import jaxprs_in
from trncg_jax.least_squares import LeastSquares, check_residuals
from trncg_jax.status import CGStatus
from trncg_jax.steihaug import SteihaugResult

#: The floor of ``mu`` in ulps of ``tr(B)``: the best of 1, 10 and 100 on a
#: PINN (docs/benchmarks.md, "How the defaults were chosen").
DAMPING_FLOOR_ULPS = 10.0

#: Working memory of one batch of the JVPs that form ``J``: the batch size is
#: this over the bytes of one JVP's intermediates, counted in its jaxpr. A
#: PINN's residuals carry the net's second derivatives, so one JVP of 10,000
#: of them needs about a thousand times the memory of its output. The count
#: overestimates what XLA allocates about 10-fold (docs/benchmarks.md, "How
#: the defaults were chosen"), so 8 GiB counted is about 1 GiB allocated.
JACOBIAN_BATCH_BYTES = 2**33


def intermediate_bytes(jaxpr) -> int:
  """The bytes of every value a jaxpr computes, nested jaxprs included: an
  upper bound of its working memory (before XLA fuses and frees)."""
  return sum(
    sum(v.aval.size * v.aval.dtype.itemsize for v in eqn.outvars)
    + sum(
      intermediate_bytes(j) for p in eqn.params.values() for j in jaxprs_in(p)
    )
    for eqn in jaxpr.eqns
  )


def residual_jacobian(loss: LeastSquares, params: Any) -> jax.Array:
  """``J^T``, the transposed Jacobian of the raveled residuals (``P x N``).

  From ``loss.jacobian_fn`` when it is given; otherwise by ``P`` forward-mode
  products in batches (``jax.lax.map``) of at most
  :data:`JACOBIAN_BATCH_BYTES` counted intermediates, at least one JVP.

  Raises:
    TypeError: if ``jacobian_fn``'s output is not laid out like
      ``jax.jacrev(residual_fn)(params)``.
  """
  check_residuals(loss, params)
  flat, unravel = ravel_pytree(params)
  if loss.jacobian_fn is not None:
    return _raveled_jacobian(loss, params, flat.dtype).T
  residuals = lambda x: ravel_pytree(loss.residual_fn(unravel(x)))[0]
  _, jvp = jax.linearize(residuals, flat)
  footprint = intermediate_bytes(jax.make_jaxpr(jvp)(flat).jaxpr)
  batch = max(1, min(flat.size, JACOBIAN_BATCH_BYTES // max(footprint, 1)))
  return jax.lax.map(
    jvp, jnp.eye(flat.size, dtype=flat.dtype), batch_size=batch
  )


def _raveled_jacobian(loss: LeastSquares, params: Any, dtype) -> jax.Array:
  """``loss.jacobian_fn(params)`` as the ``N x P`` matrix of the raveled
  residuals and params (the orders of ``ravel_pytree``)."""
  residuals = jax.eval_shape(loss.residual_fn, params)
  jacobian = loss.jacobian_fn(params)
  expected = jax.tree.map(
    lambda r: jax.tree.map(lambda x: r.shape + jnp.shape(x), params),
    residuals,
  )
  if jax.tree.map(jnp.shape, jacobian) != expected:
    raise TypeError(
      "LeastSquares: jacobian_fn must return the layout of "
      f"jax.jacrev(residual_fn)(params), shapes {expected}; got "
      f"{jax.tree.map(jnp.shape, jacobian)}."
    )
  rows = [
    jnp.concatenate(
      [x.reshape(r.size, -1).astype(dtype) for x in jax.tree.leaves(block)], 1
    )
    for r, block in zip(
      jax.tree.leaves(residuals),
      jax.tree.structure(residuals).flatten_up_to(jacobian),
    )
  ]
  return jnp.concatenate(rows, 0)


def dense_gauss_newton(
  loss: LeastSquares,
  params: Any,
  grad: Any,
  radius: jax.Array,
  damping: jax.Array,
) -> SteihaugResult:
  """Solves the Gauss-Newton subproblem exactly in the norm of ``A``.

  Args:
    loss: a :class:`trncg_jax.LeastSquares` of params alone.
    params: the current params (any pytree; raveled here, where the dense
      algebra needs a matrix).
    grad: the gradient of ``loss`` at ``params``.
    radius: ``Delta > 0``, in the norm of ``A``.
    damping: ``mu`` relative to the mean curvature ``tr(B) / P``. ``mu`` is
      floored at ``10 eps tr(B)``, so that the Cholesky factor of ``A``
      exists in the working precision (``cond(A) <= 1 / (10 eps)``).

  Returns:
    A :class:`trncg_jax.steihaug.SteihaugResult`: ``predicted_reduction`` of the
    Gauss-Newton model (with ``B``, not ``A``), ``step_norm = ||p||_A``,
    ``steps = P`` (the JVPs that form ``J`` without a ``jacobian_fn``),
    ``status`` ``CONVERGED`` for the full step, ``HIT_BOUNDARY`` when
    shortened, ``NON_FINITE`` (with a zero step) when ``J`` or the
    factorization is not finite.

  References:
    Nocedal & Wright, *Numerical Optimization*, 2nd ed., Section 4.3 (the
    scaled region ``||D p|| <= Delta``), pp. 95-97, and Section 10.3
    (Levenberg-Marquardt), pp. 258-262.
    Mueller & Zeinhofer, "Achieving high accuracy with PINNs via energy
    natural gradient descent", ICML 2023.
  """
  flat_grad, unravel = ravel_pytree(grad)
  dtype = flat_grad.dtype
  jac_t = residual_jacobian(loss, params).astype(dtype)
  size = flat_grad.size
  # The system in units of 2^e ~ max |J|: exact scaling, so that J^T J
  # neither overflows nor underflows; d is unchanged by it.
  exponent = norm_exponent(jac_t)
  jac_t = scale_tree(jac_t, -exponent)
  g = scale_tree(scale_tree(flat_grad, -exponent), -exponent)
  # Fewer residuals than params: the same d from the N x N system, by
  # (2 J^T J + mu I)^-1 J^T = J^T (2 J J^T + mu I)^-1 and g = 2 J^T r.
  in_residual_space = jac_t.shape[1] < size
  curvature = 2.0 * (jac_t.T @ jac_t if in_residual_space else jac_t @ jac_t.T)
  trace = jnp.trace(curvature)  # tr(2 J^T J) = tr(2 J J^T)
  mu = jnp.maximum(
    damping * trace / size, DAMPING_FLOOR_ULPS * jnp.finfo(dtype).eps * trace
  )
  factor = jax.scipy.linalg.cho_factor(
    curvature + mu * jnp.eye(curvature.shape[0], dtype=dtype), lower=True
  )
  if in_residual_space:
    r = ravel_pytree(loss.residual_fn(params))[0].astype(dtype)
    d = -jac_t @ jax.scipy.linalg.cho_solve(
      factor, 2.0 * scale_tree(r, -exponent)
    )
  else:
    d = -jax.scipy.linalg.cho_solve(factor, g)
  d_norm_sq = -(g @ d)  # ||d||_A^2, in scaled units
  finite = jnp.all(jnp.isfinite(d)) & (d_norm_sq > 0)
  d_norm = scale_tree(jnp.sqrt(jnp.where(finite, d_norm_sq, 1.0)), exponent)
  tau = jnp.where(finite, jnp.minimum(1.0, radius / d_norm), 0.0)
  step = tau * jnp.where(finite, d, 0.0)
  jp = jac_t.T @ step
  predicted = -(g @ step) - jp @ jp  # -(g.p + p.B.p / 2), B = 2 J^T J
  exit_code = jnp.where(
    ~finite,
    CGStatus.NON_FINITE,
    jnp.where(tau < 1, CGStatus.HIT_BOUNDARY, CGStatus.CONVERGED),
  )
  return SteihaugResult(
    step=unravel(step.astype(dtype)),
    predicted_reduction=scale_tree(
      scale_tree(predicted, exponent), exponent
    ).astype(dtype),
    step_norm=(tau * d_norm).astype(dtype),
    steps=jnp.asarray(size, jnp.int32),
    status=exit_code.astype(jnp.int32),
    residual_norm=jnp.zeros((), dtype),
  )
