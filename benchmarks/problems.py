"""The paper's problems as importable code: networks, data and losses.

Elementary functions (Boyd & Tanadi 2025, "Networks and Data"): the network
N_e is a tanh MLP 1 -> 10 -> (10 hidden-to-hidden layers of 10) -> 1, with
1,131 parameters, trained with MSE on 10,000 points x ~ U(-1.1, 1.1) and tested
on 10,000 points of linspace(-1, 1).

Heat PINN: u_t = alpha (u_xx + u_yy) on (0,1)^2 x (0,5), u = 0 on the bottom
and right edges, u = 1 on the top and left edges, u(., 0) = 0. The network N_p
is a tanh MLP 3 -> 24 -> (4 hidden-to-hidden layers of 24) -> 1, 2,521
parameters.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import trncg_jax
from trncg_jax.least_squares import per_point_jacobian

ELEMENTARY_FUNCTIONS: dict[str, Callable] = {
  "linear": lambda x: 5 * x + 3,
  "quadratic": lambda x: (x - 0.5) ** 2,
  "exponential": lambda x: jnp.exp(-x),
  "sin_shift": lambda x: jnp.sin(x - jnp.pi),
  "sin5": lambda x: jnp.sin(5 * x),
  "sin10": lambda x: jnp.sin(10 * x),
}

ELEMENTARY_LABELS = {
  "linear": "5x+3",
  "quadratic": "(x-1/2)^2",
  "exponential": "exp(-x)",
  "sin_shift": "sin(x-pi)",
  "sin5": "sin(5x)",
  "sin10": "sin(10x)",
}


class MLP(nnx.Module):
  """A tanh multilayer perceptron with a linear output layer."""

  def __init__(
    self, sizes: Sequence[int], *, rngs: nnx.Rngs, dtype=jnp.float32
  ):
    self.layers = nnx.List(
      [
        nnx.Linear(a, b, rngs=rngs, param_dtype=dtype, dtype=dtype)
        for a, b in zip(sizes[:-1], sizes[1:])
      ]
    )

  def __call__(self, x):
    for layer in self.layers[:-1]:
      x = jnp.tanh(layer(x))
    return self.layers[-1](x)


N_E_SIZES = (1,) + (10,) * 11 + (1,)
N_P_SIZES = (3,) + (24,) * 5 + (1,)


def count_params(params) -> int:
  return optax.tree.size(params)


@functools.lru_cache(maxsize=None)
def mlp_apply(sizes: tuple, dtype=jnp.float32) -> Callable:
  """``apply(params, x)`` for an MLP of ``sizes``: one function per
  architecture, so that jitted loops compile once for all seeds and targets."""
  graphdef, _ = nnx.split(MLP(sizes, rngs=nnx.Rngs(0), dtype=dtype))

  def apply(params, x):
    return nnx.merge(graphdef, params)(x)

  return apply


def init_mlp(sizes, seed: int, dtype=jnp.float32):
  """Returns ``(apply, params)``: ``apply(params, x)`` and an nnx.State."""
  _, params = nnx.split(MLP(sizes, rngs=nnx.Rngs(seed), dtype=dtype))
  return mlp_apply(tuple(sizes), dtype), params


class Problem(NamedTuple):
  """A training problem: ``loss(params, *train)``, plus its test data."""

  name: str
  apply: Callable
  params: object
  loss: Callable
  train: tuple
  test: tuple


def elementary_problem(
  name: str,
  n_train: int = 10_000,
  n_test: int = 10_000,
  seed: int = 0,
  dtype=jnp.float32,
) -> Problem:
  """An elementary-function fit with network N_e and an MSE loss."""
  f = ELEMENTARY_FUNCTIONS[name]
  rng = np.random.default_rng(seed)
  x_train = rng.uniform(-1.1, 1.1, (n_train, 1))
  x_test = np.linspace(-1.0, 1.0, n_test)[:, None]
  x_train, x_test = jnp.asarray(x_train, dtype), jnp.asarray(x_test, dtype)
  apply, params = init_mlp(N_E_SIZES, seed, dtype)
  return Problem(
    name,
    apply,
    params,
    _mse_loss(apply),
    (x_train, f(x_train)),
    (x_test, f(x_test)),
  )


@functools.lru_cache(maxsize=None)
def _mse_loss(apply):
  """The MSE ``mean((apply(params, x) - y)^2)``, written as its residuals so
  that trncg can use Gauss-Newton curvature; to any optimizer it is a loss."""

  def residuals(params, x, y):
    return (apply(params, x) - y) / jnp.sqrt(y.size)

  return trncg_jax.LeastSquares(residuals)


# --------------------------------------------------------------------------
# Heat equation u_t = alpha (u_xx + u_yy) on (0,1)^2 x (0, T).

#: Diffusivity. The paper does not state it. With alpha = 0.1 the diffusion
#: length sqrt(alpha t) is 0.32 at t = 1 (a transient: the test time) and 0.71
#: at t = 5 (close to the steady state), so (0, 5) spans both regimes.
HEAT_ALPHA = 0.1
HEAT_T_END = 5.0
#: Weight of the data terms in lambda (f_BC + f_IC) + (1 - lambda) f_PDE. Not
#: given in the paper; 0.5 weighs data and physics equally.
HEAT_LAMBDA = 0.5


def heat_boundary_value(x, y):
  """The paper's Dirichlet data: 1 on the top (y=1) and left (x=0) edges, 0 on
  the bottom (y=0) and right (x=1) edges. Corners take the top/left value."""
  return jnp.where((y >= 1.0) | (x <= 0.0), 1.0, 0.0)


def smooth_heat_exact(x, y, t, alpha=HEAT_ALPHA, xp=jnp):
  """u = exp(-2 alpha pi^2 t) sin(pi x) sin(pi y): zero Dirichlet data."""
  return (
    xp.exp(-2 * alpha * np.pi**2 * t) * xp.sin(np.pi * x) * xp.sin(np.pi * y)
  )


def latin_hypercube(n: int, bounds, seed: int) -> np.ndarray:
  """``n`` Latin-hypercube points in the box ``bounds = [(lo, hi), ...]``."""
  from scipy.stats import qmc  # pylint: disable=g-import-not-at-top

  sample = qmc.LatinHypercube(d=len(bounds), seed=seed).random(n)
  lo, hi = np.asarray(bounds, float).T
  return qmc.scale(sample, lo, hi)


class Collocation(NamedTuple):
  """PINN training points: ``interior`` (x, y, t) for the PDE, ``boundary``
  (x, y, t) on the four edges with values ``boundary_u``, ``initial`` (x, y,
  0) with values ``initial_u``."""

  interior: jax.Array
  boundary: jax.Array
  boundary_u: jax.Array
  initial: jax.Array
  initial_u: jax.Array


def heat_collocation(
  n: int = 10_000,
  boundary_fraction: float = 0.2,
  seed: int = 0,
  smooth: bool = False,
  dtype=jnp.float32,
  t_end: float = HEAT_T_END,
) -> Collocation:
  """Latin-hypercube collocation: ``boundary_fraction`` of the ``n`` points on
  the space-time boundary, half on the four edges, half on the t=0 face."""
  n_bnd = int(round(boundary_fraction * n))
  n_edge, n_init = n_bnd // 2, n_bnd - n_bnd // 2
  interior = latin_hypercube(n - n_bnd, [(0, 1), (0, 1), (0, t_end)], seed)
  s, t = latin_hypercube(n_edge, [(0, 1), (0, t_end)], seed + 1).T
  edge = np.arange(n_edge) % 4  # left, right, bottom, top in turn
  x = np.select([edge == 0, edge == 1], [0.0, 1.0], s)
  y = np.select([edge == 2, edge == 3], [0.0, 1.0], s)
  boundary = np.stack([x, y, t], axis=1)
  initial = np.concatenate(
    [
      latin_hypercube(n_init, [(0, 1), (0, 1)], seed + 2),
      np.zeros((n_init, 1)),
    ],
    axis=1,
  )
  if smooth:
    boundary_u = np.zeros(n_edge)
    initial_u = smooth_heat_exact(initial[:, 0], initial[:, 1], 0.0, xp=np)
  else:
    boundary_u = np.asarray(heat_boundary_value(x, y))
    initial_u = np.zeros(n_init)
  cast = lambda a: jnp.asarray(a, dtype)
  return Collocation(
    cast(interior),
    cast(boundary),
    cast(boundary_u),
    cast(initial),
    cast(initial_u),
  )


def second_derivative(u, points, i):
  """d^2 u / d x_i^2 at every row of ``points``, by nested forward mode.

  ``u`` maps (n, d) points to (n,) values point by point, so one JVP with the
  tangent e_i at every point gives du/dx_i at every point, and a JVP of that
  JVP the second derivative.
  """
  basis = jnp.zeros_like(points).at[:, i].set(1.0)
  first = lambda p: jax.jvp(u, (p,), (basis,))[1]
  return jax.jvp(first, (points,), (basis,))[1]


def heat_residual(apply, params, points, alpha):
  """u_t - alpha (u_xx + u_yy) at ``points`` (n, 3), by nested forward mode."""
  u = lambda p: apply(params, p)[:, 0]
  u_t = jax.jvp(u, (points,), (jnp.zeros_like(points).at[:, 2].set(1.0),))[1]
  return u_t - alpha * (
    second_derivative(u, points, 0) + second_derivative(u, points, 1)
  )


@functools.lru_cache(maxsize=None)
def heat_loss_fn(apply, alpha: float = HEAT_ALPHA, lam: float = HEAT_LAMBDA):
  """The PINN loss lambda (f_BC + f_IC) + (1 - lambda) f_PDE, each f a mean
  of squares, written as its weighted residuals (a ``LeastSquares`` loss)."""

  pde = lambda params, points: heat_residual(apply, params, points, alpha)
  value = lambda params, points: apply(params, points)[:, 0]

  def weigh(w, n, r):
    return optax.tree.scale(jnp.sqrt(w / n), r)

  def residuals(params, data: Collocation):
    weights = _heat_weights(data, lam)
    return (
      weigh(*weights[0], pde(params, data.interior)),
      weigh(*weights[1], value(params, data.boundary) - data.boundary_u),
      weigh(*weights[2], value(params, data.initial) - data.initial_u),
    )

  def jacobian(params, data: Collocation):
    weights = _heat_weights(data, lam)
    return (
      weigh(*weights[0], per_point_jacobian(pde, params, data.interior)),
      weigh(*weights[1], per_point_jacobian(value, params, data.boundary)),
      weigh(*weights[2], per_point_jacobian(value, params, data.initial)),
    )

  return trncg_jax.LeastSquares(residuals, jacobian)


def _heat_weights(data: Collocation, lam: float):
  """(weight, count) of the PDE, boundary and initial terms."""
  return (
    (1 - lam, data.interior.shape[0]),
    (lam, data.boundary.shape[0]),
    (lam, data.initial.shape[0]),
  )


def heat_fd_reference(
  t: float = 1.0,
  n: int = 201,
  dt: float = 2e-3,
  alpha: float = HEAT_ALPHA,
  smooth: bool = False,
  cache_dir=None,
):
  """Finite-difference solution on an ``n x n`` grid of [0,1]^2 at time ``t``.

  Five-point Laplacian (second order in space) and BDF2 in time after one
  backward-Euler step (second order, L-stable, so the jump between the
  initial and boundary data does not ring); each step is a sparse solve with
  a factorization computed once (``scipy.sparse.linalg.splu``). Cached on disk
  as ``.npz`` under ``cache_dir`` (default ``results/cache``).

  Returns:
    ``(grid, u)``: the 1-D grid coordinates and ``u[i, j] = u(x_i, y_j, t)``.
  """
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
  import scipy.sparse.linalg as spla  # pylint: disable=g-import-not-at-top

  cache_dir = pathlib.Path(cache_dir or pathlib.Path("results") / "cache")
  key = f"heat_fd_{'smooth' if smooth else 'paper'}_n{n}_dt{dt:g}_a{alpha:g}_t{t:g}.npz"
  path = cache_dir / key
  if path.exists():
    data = np.load(path)
    return data["grid"], data["u"]
  grid = np.linspace(0.0, 1.0, n)
  h = grid[1] - grid[0]
  m = n - 2  # interior nodes per direction
  lap1 = (
    sp.diags([np.ones(m - 1), -2 * np.ones(m), np.ones(m - 1)], [-1, 0, 1])
    / h**2
  )
  eye = sp.identity(m)
  lap = (sp.kron(lap1, eye) + sp.kron(eye, lap1)).tocsc()
  # Boundary contributions to the interior stencil (u[i, j], i along x).
  if smooth:
    full = np.zeros((n, n))
    full[1:-1, 1:-1] = smooth_heat_exact(
      grid[1:-1, None], grid[None, 1:-1], 0.0, alpha, xp=np
    )
  else:
    # Right (x = 1) and bottom (y = 0) edges stay 0; corners take the hot value.
    full = np.zeros((n, n))
    full[0, :] = 1.0  # left edge x = 0
    full[:, -1] = 1.0  # top edge y = 1
  bc = np.zeros((m, m))
  bc[0, :] += full[0, 1:-1]
  bc[-1, :] += full[-1, 1:-1]
  bc[:, 0] += full[1:-1, 0]
  bc[:, -1] += full[1:-1, -1]
  b = alpha * bc.ravel() / h**2
  u_prev = full[1:-1, 1:-1].ravel().copy()  # initial condition (0 inside)
  steps = int(round(t / dt))
  eye2 = sp.identity(m * m, format="csc")
  euler = spla.splu((eye2 - dt * alpha * lap).tocsc())
  u = euler.solve(u_prev + dt * b)
  bdf2 = spla.splu((3 * eye2 - 2 * dt * alpha * lap).tocsc())
  for _ in range(steps - 1):
    u, u_prev = bdf2.solve(4 * u - u_prev + 2 * dt * b), u
  full[1:-1, 1:-1] = u.reshape(m, m)
  cache_dir.mkdir(parents=True, exist_ok=True)
  np.savez(path, grid=grid, u=full)
  return grid, full


def interpolate_grid(grid, u, points_xy):
  """Bilinear interpolation of grid values at (x, y) points."""
  from scipy.interpolate import RegularGridInterpolator  # pylint: disable=g-import-not-at-top

  return RegularGridInterpolator((grid, grid), u)(points_xy)


def heat_problem(
  points: int,
  test_points: int,
  smooth: bool,
  dtype,
  fd_n: int,
  fd_dt: float,
  seed: int = 0,
):
  """The paper's heat PINN on N_p: ``(apply, params, data, test, reference)``
  with ``points`` collocation points, and the reference solution at t = 1 on
  ``test_points`` Latin-hypercube points (exact for the smooth problem, else
  finite differences on an ``fd_n`` grid with step ``fd_dt``); ``seed`` is
  the initial net's."""
  apply, params = init_mlp(N_P_SIZES, seed=seed, dtype=dtype)
  data = heat_collocation(points, seed=0, smooth=smooth, dtype=dtype)
  xy = latin_hypercube(test_points, [(0, 1), (0, 1)], seed=123)
  if smooth:
    reference = smooth_heat_exact(xy[:, 0], xy[:, 1], 1.0, xp=np)
  else:
    reference = interpolate_grid(*heat_fd_reference(1.0, fd_n, fd_dt), xy)
  test = jnp.asarray(np.concatenate([xy, np.ones((len(xy), 1))], 1), dtype)
  return apply, params, data, test, reference


def relative_l2(pred, ref) -> float:
  pred, ref = np.asarray(pred, float).ravel(), np.asarray(ref, float).ravel()
  return float(np.linalg.norm(pred - ref) / np.linalg.norm(ref))


# --------------------------------------------------------------------------
# 2d Poisson: -Delta u = 2 pi^2 sin(pi x) sin(pi y) on [0,1]^2, u = 0 on the
# boundary (Mueller & Zeinhofer 2023; Dangel, Mueller & Zeinhofer 2024).

POISSON_SIZES = {
  "poisson_257": (2, 64, 1),
  "poisson_9873": (2, 64, 64, 48, 48, 1),
}


def poisson_exact(xy, xp=jnp):
  """u* = sin(pi x) sin(pi y)."""
  return xp.sin(np.pi * xy[:, 0]) * xp.sin(np.pi * xy[:, 1])


class PoissonData(NamedTuple):
  """Fixed training points (``interior``, ``boundary``) and held-out ones."""

  interior: jax.Array
  boundary: jax.Array
  test: jax.Array


def poisson_data(
  n_interior: int = 900,
  n_boundary: int = 120,
  n_test: int = 9_000,
  seed: int = 0,
  dtype=jnp.float64,
) -> PoissonData:
  """Uniform random points in the square, on its edges, and held out."""
  rng = np.random.default_rng(seed)
  s, side = rng.uniform(0, 1, n_boundary), np.arange(n_boundary) % 4
  boundary = np.stack(
    [
      np.select([side == 0, side == 1], [0.0, 1.0], s),
      np.select([side == 2, side == 3], [0.0, 1.0], s),
    ],
    1,
  )
  cast = lambda a: jnp.asarray(a, dtype)
  return PoissonData(
    cast(rng.uniform(0, 1, (n_interior, 2))),
    cast(boundary),
    cast(rng.uniform(0, 1, (n_test, 2))),
  )


@functools.lru_cache(maxsize=None)
def poisson_loss_fn(apply):
  """1/2 mean(residual^2) + 1/2 mean(boundary^2), as weighted residuals, with
  their Jacobian by per-point gradients."""

  def pde(params, points):
    u = lambda p: apply(params, p)[:, 0]
    laplacian = second_derivative(u, points, 0) + second_derivative(
      u, points, 1
    )
    return -laplacian - 2 * np.pi**2 * poisson_exact(points)

  def boundary_value(params, points):
    return apply(params, points)[:, 0]

  def weigh(r, n):
    return optax.tree.scale(1 / jnp.sqrt(2.0 * n), r)

  def residuals(params, interior, boundary):
    return (
      weigh(pde(params, interior), interior.shape[0]),
      weigh(boundary_value(params, boundary), boundary.shape[0]),
    )

  def jacobian(params, interior, boundary):
    return (
      weigh(per_point_jacobian(pde, params, interior), interior.shape[0]),
      weigh(
        per_point_jacobian(boundary_value, params, boundary),
        boundary.shape[0],
      ),
    )

  return trncg_jax.LeastSquares(residuals, jacobian)


def rms(pred, ref) -> float:
  """The root mean square of ``pred - ref``."""
  diff = np.asarray(pred, float).ravel() - np.asarray(ref, float).ravel()
  return float(np.sqrt(np.mean(diff**2)))
