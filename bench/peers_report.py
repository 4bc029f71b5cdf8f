"""Markdown tables and the quality-vs-time plot of the peer benchmark."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

PHASES = ("gradients", "curvature", "scoring", "self_influence")
COLUMNS = (
    "method",
    "k",
    *PHASES,
    "other",
    "total s",
    "peak MB",
    "stored MB",
    "agreement w/ exact",
    "LDS",
    "AUC",
    "recall@10%",
)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def method_cells(row: dict) -> list[str]:
    """One table row: the phase times, costs and qualities of a method."""
    phases = row["phases"]
    other = sum(v for k, v in phases.items() if k not in PHASES)
    times = [_fmt(phases.get(name), 2) for name in PHASES]
    if row.get("error"):
        limit = re.search(r"\(> (\d+) s\)", row["error"])
        total = f"> {limit.group(1)}" if limit else "failed"
        return [row["method"], "—", *(["—"] * 5), total, *(["—"] * 6)]
    return [
        row["method"],
        _fmt(row["k"]),
        *times,
        _fmt(other or None, 2),
        _fmt(row["total_s"], 2),
        _fmt(row["peak_mb"], 0),
        _fmt(row["stored_mb"], 2),
        _fmt(row.get("agreement_exact")),
        _fmt(row.get("lds")),
        _fmt(row.get("auc")),
        _fmt(row.get("recall_10")),
    ]


def setting_table(setting: dict) -> list[str]:
    """The markdown of one setting: heading, fidelity line, method table, failures."""
    fidelity = setting["fidelity"]
    lines = [
        f"### {setting['arch']} · {setting['noise']} noise 10 % · seed {setting['seed']}",
        "",
        f"n_train {setting['n_train']}, n_test {setting['n_test']}, k {setting['k']}, "
        f"recipe {setting.get('recipe', '—')}, "
        f"dropinf damping ratio {setting['damping_ratio']}. Fidelity of dropout vs identity "
        f"({fidelity['curvature']} curvature): Spearman {fidelity['spearman']:.3f}, Pearson "
        f"{fidelity['pearson']:.3f}, top-10 proponents {fidelity['top_proponent_overlap']:.2f}, "
        f"top-10 opponents {fidelity['top_opponent_overlap']:.2f}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(method_cells(row)) + " |" for row in setting["methods"]]
    failures = [row for row in setting["methods"] if row.get("error")]
    lines += [""] + [f"- **{row['method']}** failed: `{row['error']}`" for row in failures]
    return lines


def summary_table(settings: list[dict]) -> list[str]:
    """Mean over settings of total time, LDS, AUC and recall per method."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for setting in settings:
        for row in setting["methods"]:
            for key in ("total_s", "lds", "auc", "recall_10"):
                value = row.get(key)
                if value is not None and not row.get("error"):
                    sums[row["method"]][key].append(float(value))
    lines = [
        "| method | mean total s | mean LDS | mean AUC | mean recall@10% | settings |",
        "|---|---|---|---|---|---|",
    ]
    for method, values in sums.items():
        means = [
            _fmt(sum(v) / len(v)) if v else "—"
            for v in (values["total_s"], values["lds"], values["auc"], values["recall_10"])
        ]
        lines.append(f"| {method} | " + " | ".join(means) + f" | {len(values['total_s'])} |")
    return lines


METHOD_NOTES = """## How it is measured

- **Data**: the embedded digits (1 437 train / 360 test 8×8 images). Each image is repeated as
  1-pixel shifts (up, down, left, right) so timings are not dominated by start-up; train and test
  copies come from different originals. 10 % label noise, symmetric or class-conditional
  (dropinf.data pairs), noise seeds as listed; the test split is clean.
- **Same inputs for all**: one checkpoint per setting trained by `dropinf.train.train_model`
  (the recipe below), the same train / test order, per-sample cross-entropy, float32,
  `torch.set_num_threads(2)`, CPU. Scores are (n_test, n_train) with `+ = proponent`.
- **k**: dropinf dropout at keep ratio 0.25 fixes k; TRAK (traker and dattri) project to the
  same k; dattri LoGra / FactGraSS get ⌊√(k)⌋² per layer (their factorised projection needs a
  square). Kronfluence (EK-FAC) and captum TracInCP work on full gradients (no k).
- **Damping**: one shared grid of ratios (0.01, 0.1, 1) × mean diag of the method's own Gram /
  Fisher matrix. dropinf's ratio is picked by LDS on the even-indexed test examples; LDS is then
  reported on the odd-indexed ones for every method. traker gets the same ratio
  (`lambda_reg = ratio · mean diag ΦᵀΦ`). Kronfluence uses its own heuristic (0.1 · mean
  eigenvalue, the grid's middle point), dattri's attributors their defaults (TRAK:
  regularization 0; LoGra / FactGraSS: their damping heuristic).
- **Phases**: `gradients` = per-sample gradients incl. compression / projection; `curvature`
  = fitting and factoring the curvature; `scoring` = all test examples against all training
  examples; `self_influence` = the detection score. A method that fuses phases reports them
  where they happen (Kronfluence computes gradients inside scoring; dattri TRAK and captum
  TracInCP recompute training gradients inside every call). `other` = cleanlab's
  cross-validated training (5 folds of the same recipe) and `find_label_issues`.
- **Peak MB**: highest resident memory above the process's level at the method's start,
  sampled every 5 ms. **Stored MB**: what the method keeps for later queries (run directory,
  TRAK save dir, Kronfluence factors; n·k·4 for dattri's in-memory caches).
- **Agreement w/ exact**: mean per-test-example Spearman against dropinf `identity` (exact
  gradients) at the curvature given in the fidelity line — for peers with another curvature this
  is agreement, not fidelity.
- **LDS**: 50 % subsets of the training set, retrained with the same recipe (seeded, cached in
  `bench/.cache/lds-<key>.npz` by recipe + data fingerprint + subset seed), correct-class margin
  as the output, Spearman per test example averaged. Only on noise seed 0 and the MLP (retraining
  the CNN 50× is beyond a 2-core budget).
- **Detection**: self-influence (cleanlab: 1 − label quality from 5-fold CV probabilities) as the
  suspicion score against the ground-truth flip mask: ROC AUC and recall when 10 % of the
  training set is inspected (`dropinf.evaluate`).
"""


def write_report(payload: dict, path: Path) -> None:
    """Write the markdown results (tables per setting, summary, versions, command)."""
    versions = ", ".join(f"{k} {v}" for k, v in payload["versions"].items())
    lines = [
        "# dropinf vs peers — measured results",
        "",
        f"Command: `{' '.join(payload['argv'])}`  ",
        f"Versions: {versions}  ",
        f"Size: `{payload['size']}`",
        "",
        "## Summary (mean over settings)",
        "",
    ]
    lines += [*summary_table(payload["settings"]), "", METHOD_NOTES, "## Per setting", ""]
    for setting in payload["settings"]:
        lines += [*setting_table(setting), ""]
    path.write_text("\n".join(lines) + "\n")


def plot_points(payload: dict) -> list[tuple[str, float, float]]:
    """(method, mean total seconds, mean LDS) over the settings where LDS was measured."""
    points = []
    for method, values in _means(payload).items():
        if "total_s" in values and "lds" in values:
            points.append((method, values["total_s"], values["lds"]))
    return points


def _means(payload: dict) -> dict[str, dict[str, float]]:
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with_lds = [s for s in payload["settings"] if any(r.get("lds") for r in s["methods"])]
    for setting in with_lds:
        for row in setting["methods"]:
            for key in ("total_s", "lds", "auc"):
                if row.get(key) is not None and not row.get("error"):
                    sums[row["method"]][key].append(float(row[key]))
    return {m: {k: sum(v) / len(v) for k, v in d.items() if v} for m, d in sums.items()}


def write_plot(payload: dict, path: Path) -> None:
    """LDS against end-to-end time (log axis), averaged over the settings that have LDS."""
    points = plot_points(payload)
    try:
        _plot_matplotlib(points, path)
    except ImportError:
        _plot_pil(points, path)


def _plot_matplotlib(points, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=120)
    for method, seconds, quality in points:
        axes.scatter(seconds, quality, s=40)
        axes.annotate(
            method, (seconds, quality), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    axes.set_xscale("log")
    axes.set_xlabel("end-to-end seconds (gradients + curvature + scoring + self-influence)")
    axes.set_ylabel("LDS (linear datamodeling score)")
    axes.set_title("dropinf vs peers: LDS vs time (mean over settings with LDS)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def _plot_pil(points, path: Path) -> None:
    from PIL import Image, ImageDraw

    width, height, margin = 840, 540, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([margin, 20, width - 20, height - margin], outline="black")
    if points:
        xs = [math.log10(max(p[1], 1e-3)) for p in points]
        ys = [p[2] for p in points]
        x0, x1 = min(xs) - 0.2, max(xs) + 0.2
        y0, y1 = min(ys) - 0.05, max(ys) + 0.05
        for (method, _, _), x, y in zip(points, xs, ys, strict=True):
            px = margin + (x - x0) / (x1 - x0) * (width - 20 - margin)
            py = height - margin - (y - y0) / (y1 - y0) * (height - margin - 20)
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill="navy")
            draw.text((px + 6, py - 12), method, fill="black")
    draw.text((margin, height - margin + 20), "log10 end-to-end seconds", fill="black")
    draw.text((5, 5), "LDS (linear datamodeling score)", fill="black")
    image.save(path)
