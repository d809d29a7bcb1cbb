"""PNG figures equivalent to the paper's Figures 1-6."""

from __future__ import annotations

import pathlib

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from benchmarks.problems import ELEMENTARY_LABELS, relative_l2

COLORS = {
  "trncg": "C3",
  "trncg_paper": "C1",
  "trncg_gn": "C5",
  "trncg_gn_nystrom": "C6",
  "adam": "C0",
  "lbfgs": "C2",
  "nonlinear_cg": "C4",
}
#: The optimizers that do not come from trncg_jax.
BASELINES = ("adam", "lbfgs")
#: A PINN fit with a larger relative L2 error is marked as not converged.
FAILED_FIT = 5e-2


def subplots(nrows=1, ncols=1, *, figsize=None, layout=None, **kwargs):
  """A figure and its axes, made without pyplot: no backend is chosen and
  nothing global changes, so the benchmarks can plot inside a notebook."""
  fig = Figure(figsize=figsize, layout=layout)
  return fig, fig.subplots(nrows, ncols, **kwargs)


def _grid(n):
  cols = min(n, 3)
  rows = -(-n // cols)
  fig, axes = subplots(
    rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False
  )
  for ax in axes.ravel()[n:]:
    ax.axis("off")
  return fig, axes.ravel()


def legend_below(fig, handles=None, labels=None) -> int:
  """One legend for the whole figure, under the plots, so it covers none;
  returns its number of rows (for :func:`save`)."""
  if handles is None:  # every axes' entries, each label once
    entries = {}
    for ax in fig.axes:
      for h, label in zip(*ax.get_legend_handles_labels()):
        entries.setdefault(label, h)
    handles, labels = list(entries.values()), list(entries)
  ncol = max(1, min(len(handles), int(fig.get_figwidth() / 1.9)))
  fig.legend(
    handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False
  )
  return -(-len(handles) // ncol)


def save(fig, path, legend_rows=0):
  """Lays the figure out above ``legend_rows`` rows of legend, and writes
  it."""
  fig.tight_layout(rect=(0, 0.25 * legend_rows / fig.get_figheight(), 1, 1))
  fig.savefig(path, dpi=110)
  return path


def fit_errors(fits, path):
  """The pointwise error of each fit: the fits themselves all lie on the
  true curve at this scale."""
  fig, axes = _grid(len(fits))
  for ax, (fname, fit) in zip(axes, fits.items()):
    for name, pred in fit.items():
      if name not in ("x", "true"):
        err = np.maximum(np.abs(pred - fit["true"]), 1e-12)
        ax.semilogy(fit["x"], err, color=COLORS.get(name), lw=0.8, label=name)
    ax.set(
      title=ELEMENTARY_LABELS.get(fname, fname),
      xlabel="x",
      ylabel="|fit - true|",
    )
  rows = legend_below(fig)
  fig.suptitle("Fig. 1: error of each fit on the test grid")
  return save(fig, path, rows)


def loss_curves(results, problems, path, first=500, title=""):
  fig, axes = _grid(len(problems))
  for ax, problem in zip(axes, problems):
    for r in results:
      if r["problem"] == problem:
        loss = np.asarray(r["history"]["loss"])[: first + 1]
        ax.semilogy(
          loss, color=COLORS.get(r["optimizer"]), lw=1, label=r["optimizer"]
        )
    ax.set(
      title=ELEMENTARY_LABELS.get(problem, problem),
      xlabel="iteration",
      ylabel="training loss",
    )
  rows = legend_below(fig)
  fig.suptitle(title)
  return save(fig, path, rows)


def tr_diagnostics(results, path, optimizer="trncg"):
  fig, axes = subplots(1, 3, figsize=(13, 3.6))
  for r in results:
    if r["optimizer"] != optimizer:
      continue
    h = r["history"]
    label = ELEMENTARY_LABELS.get(r["problem"], r["problem"])
    axes[0].plot(h["cg_steps"][1:], lw=0.8, label=label)
    axes[1].semilogy(h["radius"][1:], lw=0.8)
    rho = np.clip(np.asarray(h["rho"][1:], float), -1.0, 2.0)
    axes[2].plot(rho, ".", ms=2)
  for ax, name in zip(
    axes, ["CG steps", "trust-region radius", "rho, clipped to [-1, 2]"]
  ):
    ax.set(title=name, xlabel="TR iteration", ylabel=name)
  rows = legend_below(fig)
  fig.suptitle(f"Fig. 3: trust-region diagnostics ({optimizer})")
  return save(fig, path, rows)


def bars(results, problems, path):
  optimizers = list(dict.fromkeys(r["optimizer"] for r in results))
  fig, axes = subplots(1, 2, figsize=(13, 4.2))
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
      for x, v, h in zip(xs, values, hatches):
        ax.bar(x, v, width, color=COLORS.get(name), hatch=h)
  for ax, ylabel in (
    (axes[0], "iterations"),
    (axes[1], "seconds (compile excluded)"),
  ):
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_xticks(np.arange(len(problems)) + 0.4 - width / 2)
    ax.set_xticklabels(
      [ELEMENTARY_LABELS.get(p, p) for p in problems], fontsize=8
    )
  axes[0].set_title("iterations to loss <= 1e-6")
  axes[1].set_title("run time to loss <= 1e-6")
  # Legend entries drawn by hand: solid swatches name the optimizers, one
  # white hatched swatch says what hatching means.
  handles = [Patch(color=COLORS.get(n)) for n in optimizers]
  handles.append(Patch(facecolor="white", edgecolor="k", hatch="//"))
  labels = optimizers + ["loss 1e-6 not reached (run capped)"]
  rows = legend_below(fig, handles, labels)
  fig.suptitle("Fig. 4: iterations and time to loss <= 1e-6")
  return save(fig, path, rows)


def best_of_each(errors: dict) -> list:
  """The optimizer of ours with the lowest error, then the best baseline."""
  ours = [k for k in errors if k not in BASELINES]
  baselines = [k for k in errors if k in BASELINES]
  return [min(group, key=errors.get) for group in (ours, baselines) if group]


def pinn_solution(solutions, path, title):
  """The reference, the best of ours and the best baseline at t = 1, and
  each fit's error; a fit that has not converged is marked so."""
  xy, ref = solutions["xy"], solutions["reference"]
  errors = {
    k: relative_l2(v, ref)
    for k, v in solutions.items()
    if k not in ("xy", "reference")
  }
  shown = best_of_each(errors)
  fig, axes = subplots(
    1,
    1 + 2 * len(shown),
    figsize=(3.4 * (1 + 2 * len(shown)), 3.9),
    layout="constrained",
  )
  panels = [("reference", ref, "reference (u at t = 1)")]
  for k in shown:
    note = ", not converged" if errors[k] > FAILED_FIT else ""
    panels.append((k, solutions[k], f"{k}\nrel. L2 {errors[k]:.1e}{note}"))
  for ax, (_, u, label) in zip(axes, panels):
    field = ax.tricontourf(
      xy[:, 0],
      xy[:, 1],
      u,
      levels=20,
      vmin=ref.min(),
      vmax=ref.max(),
      cmap="viridis",
    )
    ax.set_title(label, fontsize=9)
  fig.colorbar(field, ax=axes[: len(panels)].tolist(), label="u", shrink=0.8)
  vmax = max(np.abs(solutions[k] - ref).max() for k in shown)
  for ax, k in zip(axes[len(panels) :], shown):
    err = ax.tricontourf(
      xy[:, 0],
      xy[:, 1],
      np.abs(solutions[k] - ref),
      levels=20,
      vmin=0,
      vmax=vmax,
      cmap="magma",
    )
    ax.set_title(f"|{k} - reference|\n ", fontsize=9)
  fig.colorbar(
    err, ax=axes[len(panels) :].tolist(), label="|u - u_ref|", shrink=0.8
  )
  for ax in axes:
    ax.set(xlabel="x", ylabel="y", aspect="equal")
  if all(errors[k] > FAILED_FIT for k in shown):
    fig.supxlabel(
      f"No optimizer reached rel. L2 <= {FAILED_FIT:g} in this budget: these"
      " fits have not converged (the table has every optimizer's error).",
      fontsize=8,
    )
  fig.suptitle(title)
  fig.savefig(path, dpi=110)
  return path


def paper_figures(results, fits, pinn, out: pathlib.Path) -> list[pathlib.Path]:
  """Writes every figure for which there are results; returns their paths."""
  figures = []
  elementary = [
    p
    for p in dict.fromkeys(r["problem"] for r in results)
    if not p.startswith("heat")
  ]
  if elementary:
    figures.append(fit_errors(fits, out / "fig1_fit_errors.png"))
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
