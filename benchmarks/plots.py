"""PNG figures equivalent to the paper's Figures 1-6."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks.problems import ELEMENTARY_LABELS  # pylint: disable=g-import-not-at-top

COLORS = {
  "trncg": "C3",
  "trncg_paper": "C1",
  "trncg_gn": "C5",
  "trncg_gn_nystrom": "C6",
  "adam": "C0",
  "lbfgs": "C2",
  "nonlinear_cg": "C4",
}
#: The PINN solutions drawn beside the reference: ours, and Adam's.
SOLUTION_PANELS = ("trncg", "trncg_gn", "trncg_gn_nystrom", "adam")


def _grid(n):
  cols = min(n, 3)
  rows = -(-n // cols)
  fig, axes = plt.subplots(
    rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False
  )
  for ax in axes.ravel()[n:]:
    ax.axis("off")
  return fig, axes.ravel()


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def fitted_functions(fits, path):
  fig, axes = _grid(len(fits))
  for ax, (fname, fit) in zip(axes, fits.items()):
    ax.plot(fit["x"], fit["true"], "k-", lw=3, alpha=0.3, label="true")
    for name, pred in fit.items():
      if name not in ("x", "true"):
        ax.plot(fit["x"], pred, color=COLORS.get(name), lw=1, label=name)
    ax.set_title(ELEMENTARY_LABELS.get(fname, fname))
  axes[0].legend(fontsize=7)
  fig.suptitle("Fig. 1: fitted functions on the test grid")
  return _save(fig, path)


def loss_curves(results, problems, path, first=500, title=""):
  fig, axes = _grid(len(problems))
  for ax, problem in zip(axes, problems):
    for r in results:
      if r["problem"] == problem:
        loss = np.asarray(r["history"]["loss"])[: first + 1]
        ax.semilogy(
          loss, color=COLORS.get(r["optimizer"]), lw=1, label=r["optimizer"]
        )
    ax.set_title(ELEMENTARY_LABELS.get(problem, problem))
    ax.set_xlabel("iteration")
  axes[0].set_ylabel("training loss")
  axes[0].legend(fontsize=7)
  fig.suptitle(title)
  return _save(fig, path)


def tr_diagnostics(results, path, optimizer="trncg"):
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
  for r in results:
    if r["optimizer"] != optimizer:
      continue
    h = r["history"]
    label = ELEMENTARY_LABELS.get(r["problem"], r["problem"])
    axes[0].plot(h["cg_steps"][1:], lw=0.8, label=label)
    axes[1].semilogy(h["radius"][1:], lw=0.8)
    rho = np.clip(np.asarray(h["rho"][1:], float), -1.0, 2.0)
    axes[2].plot(rho, ".", ms=2)
  for ax, name in zip(axes, ["CG steps", "radius", "rho (clipped to [-1, 2])"]):
    ax.set_title(name)
    ax.set_xlabel("TR iteration")
  axes[0].legend(fontsize=7)
  fig.suptitle(f"Fig. 3: trust-region diagnostics ({optimizer})")
  return _save(fig, path)


def bars(results, problems, path):
  optimizers = list(dict.fromkeys(r["optimizer"] for r in results))
  fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
  width = 0.8 / len(optimizers)
  for i, name in enumerate(optimizers):
    its, times, hatches = [], [], []
    for p in problems:
      r = next(
        r for r in results if r["problem"] == p and r["optimizer"] == name
      )
      its.append(r["iterations"])
      times.append(r["wall_seconds"])
      hatches.append("" if r.get("reached_target", True) else "//")
    xs = np.arange(len(problems)) + i * width
    for ax, values in ((axes[0], its), (axes[1], times)):
      bars_ = ax.bar(xs, values, width, color=COLORS.get(name), label=name)
      for b, h in zip(bars_, hatches):
        b.set_hatch(h)
  for ax, title in (
    (axes[0], "iterations to loss <= 1e-6"),
    (axes[1], "wall-clock seconds (compile excluded)"),
  ):
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(problems)) + 0.4 - width / 2)
    ax.set_xticklabels(
      [ELEMENTARY_LABELS.get(p, p) for p in problems], fontsize=8
    )
    ax.set_title(title + "; hatched: target not reached")
  axes[0].legend(fontsize=7)
  fig.suptitle("Fig. 4: iterations and time")
  return _save(fig, path)


def pinn_solution(solutions, path, title):
  xy = solutions["xy"]
  panels = [("reference", "reference")] + [
    (n, n) for n in SOLUTION_PANELS if n in solutions
  ]
  fig, axes = plt.subplots(
    1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 3.6)
  )
  ref = solutions["reference"]
  for ax, (key, label) in zip(axes, panels):
    sc = ax.tricontourf(
      xy[:, 0],
      xy[:, 1],
      solutions[key],
      levels=20,
      vmin=ref.min(),
      vmax=ref.max(),
      cmap="viridis",
    )
    ax.set_title(label)
    ax.set_aspect("equal")
  fig.colorbar(sc, ax=axes[len(panels) - 1])
  ax = axes[-1]
  for key, _ in panels[1:]:
    err = np.abs(solutions[key] - ref)
    ax.hist(
      err, bins=60, histtype="step", color=COLORS[key], label=key, log=True
    )
  ax.set_title("|u - u_ref| at t = 1")
  ax.legend(fontsize=7)
  fig.suptitle(title)
  return _save(fig, path)


def paper_figures(results, fits, pinn, out: pathlib.Path) -> list[pathlib.Path]:
  """Writes every figure for which there are results; returns their paths."""
  figures = []
  elementary = [
    p
    for p in dict.fromkeys(r["problem"] for r in results)
    if not p.startswith("heat")
  ]
  if elementary:
    figures.append(fitted_functions(fits, out / "fig1_fits.png"))
    figures.append(
      loss_curves(
        results,
        elementary,
        out / "fig2_loss_first500.png",
        title="Fig. 2: training loss, first 500 iterations",
      )
    )
    figures.append(tr_diagnostics(results, out / "fig3_tr_diagnostics.png"))
    figures.append(bars(results, elementary, out / "fig4_iterations_time.png"))
  heat = [p for p in ("heat", "heat_smooth") if p in pinn]
  if heat:
    figures.append(
      loss_curves(
        results,
        heat,
        out / "fig5_pinn_loss.png",
        first=10**9,
        title="Fig. 5: PINN training loss",
      )
    )
    for p in heat:
      figures.append(
        pinn_solution(
          pinn[p], out / f"fig6_{p}_solution.png", f"Fig. 6: {p} at t = 1"
        )
      )
  return figures
