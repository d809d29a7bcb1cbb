"""CG-Steihaug: conjugate gradient for the trust-region subproblem.

Approximately solves

.. math::

  \\min_p\\; m(p) = g^\\top p + \\tfrac12 p^\\top B p
  \\quad\\text{subject to}\\quad \\|p\\| \\le \\Delta

using only products ``B v``, in a ``lax.while_loop`` over pytrees.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from trncg_jax._checks import norm_exponent, scale_tree
from trncg_jax.preconditioner import IDENTITY, Preconditioner
from trncg_jax.status import CGStatus, first_true


class SteihaugResult(NamedTuple):
  """The solution of the trust-region subproblem, with its stats.

  Attributes:
    step: the step ``p``, a pytree like the gradient.
    predicted_reduction: ``m(0) - m(p)``, from CG's own recurrences.
    step_norm: ``||p||``, or ``||p||_M`` with a preconditioner ``M``.
    steps: the number of CG iterations, equal to the number of HVPs.
    status: a :class:`CGStatus`, as an int32 array.
    residual_norm: ``||g + B z||`` at the last interior iterate.
  """

  step: Any
  predicted_reduction: jax.Array
  step_norm: jax.Array
  steps: jax.Array
  status: jax.Array
  residual_norm: jax.Array


def boundary_roots(zz, zd, dd, radius):
  """Both roots ``tau`` of ``||z + tau d|| = radius`` for ``||z|| <= radius``.

  Written as ``q = -(b + sign(b) sqrt(b^2 - a c))``, roots ``q / a`` and
  ``c / q`` (with ``a = d.d``, ``b = z.d``, ``c = z.z - radius^2 <= 0``), which
  avoids the cancellation of the textbook formula when ``|b|`` dominates.

  Args:
    zz: ``z.z``.
    zd: ``z.d``.
    dd: ``d.d``, positive.
    radius: the trust-region radius.

  Returns:
    ``(tau_neg, tau_pos)`` with ``tau_neg <= 0 <= tau_pos``.

  References:
    Press et al., *Numerical Recipes*, 3rd ed., Section 5.6, p. 227.
  """
  c = jnp.minimum(zz - radius**2, 0.0)  # z is inside, so c <= 0 exactly
  sq = jnp.sqrt(jnp.maximum(zd**2 - dd * c, 0.0))
  q = -(zd + jnp.where(zd >= 0, sq, -sq))
  safe_q = jnp.where(q == 0, 1.0, q)
  root1 = q / jnp.where(dd > 0, dd, 1.0)
  root2 = jnp.where(q == 0, 0.0, c / safe_q)
  return jnp.minimum(root1, root2), jnp.maximum(root1, root2)


class _Carry(NamedTuple):
  steps: jax.Array
  z: Any
  r: Any
  d: Any
  rr: jax.Array  # r.r
  ry: jax.Array  # r.M^{-1}r
  zz: jax.Array  # ||z||_M^2
  zd: jax.Array  # z^T M d
  dd: jax.Array  # ||d||_M^2
  model: jax.Array  # m(z) - m(0)
  status: jax.Array
  done: jax.Array


def cg_steihaug(
  grad: Any,
  hvp: Callable[[Any], Any],
  radius: jax.Array,
  tol: jax.Array,
  max_steps: jax.Array,
  preconditioner: Preconditioner = IDENTITY,
  rtol: jax.Array = 0.0,
) -> SteihaugResult:
  """Solves the trust-region subproblem by CG-Steihaug (N&W Algorithm 7.2).

  Starting from ``z_0 = 0``, ``r_0 = g``, ``y_0 = M^{-1} r_0``, ``d_0 = -y_0``,
  CG iterates ``z_{j+1} = z_j + alpha_j d_j`` with ``alpha_j = r_j^T y_j /
  d_j^T B d_j`` until one of: ``d_j^T B d_j <= 0`` (go to the boundary along
  ``d_j``, at the root of lower model value); ``||z_{j+1}||_M >= radius``
  (stop on the boundary); ``||r_{j+1}|| <= max(tol, rtol ||g||)``;
  ``max_steps`` iterations.
  Without a preconditioner ``M = I``: N&W's algorithm exactly. With one, the
  region is ``||p||_M <= radius`` (Steihaug's own, preconditioned, form).

  The model value is carried by the exact recurrence
  ``m(z + tau d) - m(z) = tau r^T d + tau^2 d^T B d / 2`` with ``r = g + B z``
  and ``r^T d = -r^T y`` (``r`` is orthogonal to the previous direction), so
  the predicted reduction costs no extra Hessian-vector product. ``||z||_M``,
  ``z^T M d`` and ``||d||_M`` follow Conn, Gould & Toint's recurrences: a CG
  step costs one HVP, one preconditioner solve and three inner products
  (``d^T B d``, ``r^T r`` and ``r^T y``, the last two one without a
  preconditioner), and never applies ``M``.

  Args:
    grad: the gradient ``g``, any pytree of float arrays.
    hvp: ``v -> B v`` on pytrees shaped like ``grad``.
    radius: the trust-region radius ``Delta > 0``, in the norm of ``M``.
    tol: absolute tolerance on the residual norm ``||g + B z||``.
    rtol: tolerance on it relative to ``||g||``.
    max_steps: the largest number of CG iterations (of HVPs).
    preconditioner: a :class:`trncg_jax.preconditioner.Preconditioner`,
      e.g. :func:`trncg_jax.preconditioner.nystrom`; the identity by default.

  Returns:
    A :class:`SteihaugResult`; its ``step_norm`` is ``||p||_M``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from trncg_jax import CGStatus
    >>> from trncg_jax.steihaug import cg_steihaug
    >>> A = jnp.array([[2.0, 0.0], [0.0, 4.0]])
    >>> res = cg_steihaug(jnp.array([-2.0, -4.0]), lambda v: A @ v, 10.0, 1e-6, 10)
    >>> print(jnp.round(res.step, 4), CGStatus(int(res.status)).name, int(res.steps))
    [1. 1.] CONVERGED 2

  References:
    Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithm 7.2
    (CG-Steihaug), p. 171; Theorem 7.3, p. 172.
    Steihaug, "The conjugate gradient method and trust regions in large scale
    optimization", SIAM J. Numer. Anal. 20(3), 1983, pp. 626-637.
    Conn, Gould & Toint, *Trust-Region Methods*, SIAM, 2000, Section 7.5.1,
    eqs. (7.5.6)-(7.5.7) (the recurrences for ``z^T M d`` and ``||d||_M``).
  """
  dtype = jnp.result_type(*jax.tree_util.tree_leaves(grad))
  radius = jnp.asarray(radius, dtype)
  # CG runs on the subproblem divided by sigma = 2^e ~ max |g_i|: the same
  # minimizer and region, with ||g / sigma|| = O(1), so that r^T r and
  # d^T B d neither overflow nor underflow however the loss is scaled (1e30 x
  # a quadratic in float32). A power of two, applied exactly, so CG's
  # arithmetic is the unscaled one's, bit for bit.
  exponent = norm_exponent(grad)
  grad = scale_tree(grad, -exponent)
  unscaled_hvp = hvp
  hvp = lambda v: scale_tree(unscaled_hvp(v), -exponent)
  y0 = preconditioner.solve(grad)
  rr0 = optax.tree.vdot(grad, grad).astype(dtype)
  ry0 = optax.tree.vdot(grad, y0).astype(dtype)
  # In scaled units, where the relative tolerance cannot underflow.
  tol = jnp.maximum(
    scale_tree(jnp.asarray(tol, dtype), -exponent),
    jnp.asarray(rtol, dtype) * jnp.sqrt(rr0),
  )
  zeros = optax.tree.zeros_like(grad)
  zero = jnp.zeros((), dtype)
  init = _Carry(
    steps=jnp.zeros((), jnp.int32),
    z=zeros,
    r=grad,
    d=optax.tree.scale(-1.0, y0),
    rr=rr0,
    ry=ry0,
    zz=zero,
    zd=zero,
    dd=ry0,
    model=zero,
    status=jnp.asarray(CGStatus.CONVERGED, jnp.int32),
    done=jnp.sqrt(rr0) <= tol,
  )

  def body(c: _Carry) -> _Carry:
    bd = hvp(c.d)
    curvature = optax.tree.vdot(c.d, bd)
    zd, dd = c.zd, c.dd
    # r^T d = -r^T y + beta r^T d_prev, and r is orthogonal to d_prev.
    rd = -c.ry
    finite = jnp.isfinite(curvature)
    # A non-finite curvature is treated as zero: the model turns linear.
    curvature_used = jnp.where(finite, curvature, 0.0)

    def model_at(tau):
      return c.model + tau * rd + 0.5 * tau**2 * curvature_used

    tau_neg, tau_pos = boundary_roots(c.zz, zd, dd, radius)
    go_to_boundary = (curvature <= 0) | ~finite
    tau_boundary_min = jnp.where(
      model_at(tau_neg) < model_at(tau_pos), tau_neg, tau_pos
    )
    alpha = c.ry / jnp.where(go_to_boundary, 1.0, curvature)
    zz_interior = c.zz + 2 * alpha * zd + alpha**2 * dd
    hits = ~go_to_boundary & (zz_interior >= radius**2)
    tau = jnp.where(
      go_to_boundary, tau_boundary_min, jnp.where(hits, tau_pos, alpha)
    )

    r_next = optax.tree.add_scale(c.r, alpha, bd)
    y_next = preconditioner.solve(r_next)
    rr_next = optax.tree.vdot(r_next, r_next)
    ry_next = optax.tree.vdot(r_next, y_next)
    converged = ~go_to_boundary & ~hits & (jnp.sqrt(rr_next) <= tol)
    beta = ry_next / jnp.where(c.ry > 0, c.ry, 1.0)
    steps = c.steps + 1
    exit_code = first_true(
      [~finite, go_to_boundary, hits, converged],
      [
        CGStatus.NON_FINITE,
        CGStatus.NEGATIVE_CURVATURE,
        CGStatus.HIT_BOUNDARY,
        CGStatus.CONVERGED,
      ],
      CGStatus.MAX_STEPS,
    )
    stopped = go_to_boundary | hits
    return _Carry(
      steps=steps,
      z=optax.tree.add_scale(c.z, tau, c.d),
      r=r_next,
      d=optax.tree.add_scale(optax.tree.scale(-1.0, y_next), beta, c.d),
      rr=jnp.where(stopped, c.rr, rr_next),
      ry=jnp.where(stopped, c.ry, ry_next),
      zz=c.zz + 2 * tau * zd + tau**2 * dd,
      zd=beta * (zd + alpha * dd),
      dd=ry_next + beta**2 * dd,
      model=model_at(tau),
      status=exit_code,
      done=stopped | converged | (steps >= max_steps),
    )

  out = jax.lax.while_loop(lambda c: ~c.done, body, init)
  return SteihaugResult(
    step=out.z,
    predicted_reduction=scale_tree(-out.model, exponent),
    step_norm=jnp.sqrt(jnp.maximum(out.zz, 0.0)),
    steps=out.steps,
    status=out.status,
    residual_norm=scale_tree(jnp.sqrt(out.rr), exponent),
  )
