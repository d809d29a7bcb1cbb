"""Independent NumPy references written from the book, used only by tests."""

import numpy as np


def steihaug_numpy(g, B, delta, tol, max_iter, M=None):
  """CG-Steihaug, N&W Algorithm 7.2 (p. 171), line by line, in plain NumPy.

  With a dense SPD ``M``, the preconditioned form of Steihaug (1983): the
  residual is preconditioned by solving with ``M`` and the region is
  ``sqrt(p.M.p) <= delta``, each norm computed from ``M`` itself.
  Boundary roots use the textbook quadratic formula; on negative curvature the
  root with the lower model value m(p) = g.p + p.B.p/2 is taken.
  Returns (p, exit_name, iterations).
  """
  M = np.eye(len(g)) if M is None else M

  def model(p):
    return g @ p + 0.5 * p @ B @ p

  def roots(z, d):
    a, b, c = d @ M @ d, 2 * z @ M @ d, z @ M @ z - delta**2
    s = np.sqrt(b * b - 4 * a * c)
    return (-b - s) / (2 * a), (-b + s) / (2 * a)

  z = np.zeros_like(g)
  r = g.copy()
  y = np.linalg.solve(M, r)
  d = -y
  if np.linalg.norm(r) <= tol:
    return z, "CONVERGED", 0
  for j in range(max_iter):
    Bd = B @ d
    if d @ Bd <= 0:
      ta, tb = roots(z, d)
      pa, pb = z + ta * d, z + tb * d
      return (pa if model(pa) < model(pb) else pb), "NEGATIVE_CURVATURE", j + 1
    alpha = (r @ y) / (d @ Bd)
    z_next = z + alpha * d
    if np.sqrt(z_next @ M @ z_next) >= delta:
      _, tb = roots(z, d)
      return z + tb * d, "HIT_BOUNDARY", j + 1
    r_next = r + alpha * Bd
    if np.linalg.norm(r_next) <= tol:
      return z_next, "CONVERGED", j + 1
    y_next = np.linalg.solve(M, r_next)
    beta = (r_next @ y_next) / (r @ y)
    d = -y_next + beta * d
    z, r, y = z_next, r_next, y_next
  return z, "MAX_STEPS", max_iter


def nystrom_numpy(A, omega, damping=0.0):
  """Randomized Nyström approximation (Frangella, Tropp & Udell 2023,
  Algorithm 2.1) and its preconditioner for A + mu I (eq. 5.3) scaled to a
  largest eigenvalue of one, as dense matrices, with mu the stability shift
  plus damping times the largest eigenvalue. Returns (M, M_inverse)."""
  n = A.shape[0]
  omega, _ = np.linalg.qr(omega)
  Y = A @ omega
  nu = np.sqrt(n) * np.finfo(A.dtype).eps * np.linalg.norm(Y, 2)
  Y_nu = Y + nu * omega
  C = np.linalg.cholesky(omega.T @ Y_nu)
  B = np.linalg.solve(C, Y_nu.T).T
  U, S, _ = np.linalg.svd(B, full_matrices=False)
  lam = np.maximum(S**2 - nu, 0.0)
  mu = nu + damping * lam[0]
  outside = np.eye(n) - U @ U.T
  M = ((U * (lam + mu)) @ U.T + (lam[-1] + mu) * outside) / (lam[0] + mu)
  M_inverse = (lam[0] + mu) * (
    (U / (lam + mu)) @ U.T + outside / (lam[-1] + mu)
  )
  return M, M_inverse


def random_symmetric(rng, n, kind, cond=100.0):
  """A random symmetric matrix: 'spd' (condition number <= cond) or 'indefinite'."""
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  if kind == "spd":
    eig = np.exp(rng.uniform(0.0, np.log(cond), n))
  else:
    eig = rng.uniform(-1.0, 1.0, n) * np.exp(rng.uniform(0.0, 2.0, n))
  return (q * eig) @ q.T
