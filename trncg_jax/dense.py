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
steps. Where the Gauss-Newton direction is poor, the region would shrink
until its step is a sliver (:data:`DAMPED_BELOW`); there the step is the
Levenberg-Marquardt point on the boundary instead, which turns towards the
gradient (``CGStatus.DAMPED``), tried at a few radii around the region's
(:data:`SEARCH_SCALES`, moved up while the longest is the best:
:data:`SEARCH_EXTENSIONS`), of which the lowest loss wins. After a damped
step the model is formed in float32 (``low_precision`` of
:func:`dense_solver`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from trncg_jax._checks import norm_exponent, scale_tree
from trncg_jax.hvp import jaxprs_in
from trncg_jax.least_squares import (
  LeastSquares,
  check_residuals,
  raveled_jacobian,
)
from trncg_jax.status import CGStatus, first_true
from trncg_jax.steihaug import SteihaugResult

#: The floor of ``mu`` in ulps of ``tr(B)``: the best of 1, 10 and 100 on a
#: PINN (docs/benchmarks.md, "How the defaults were chosen").
DAMPING_FLOOR_ULPS = 10.0

#: The Gauss-Newton step cut by the region to less than this fraction of its
#: length switches to the Levenberg-Marquardt point (``CGStatus.DAMPED``).
#: At such a cut the direction is poor, not the length: at the start of the
#: discontinuous heat PINN the region shrank to 1e-9 of the step, where every
#: step gained 1e-9 of the loss with rho ~ 0.7 and the radius never grew. On
#: Poisson PINNs the smallest cut over 3,000 iterations was 6e-6.
DAMPED_BELOW = 1e-5

#: Radii, in units of the trust radius, at which the damped step (and, for
#: the comparison, the Gauss-Newton step) is tried; the lowest loss wins, and
#: the region goes on from its radius. One damped step spans the factor of 16
#: that a rejection (1/4) and two expansions (2 each) would take three steps
#: for: on the discontinuous heat PINN a third of the steps were rejected
#: without it, and none of 71 damped steps with it (docs/benchmarks.md, "How
#: the defaults were chosen").
SEARCH_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)

#: The most times the search moves its grid up by its span (16) while the
#: longest step is the best: a reach of 4 * 16^3 = 16,384 times the radius,
#: each move ten values of the loss. At the start of the discontinuous heat
#: PINN the region grew 8-fold an iteration for five iterations (1e-4 to
#: 0.5); with the moves it gets there within the first (docs/benchmarks.md,
#: "How the defaults were chosen").
SEARCH_EXTENSIONS = 3

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
    return raveled_jacobian(loss, params, flat.dtype).T
  residuals = lambda x: ravel_pytree(loss.residual_fn(unravel(x)))[0]
  return columns(jax.linearize(residuals, flat)[1], flat)


def columns(linear: Callable[[jax.Array], jax.Array], flat: jax.Array):
  """``linear`` applied to each unit vector of ``flat``'s space (the rows
  of the result), in batches (``jax.lax.map``) of at most
  :data:`JACOBIAN_BATCH_BYTES` counted intermediates, at least one."""
  footprint = intermediate_bytes(jax.make_jaxpr(linear)(flat).jaxpr)
  batch = max(1, min(flat.size, JACOBIAN_BATCH_BYTES // max(footprint, 1)))
  return jax.lax.map(
    linear, jnp.eye(flat.size, dtype=flat.dtype), batch_size=batch
  )


def dense_gauss_newton(
  loss: LeastSquares,
  params: Any,
  grad: Any,
  radius: jax.Array,
  damping: jax.Array,
  damped: jax.Array = False,
) -> SteihaugResult:
  """Solves the Gauss-Newton subproblem exactly in the norm of ``A``:
  ``dense_solver(loss, params, grad, damping)(radius, damped)``.

  The step is ``tau d``: a smaller region shortens it but never turns it.
  When the region cuts it below :data:`DAMPED_BELOW` of its length, or the
  last step was damped, the candidates are, for each ``s`` in
  :data:`SEARCH_SCALES`, the Levenberg-Marquardt point
  ``p = -(B + lambda I)^-1 g``, ``lambda >= mu`` with ``||p||_A = s Delta``,
  which turns towards ``-g`` as the region shrinks (``d`` itself past
  ``||d||_A``), and ``d`` cut to ``s Delta`` (one eigendecomposition, and ten
  values of ``loss`` in two vectorized calls). While the longest of them is
  the best and shorter than ``d``, the radii move up by the grid's span, 16,
  at most :data:`SEARCH_EXTENSIONS` times. The damped point with the lowest
  loss is the step, unless ``tau >= DAMPED_BELOW`` and a cut Gauss-Newton
  step gives a lower loss still (then the best of those). So damped steps
  grow the region until the Gauss-Newton step wins again, and the two do not
  alternate at the threshold.

  Args:
    loss: a :class:`trncg_jax.LeastSquares` of params alone.
    params: the current params (any pytree; raveled here, where the dense
      algebra needs a matrix).
    grad: the gradient of ``loss`` at ``params``.
    radius: ``Delta > 0``, in the norm of ``A``.
    damping: ``mu`` relative to the mean curvature ``tr(B) / P``. ``mu`` is
      floored at ``10 eps tr(B)``, so that the Cholesky factor of ``A``
      exists in the working precision (``cond(A) <= 1 / (10 eps)``).
    damped: whether the last step was the damped one (``CGStatus.DAMPED``).

  Returns:
    A :class:`trncg_jax.steihaug.SteihaugResult`: ``predicted_reduction`` of the
    Gauss-Newton model (with ``B``, not ``A``), ``step_norm = ||p||_A``,
    which is the radius of the step taken (the trust region goes on from
    it), ``steps = P`` (the JVPs that form ``J`` without a ``jacobian_fn``),
    ``status`` ``CONVERGED`` for the full step, ``HIT_BOUNDARY`` when
    shortened, ``DAMPED`` for the Levenberg-Marquardt point, ``NON_FINITE``
    (with a zero step) when ``J`` or the factorization is not finite.

  References:
    Nocedal & Wright, *Numerical Optimization*, 2nd ed., Section 4.3 (the
    scaled region ``||D p|| <= Delta``), pp. 95-97, and Section 10.3
    (Levenberg-Marquardt), pp. 258-262.
    Mueller & Zeinhofer, "Achieving high accuracy with PINNs via energy
    natural gradient descent", ICML 2023.
  """
  return dense_solver(loss, params, grad, damping)(radius, damped)


def dense_solver(
  loss: LeastSquares,
  params: Any,
  grad: Any,
  damping: jax.Array,
  objective: Callable[[Any], jax.Array] | None = None,
  low_precision: jax.Array | bool = False,
) -> Callable[[jax.Array, jax.Array], SteihaugResult]:
  """The factorization of :func:`dense_gauss_newton` at ``params``, once:
  returns ``solve(radius, damped)``, whose calls cost a product with ``J``
  and, in damped mode, an eigendecomposition and ten values of
  ``objective`` for each grid of radii searched (``loss`` when ``None``;
  the trust region passes its own loss, which differs from ``loss`` with a
  sub-batch's curvature), so that a rejected step can be tried again at a
  smaller radius without forming ``J`` again.

  Where ``low_precision`` (a traced bool) holds and the params are float64,
  ``B``, its Cholesky factor and its eigendecomposition are computed in
  float32 (at half the cost: :func:`in_float32`), and ``mu`` is floored at
  float32's ulps; ``J``, the gradient, the predicted reduction and the loss
  values stay float64, so the trust region still judges each step
  exactly."""
  objective = loss if objective is None else objective
  flat_grad, unravel = ravel_pytree(grad)
  dtype = flat_grad.dtype
  # Materialized before its uses: XLA:CPU would otherwise fuse the
  # Jacobian's elementwise producers into the scaling and into the operand
  # of J^T J, and compute them there again (on the heat PINN at 10,000
  # points, 3.4 s per factorization against 1.1 s).
  jac_t = jax.lax.optimization_barrier(
    residual_jacobian(loss, params).astype(dtype)
  )
  size = flat_grad.size
  # The system in units of 2^e ~ max |J|: exact scaling, so that J^T J
  # neither overflows nor underflows; d is unchanged by it.
  exponent = norm_exponent(jac_t)
  jac_t = scale_tree(jac_t, -exponent)
  g = scale_tree(scale_tree(flat_grad, -exponent), -exponent)
  # Fewer residuals than params: the same d from the N x N system, by
  # (2 J^T J + mu I)^-1 J^T = J^T (2 J J^T + mu I)^-1 and g = 2 J^T r.
  in_residual_space = jac_t.shape[1] < size
  curvature = in_float32(
    low_precision,
    lambda j: 2.0 * (j.T @ j if in_residual_space else j @ j.T),
    jac_t,
  )
  trace = jnp.trace(curvature)  # tr(2 J^T J) = tr(2 J J^T)
  eps = jnp.where(
    low_precision & (dtype == jnp.float64),
    jnp.finfo(jnp.float32).eps,
    jnp.finfo(dtype).eps,
  ).astype(dtype)
  mu = jnp.maximum(damping * trace / size, DAMPING_FLOOR_ULPS * eps * trace)
  factor = in_float32(
    low_precision,
    jnp.linalg.cholesky,
    curvature + mu * jnp.eye(curvature.shape[0], dtype=dtype),
  )
  if in_residual_space:
    r = ravel_pytree(loss.residual_fn(params))[0].astype(dtype)
    rhs = 2.0 * scale_tree(r, -exponent)
    to_params = lambda y: -jac_t @ y  # p = -J^T (2 J J^T + lam I)^-1 2r
  else:
    rhs, to_params = g, lambda y: -y
  d = to_params(jax.scipy.linalg.cho_solve((factor, True), rhs))
  d_norm_sq = -(g @ d)  # ||d||_A^2, in scaled units
  finite = jnp.all(jnp.isfinite(d)) & (d_norm_sq > 0)
  d = jnp.where(finite, d, 0.0)
  d_norm = scale_tree(jnp.sqrt(jnp.where(finite, d_norm_sq, 1.0)), exponent)

  def solve(radius: jax.Array, damped: jax.Array) -> SteihaugResult:
    tau = jnp.where(finite, jnp.minimum(1.0, radius / d_norm), 0.0)
    gauss_newton = (tau * d, jnp.asarray(False), tau * d_norm)
    step, is_damped, step_norm = jax.lax.cond(
      finite & (damped | (tau < DAMPED_BELOW)),
      lambda: damped_step(radius, tau),
      lambda: gauss_newton,
    )
    jp = jac_t.T @ step
    predicted = -(g @ step) - jp @ jp  # -(g.p + p.B.p / 2), B = 2 J^T J
    exit_code = first_true(
      [~finite, is_damped, step_norm < d_norm],
      [CGStatus.NON_FINITE, CGStatus.DAMPED, CGStatus.HIT_BOUNDARY],
      CGStatus.CONVERGED,
    )
    return SteihaugResult(
      step=unravel(step.astype(dtype)),
      predicted_reduction=scale_tree(
        scale_tree(predicted, exponent), exponent
      ).astype(dtype),
      step_norm=step_norm.astype(dtype),  # 0 when not finite: tau = 0
      steps=jnp.asarray(size, jnp.int32),
      status=exit_code,
      residual_norm=jnp.zeros((), dtype),
    )

  def damped_step(radius, tau):
    eigenvalues, vectors = in_float32(low_precision, jnp.linalg.eigh, curvature)
    eigenvalues = jnp.maximum(eigenvalues, 0.0)
    c = vectors.T @ rhs
    # ||p(lam)||_A^2 = sum_i weight_i / (lambda_i + lam)^2, decreasing in lam.
    weight = c**2 * (
      eigenvalues * (eigenvalues + mu) / 2.0
      if in_residual_space
      else eigenvalues + mu
    )
    norm_at = lambda lam: jnp.sqrt(jnp.sum(weight / (eigenvalues + lam) ** 2))

    # The region sets the scale, the loss picks the length: the damped
    # point at each of SEARCH_SCALES times the radius, one loss value each,
    # and the Gauss-Newton step cut to the same radii, for a fair choice.
    def candidates(radii):
      lams = jax.vmap(
        lambda t: bisect_decreasing(
          norm_at, t, mu, jnp.maximum(mu, jnp.sqrt(jnp.sum(weight)) / t)
        )
      )(scale_tree(radii, -exponent))
      taus = jnp.minimum(1.0, radii / d_norm)
      # Past d's length the damped point is d itself (lam = mu), exactly,
      # so that rounding never breaks the tie between the two.
      points = jnp.where(
        (taus < 1)[:, None],
        to_params(vectors @ (c[:, None] / (eigenvalues[:, None] + lams))).T,
        d,
      )
      return (
        radii,
        points,
        values_at(objective, params, unravel, points),
        taus,
        values_at(objective, params, unravel, taus[:, None] * d),
      )

    def longest_is_best(found):
      radii, _, values, _, gn_values = found
      return (radii[-1] < d_norm) & (
        jnp.minimum(values[-1], gn_values[-1])
        <= jnp.minimum(jnp.min(values), jnp.min(gn_values))
      )

    # While the longest step of the grid is the best, the grid moves up by
    # its span (its shortest radius is the last one's longest): a line
    # search along the Levenberg-Marquardt curve, so that a region far too
    # small grows to its scale within one factorization, not one per
    # iteration (Dennis & Schnabel's internal doubling).
    span = SEARCH_SCALES[-1] / SEARCH_SCALES[0]
    _, (radii, points, values, taus, gn_values) = jax.lax.while_loop(
      lambda carry: (carry[0] < SEARCH_EXTENSIONS) & longest_is_best(carry[1]),
      lambda carry: (carry[0] + 1, candidates(carry[1][0] * span)),
      (0, candidates(jnp.asarray(SEARCH_SCALES, dtype) * radius)),
    )
    k = jnp.argmin(values)
    j = jnp.argmin(gn_values)
    keep = (tau >= DAMPED_BELOW) & ~(values[k] < gn_values[j])
    gauss_newton = (taus[j] * d, jnp.asarray(False), taus[j] * d_norm)
    damped = (points[k], jnp.asarray(True), jnp.minimum(radii[k], d_norm))
    return jax.tree.map(
      lambda a, b: jnp.where(keep, a, b), gauss_newton, damped
    )

  return solve


def in_float32(low: jax.Array | bool, fun: Callable, operand: jax.Array):
  """``fun(operand)``, computed in float32 where ``low`` holds and
  ``operand`` is float64 (the results cast back to float64), else in
  ``operand``'s dtype: only the taken branch runs (``jax.lax.cond``)."""
  if operand.dtype != jnp.float64 or low is False:
    return fun(operand)
  return jax.lax.cond(
    low,
    lambda: jax.tree.map(
      lambda y: y.astype(operand.dtype), fun(operand.astype(jnp.float32))
    ),
    lambda: fun(operand),
  )


def values_at(loss, params, unravel, steps: jax.Array) -> jax.Array:
  """``loss`` at ``params`` plus each row of ``steps`` (raveled), in one
  vectorized call; ``inf`` where it is not finite, so that ``argmin`` never
  picks a NaN."""
  values = jax.vmap(lambda s: loss(optax.tree.add(params, unravel(s))))(steps)
  return jnp.where(jnp.isfinite(values), values, jnp.inf)


def bisect_decreasing(fun, target, lo, hi, iterations: int = 64):
  """``x`` in ``[lo, hi]`` with ``fun(x) <= target``, ``fun`` decreasing
  and ``fun(hi) <= target``: bisection in ``log x`` (``0 < lo <= hi``), whose
  64 halvings resolve any bracket of floats to rounding."""

  def halve(_, bracket):
    lo, hi = bracket
    mid = jnp.sqrt(lo * hi)
    above = fun(mid) > target
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  return jax.lax.fori_loop(0, iterations, halve, (lo, hi))[1]


def newton_solver(
  hvp: Callable[[Any], Any], params: Any, grad: Any
) -> Callable[[jax.Array, jax.Array], SteihaugResult]:
  """The trust-region subproblem of the exact Hessian ``H``, solved exactly
  in the Euclidean norm (Moré & Sorensen), for ``solver="dense"`` with an
  exact-Hessian ``hvp_mode``: ``H`` from ``P`` products of ``hvp`` (from
  :func:`trncg_jax.hvp.make_hvp`, pytrees like ``params``) and one
  eigendecomposition ``H = V diag(h) V^T`` at ``params``; returns
  ``solve(radius, _)``, whose calls cost a product with ``V``:

  .. math::

    p(\\lambda) = -(H + \\lambda I)^{-1} g, \\qquad
    \\lambda \\ge \\max(0, -h_{\\min}), \\qquad
    \\lambda\\,(\\Delta - \\|p(\\lambda)\\|) = 0,

  with ``lambda`` by bisection on the secular equation; in the hard case
  (``g`` nearly orthogonal to the eigenvectors of ``h_min``, so that
  ``||p(-h_min)|| < Delta``) the step adds the multiple of the lowest
  eigenvector that reaches the boundary.

  The status is ``CONVERGED`` for the Newton step inside the region,
  ``NEGATIVE_CURVATURE`` on the boundary where ``H`` is not positive
  definite, ``HIT_BOUNDARY`` on it otherwise, and ``NON_FINITE`` (a zero
  step) when ``H`` is not finite; ``steps = P``, the HVPs.

  References:
    Nocedal & Wright, *Numerical Optimization*, 2nd ed., Section 4.3,
    pp. 83-91 (Theorem 4.1, Algorithm 4.3 and the hard case).
    Moré & Sorensen, "Computing a trust region step", SIAM J. Sci. Stat.
    Comput. 4(3), 1983.
  """
  flat_grad, unravel = ravel_pytree(grad)
  flat_params, unravel_params = ravel_pytree(params)
  dtype = flat_grad.dtype
  product = lambda v: ravel_pytree(hvp(unravel_params(v)))[0].astype(dtype)
  hessian = columns(product, flat_params.astype(dtype))
  finite = jnp.all(jnp.isfinite(hessian)) & jnp.all(jnp.isfinite(flat_grad))
  hessian = jnp.where(finite, (hessian + hessian.T) / 2, 0.0)
  h, vectors = jnp.linalg.eigh(hessian)
  c = vectors.T @ flat_grad
  # Shifts below sqrt(eps) |H| past -h_min count as the hard case's: the
  # component along the lowest eigenvector is then c_min / shift, and
  # c_min's rounding (eps |g|) stays below sqrt(eps) of the step.
  tiny = jnp.sqrt(jnp.finfo(dtype).eps) * jnp.max(jnp.abs(h))
  tiny = jnp.where(tiny > 0, tiny, jnp.finfo(dtype).tiny)
  low = jnp.maximum(0.0, -h[0])
  norm_at = lambda lam: jnp.linalg.norm(c / (h + lam))

  def solve(radius: jax.Array, _) -> SteihaugResult:
    newton = (h[0] > 0) & (norm_at(0.0) <= radius)
    # ||p(low + s)|| decreases in s > 0; below radius from s = ||g|| / radius.
    shift = bisect_decreasing(
      lambda s: norm_at(low + s),
      radius,
      tiny,
      jnp.maximum(tiny, jnp.linalg.norm(c) / radius),
    )
    lam = jnp.where(newton, 0.0, low + shift)
    q = -c / (h + lam)
    # The hard case: fill up to the boundary along the lowest eigenvector,
    # in the direction that does not climb the gradient.
    short = ~newton & (jnp.linalg.norm(q) < radius)
    fill = jnp.sqrt(jnp.maximum(radius**2 - q[1:] @ q[1:], 0.0))
    q = q.at[0].set(
      jnp.where(short, -jnp.where(c[0] > 0, 1.0, -1.0) * fill, q[0])
    )
    q = jnp.where(finite, q, 0.0)
    predicted = -(c @ q + 0.5 * jnp.sum(h * q * q))
    status = first_true(
      [~finite, newton, h[0] <= 0],
      [CGStatus.NON_FINITE, CGStatus.CONVERGED, CGStatus.NEGATIVE_CURVATURE],
      CGStatus.HIT_BOUNDARY,
    )
    return SteihaugResult(
      step=unravel(vectors @ q),
      predicted_reduction=predicted.astype(dtype),
      step_norm=jnp.linalg.norm(q).astype(dtype),
      steps=jnp.asarray(flat_grad.size, jnp.int32),
      status=status,
      residual_norm=jnp.zeros((), dtype),
    )

  return solve
