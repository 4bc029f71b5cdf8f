"""Markdown tables and the quality-vs-time plot of the peer benchmark."""

from __future__ import annotations

import math
import re
import shlex
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
    "damping",
    "agreement w/ exact",
    "LDS",
    "AUC",
    "recall@10%",
    "AUC self-infl.",
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
    if row.get("skipped"):
        total = "not run" if "limit" in row["skipped"] else "seed 0 only"
        return [row["method"], "—", *(["—"] * 5), total, *(["—"] * 8)]
    if row.get("error"):
        limit = re.search(r"\(> (\d+) s\)", row["error"])
        total = f"> {limit.group(1)}" if limit else "failed"
        return [row["method"], "—", *(["—"] * 5), total, *(["—"] * 8)]
    return [
        row["method"],
        _fmt(row["k"]),
        *times,
        _fmt(other or None, 2),
        _fmt(row["total_s"], 2),
        _fmt(row["peak_mb"], 0),
        _fmt(row["stored_mb"], 2),
        _fmt(row.get("damping_ratio"), 2),
        _fmt(row.get("agreement_exact")),
        _fmt(row.get("lds")),
        _fmt(row.get("auc")),
        _fmt(row.get("recall_10")),
        _fmt(row.get("auc_self_influence")),
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
    skipped = [row for row in setting["methods"] if row.get("skipped")]
    lines += [f"- **{row['method']}**: {row['skipped']}" for row in skipped]
    return lines


SUMMARY_KEYS = ("total_s", "lds", "auc", "recall_10")
DROPINF = "dropinf dropout"
DETECTION_REFERENCE = "cleanlab"


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return _fmt(mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{_fmt(mean)} ± {_fmt(sd)}"


def _groups(settings: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Settings grouped by (architecture, noise kind), seeds together."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for setting in settings:
        groups[(setting["arch"], setting["noise"])].append(setting)
    return groups


def _values(settings: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Method -> key -> the values over the settings where the method ran."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for setting in settings:
        for row in setting["methods"]:
            if row.get("skipped"):
                continue
            values[row["method"]]["runs"].append(0.0)
            for key in SUMMARY_KEYS:
                if row.get(key) is not None and not row.get("error"):
                    values[row["method"]][key].append(float(row[key]))
    return values


def summary_table(settings: list[dict]) -> list[str]:
    """Per architecture × noise kind: mean ± sd over the seeds of time, LDS, AUC and recall."""
    lines = []
    for (arch, noise), group in _groups(settings).items():
        seeds = ", ".join(str(s["seed"]) for s in group)
        lines += [
            f"**{arch} · {noise} noise** (seeds {seeds})",
            "",
            "| method | total s | LDS | AUC | recall@10% | ran |",
            "|---|---|---|---|---|---|",
        ]
        for method, values in _values(group).items():
            cells = [_mean_sd(values[key]) for key in SUMMARY_KEYS]
            ran = f"{len(values['total_s'])} / {len(values['runs'])}"
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {ran} |")
        lines.append("")
    return lines


def target_table(settings: list[dict]) -> list[str]:
    """The issue's targets per setting: speed-up at equal-or-better LDS, AUC against cleanlab."""
    lines = [
        "| setting | dropinf s | dropinf LDS | fastest peer (s, LDS) | fastest peer with LDS ≥ "
        "dropinf's | speed-up vs it | dropinf AUC | cleanlab AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting in settings:
        ran = [r for r in setting["methods"] if not r.get("error") and not r.get("skipped")]
        rows = {r["method"]: r for r in ran}
        ours = rows.get(DROPINF)
        if ours is None:
            continue
        peers = [r for name, r in rows.items() if not name.startswith("dropinf")]
        fastest = min(peers, key=lambda r: r["total_s"], default=None)
        lds = ours.get("lds")
        rivals = [r for r in peers if lds is not None and (r.get("lds") or -1) >= lds]
        rival = min(rivals, key=lambda r: r["total_s"], default=None)
        cleanlab = rows.get(DETECTION_REFERENCE, {})
        lines.append(
            f"| {setting['arch']} · {setting['noise']} · {setting['seed']} "
            f"| {_fmt(ours['total_s'], 2)} | {_fmt(lds)} "
            f"| {_describe(fastest)} | {_describe(rival) if rival else 'none'} "
            f"| {_fmt(rival['total_s'] / ours['total_s'], 1) + '×' if rival else '—'} "
            f"| {_fmt(ours.get('auc'))} | {_fmt(cleanlab.get('auc'))} |"
        )
    return lines


def _describe(row: dict | None) -> str:
    if row is None:
        return "—"
    return f"{row['method']} ({_fmt(row['total_s'], 2)} s, LDS {_fmt(row.get('lds'))})"


METHOD_NOTES = """## How it is measured

- **Data**: the embedded digits (1 437 train / 360 test 8×8 images). Each image is repeated as
  1-pixel shifts (up, down, left, right) so timings are not dominated by start-up; train and test
  copies come from different originals. 10 % label noise, symmetric or class-conditional
  (dropinf.data pairs), noise seeds as listed; the test split is clean.
- **Same inputs for all**: one checkpoint per setting trained by `dropinf.train.train_model`
  (the recipe below), the same train / test order, per-sample cross-entropy, float32,
  `torch.set_num_threads(2)`, CPU. Scores are (n_test, n_train) with `+ = proponent`.
- **k**: dropinf dropout at keep ratio 0.25 fixes k; TRAK (traker and dattri) project to the
  same k; dattri LoGra / FactGraSS get side² per Linear layer with side = round(√(k / layers)),
  about k in all (their factorised projection is square; dattri hooks Linear layers only, which
  hold 132 k of the CNN's 151 k parameters). Kronfluence (EK-FAC), captum TracInCP and dattri
  DataInf work on full gradients; the Arnoldi methods (dattri, captum) keep min(k, 100)
  eigen-directions of the Hessian from a Krylov space twice that size (dattri drops the
  negative ones it keeps by magnitude). dattri's explicit IF is refused: its unchunked Hessian
  needed 10.6 GB for 400 examples of the MLP.
- **Heavy methods**: dattri DataInf and captum Arnoldi run on noise seed 0 only (minutes per
  setting). On the CNN five peers are skipped (`--skip-methods`), from what a first CNN pass
  (symmetric, seed 0) showed before it was killed: TRAK (traker) chose its damping (163 s for
  the three 250-example runs) and then ran past the 240 s limit scoring 1 000 test examples;
  dattri TRAK ran past 240 s (as in every earlier run); dattri IF (Arnoldi) ran past 240 s
  choosing its damping; dattri DataInf then drove the process to the 24 GiB memory limit (the
  kernel killed it); captum Arnoldi was not reached (≈ 130 s per run in the adapter's tests).
- **Damping**: one shared grid of ratios (0.01, 0.1, 1) × the mean diagonal of each method's
  own curvature (dropinf: its compressed Fisher; traker: ΦᵀΦ; Kronfluence: its EK-FAC
  eigenvalues; LoGra / FactGraSS: dattri's own per-layer ratio of the trace; the Arnoldi
  methods: a Hutchinson estimate of the Hessian's mean diagonal; DataInf: its Fisher's; dattri
  TRAK's λ is not reachable from outside and stays 0). Every method with a damping runs once
  per ratio on 250 held-out test examples (the even-indexed ones) and keeps the ratio with the
  best LDS there (on noise seed 0 of each architecture × noise kind; seeds 1 and 2 reuse it);
  the timed run then scores all test examples, and LDS is reported on the odd-indexed ones only.
  The `damping` column is the chosen ratio (— for methods without one).
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
  as the output, Spearman per test example averaged; every setting, both architectures.
- **Detection**: each method's own detector against the ground-truth flip mask: ROC AUC and
  recall when 10 % of the training set is inspected (`dropinf.metrics`). dropinf ranks by the
  influence-estimated leave-one-out loss `loss + self-influence / N` (`dropinf.review`, the
  dashboard's queue order); the influence peers by self-influence; cleanlab by 1 − label quality
  from 5-fold cross-validated probabilities. `AUC self-infl.` is plain self-influence for every
  influence method (dropinf included), to compare like with like.
- **Targets**: per setting, dropinf dropout's end-to-end time against the fastest peer, and
  against the fastest peer whose LDS is at least dropinf's ("none" when no peer reaches it),
  and its detection AUC against cleanlab's.
"""


def write_report(payload: dict, path: Path) -> None:
    """Write the markdown results (tables per setting, summary, versions, command)."""
    versions = ", ".join(f"{k} {v}" for k, v in payload["versions"].items())
    lines = [
        "# dropinf vs peers — measured results",
        "",
        "Commands (in order; each keeps the settings of the one before):  ",
        *[
            f"`bench/.peers-venv/bin/python {shlex.join(command)}`  "
            for command in payload["commands"]
        ],
        f"Versions: {versions}  ",
        f"Size: `{payload['size']}`",
        "",
        "## Summary (mean ± sd over noise seeds)",
        "",
    ]
    lines += summary_table(payload["settings"])
    lines += ["## Targets per setting", "", *target_table(payload["settings"]), ""]
    lines += [METHOD_NOTES, "## Per setting", ""]
    for setting in payload["settings"]:
        lines += [*setting_table(setting), ""]
    path.write_text("\n".join(lines) + "\n")


def plot_points(payload: dict) -> dict[str, list[tuple[str, float, float]]]:
    """Architecture -> (method, mean total seconds, mean LDS) over its settings with LDS."""
    panels: dict[str, list[tuple[str, float, float]]] = {}
    for arch in dict.fromkeys(s["arch"] for s in payload["settings"]):
        settings = [s for s in payload["settings"] if s["arch"] == arch]
        values = _values([s for s in settings if any(r.get("lds") for r in s["methods"])])
        points = [
            (method, sum(v["total_s"]) / len(v["total_s"]), sum(v["lds"]) / len(v["lds"]))
            for method, v in values.items()
            if v["total_s"] and v["lds"]
        ]
        if points:
            panels[arch] = points
    return panels


def write_plot(payload: dict, path: Path) -> None:
    """LDS against end-to-end time (log axis), one panel per architecture, means over settings."""
    panels = plot_points(payload)
    try:
        _plot_matplotlib(panels, path)
    except ImportError:
        _plot_pil(panels, path)


def _plot_matplotlib(panels: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    count = max(len(panels), 1)
    figure, axes = pyplot.subplots(1, count, figsize=(6.5 * count, 4.8), dpi=120, squeeze=False)
    for axis, (arch, points) in zip(axes[0], panels.items(), strict=False):
        for method, seconds, quality in points:
            marker = "*" if method.startswith("dropinf") else "o"
            axis.scatter(seconds, quality, s=110 if marker == "*" else 40, marker=marker)
            axis.annotate(
                method, (seconds, quality), textcoords="offset points", xytext=(5, 4), fontsize=8
            )
        axis.set_xscale("log")
        axis.set_xlabel("end-to-end seconds (gradients + curvature + scoring + self-influence)")
        axis.set_ylabel("LDS (linear datamodeling score)")
        axis.set_title(f"{arch}: LDS vs time (mean over settings)")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def _plot_pil(panels: dict, path: Path) -> None:
    from PIL import Image, ImageDraw

    width, height, margin = 840, 540, 70
    image = Image.new("RGB", (width * max(len(panels), 1), height), "white")
    draw = ImageDraw.Draw(image)
    for offset, (arch, points) in enumerate(panels.items()):
        left = offset * width
        draw.rectangle([left + margin, 20, left + width - 20, height - margin], outline="black")
        xs = [math.log10(max(p[1], 1e-3)) for p in points]
        ys = [p[2] for p in points]
        x0, x1 = min(xs) - 0.2, max(xs) + 0.2
        y0, y1 = min(ys) - 0.05, max(ys) + 0.05
        for (method, _, _), x, y in zip(points, xs, ys, strict=True):
            px = left + margin + (x - x0) / (x1 - x0) * (width - 20 - margin)
            py = height - margin - (y - y0) / (y1 - y0) * (height - margin - 20)
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill="navy")
            draw.text((px + 6, py - 12), method, fill="black")
        draw.text((left + margin, height - margin + 20), "log10 end-to-end seconds", fill="black")
        draw.text((left + 5, 5), f"{arch}: LDS (linear datamodeling score)", fill="black")
    image.save(path)
