"""Independent NumPy references written from the book, used only by tests."""

import numpy as np


def steihaug_numpy(g, B, delta, tol, max_iter):
  """CG-Steihaug, N&W Algorithm 7.2 (p. 171), line by line, in plain NumPy.

  Boundary roots use the textbook quadratic formula; on negative curvature the
  root with the lower model value m(p) = g.p + p.B.p/2 is taken.
  Returns (p, exit_name, iterations).
  """
  def model(p):
    return g @ p + 0.5 * p @ B @ p

  def roots(z, d):
    a, b, c = d @ d, 2 * z @ d, z @ z - delta**2
    s = np.sqrt(b * b - 4 * a * c)
    return (-b - s) / (2 * a), (-b + s) / (2 * a)

  z = np.zeros_like(g)
  r = g.copy()
  d = -r
  if np.linalg.norm(r) <= tol:
    return z, "CONVERGED", 0
  for j in range(max_iter):
    Bd = B @ d
    if d @ Bd <= 0:
      ta, tb = roots(z, d)
      pa, pb = z + ta * d, z + tb * d
      return (pa if model(pa) < model(pb) else pb), "NEGATIVE_CURVATURE", j + 1
    alpha = (r @ r) / (d @ Bd)
    z_next = z + alpha * d
    if np.linalg.norm(z_next) >= delta:
      _, tb = roots(z, d)
      return z + tb * d, "HIT_BOUNDARY", j + 1
    r_next = r + alpha * Bd
    if np.linalg.norm(r_next) <= tol:
      return z_next, "CONVERGED", j + 1
    beta = (r_next @ r_next) / (r @ r)
    d = -r_next + beta * d
    z, r = z_next, r_next
  return z, "MAX_STEPS", max_iter


def random_symmetric(rng, n, kind, cond=100.0):
  """A random symmetric matrix: 'spd' (condition number <= cond) or 'indefinite'."""
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  if kind == "spd":
    eig = np.exp(rng.uniform(0.0, np.log(cond), n))
  else:
    eig = rng.uniform(-1.0, 1.0, n) * np.exp(rng.uniform(0.0, 2.0, n))
  return (q * eig) @ q.T
