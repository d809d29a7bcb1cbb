"""The paper's TRNCG re-implemented in PyTorch, as a baseline for perf.py.

A faithful, straightforward implementation of what the paper describes:
N&W Algorithm 4.1 (trust region) around Algorithm 7.2 (CG-Steihaug), with
Hessian-vector products from ``torch.autograd.functional.vhp`` and params as
one flat vector. The model reduction comes from CG's recurrences, as in
trncg_jax, so both do the same work per iteration (one value-and-gradient and
one HVP per CG step). Needs the optional extra: ``pip install -e ".[torch]"``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch


def n_e_from_params(params) -> torch.nn.Sequential:
  """The tanh MLP N_e in PyTorch, with the weights of an nnx params state."""
  kernels = [
    np.asarray(layer["kernel"][...]) for layer in params["layers"].values()
  ]
  biases = [
    np.asarray(layer["bias"][...]) for layer in params["layers"].values()
  ]
  modules = []
  for i, (w, b) in enumerate(zip(kernels, biases)):
    linear = torch.nn.Linear(w.shape[0], w.shape[1])
    with torch.no_grad():
      linear.weight.copy_(torch.from_numpy(w.T.copy()))
      linear.bias.copy_(torch.from_numpy(b.copy()))
    modules.append(linear)
    if i < len(kernels) - 1:
      modules.append(torch.nn.Tanh())
  return torch.nn.Sequential(*modules)


def _boundary_tau(p, d, radius):
  """The tau >= 0 with ||p + tau d|| = radius."""
  a, b, c = d @ d, 2 * (p @ d), p @ p - radius**2
  return (-b + torch.sqrt(b * b - 4 * a * c)) / (2 * a)


def steihaug(g, hvp, radius, tol, max_steps):
  """N&W Algorithm 7.2: returns (step, predicted reduction, CG steps)."""
  p = torch.zeros_like(g)
  r, d = g.clone(), -g
  reduction = torch.zeros((), dtype=g.dtype)  # m(0) - m(p), by recurrence
  if torch.linalg.norm(r) < tol:
    return p, reduction, 0
  for j in range(1, max_steps + 1):
    hd = hvp(d)
    curvature = d @ hd
    rr = r @ r
    if curvature <= 0:
      tau = _boundary_tau(p, d, radius)
      # m(p + tau d) - m(p) = tau r.d + tau^2 d.Hd / 2
      return (
        p + tau * d,
        reduction - (tau * (r @ d) + 0.5 * tau**2 * curvature),
        j,
      )
    alpha = rr / curvature
    p_next = p + alpha * d
    if torch.linalg.norm(p_next) >= radius:
      tau = _boundary_tau(p, d, radius)
      return (
        p + tau * d,
        reduction - (tau * (r @ d) + 0.5 * tau**2 * curvature),
        j,
      )
    reduction = reduction + 0.5 * alpha * rr
    r_next = r + alpha * hd
    if torch.linalg.norm(r_next) < tol:
      return p_next, reduction, j
    d = -r_next + (r_next @ r_next) / rr * d
    r, p = r_next, p_next
  return p, reduction, max_steps


def run(
  params,
  x,
  y,
  iterations: int,
  initial_radius=2.0,
  max_radius=10.0,
  eta=1e-3,
  cg_tol=1e-8,
  max_cg_steps=500,
  threads: int | None = None,
):
  """Paper TRNCG on N_e's MSE for ``iterations`` outer iterations.

  Returns a dict: seconds, iterations, hvps, gradients and the loss history.
  """
  if threads:
    torch.set_num_threads(threads)
  model = n_e_from_params(params)
  names = [n for n, _ in model.named_parameters()]
  shapes = [q.shape for _, q in model.named_parameters()]
  sizes = [math.prod(s) for s in shapes]
  x_t = torch.tensor(np.asarray(x), dtype=torch.float32)
  y_t = torch.tensor(np.asarray(y), dtype=torch.float32)

  def loss(theta):
    chunks = torch.split(theta, sizes)
    weights = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
    pred = torch.func.functional_call(model, weights, (x_t,))
    return torch.mean((pred - y_t) ** 2)

  def value_and_grad(theta):
    theta = theta.detach().requires_grad_(True)
    value = loss(theta)
    (grad,) = torch.autograd.grad(value, theta)
    return value.detach(), grad

  theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
  radius = initial_radius
  start = time.perf_counter()
  value, grad = value_and_grad(theta)
  losses, hvps, gradients = [float(value)], 0, 1
  for _ in range(iterations):
    hvp = lambda v: torch.autograd.functional.vhp(loss, theta, v)[1]  # noqa: B023
    step, predicted, steps = steihaug(grad, hvp, radius, cg_tol, max_cg_steps)
    hvps += steps
    trial_value, trial_grad = value_and_grad(theta + step)
    gradients += 1
    rho = (
      float((value - trial_value) / predicted) if predicted > 0 else -math.inf
    )
    step_norm = float(torch.linalg.norm(step))
    if rho < 0.25:
      radius *= 0.25
    elif rho > 0.75 and abs(step_norm - radius) <= 1e-6 * radius:
      radius = min(2 * radius, max_radius)
    if rho > eta:
      theta, value, grad = theta + step, trial_value, trial_grad
    losses.append(float(value))
  seconds = time.perf_counter() - start
  return dict(
    seconds=seconds,
    iterations=iterations,
    hvps=hvps,
    gradients=gradients,
    losses=losses,
  )
