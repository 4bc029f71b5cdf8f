"""Every compressor at equal compressed dimension k: compression cost and fidelity.

For each model (an MLP with 64 hidden units and the registry's small CNN, both trained on
scikit-learn's digits with 10% symmetric label noise) and keep ratio, each compressor stores the
same k floats per example. Reported per method, averaged over seeds:

* compression time per example: the compression step alone (gather / project / outer products,
  from the same captured layer inputs and output gradients), and its ratio to dropout's;
* fidelity to exact influence (identity compression, full curvature, λ = 0.1 · mean diag F),
  every method given that same curvature kind and λ: Pearson and Spearman per test example,
  overlap of the top-10 proponents and opponents; and Pearson when each method uses its own
  default λ (0.1 · mean diag of its compressed F), as the product does;
* mislabel detection: ROC AUC of self-influence against the flipped labels.

A second table per keep ratio (``--tables curvatures``) keeps the default compressor (dropout,
uniform masks) and changes the curvature kind instead: ``full``, ``block``, ``kfac``, ``ekfac``
and ``identity``, each given the exact run's λ (for ``kfac`` / ``ekfac`` the same λ added to
every layer's Kronecker eigenvalues), then its own default damping ratio, with the seconds of its
fit. Pearson against exact influence at one λ is not what analysts rely on (an approximation can
agree less and still rank retraining outcomes better): bench/defaults.py judges the kinds by LDS.

Exact influence (151 k parameters for the CNN) uses the Woodbury identity on the n×n Gram
matrix: the full-curvature formula without forming a P×P matrix.

    .venv/bin/python bench/compressors.py            # both models, keep 0.5 0.25 0.1, 3 seeds
    .venv/bin/python bench/compressors.py --quick    # MLP only, one keep ratio, one seed
    .venv/bin/python bench/compressors.py --tables curvatures --seeds 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dropinf import CompressionConfig, CurvatureConfig, InfluenceEngine
from dropinf.core import (
    LayerCompressor,
    build_compressor,
    cross_entropy_per_sample,
    discover_layers,
    factored_spec,
    gather_units,
    write_layer,
)
from dropinf.data import DatasetBundle, load_data
from dropinf.metrics import fidelity, roc_auc
from dropinf.models import TrainRecipe, train_model

METHODS = {
    "dropout (energy)": CompressionConfig(method="dropout", mask="energy"),
    "dropout (uniform)": CompressionConfig(method="dropout", mask="uniform"),
    "factorized_gaussian": CompressionConfig(method="factorized_gaussian"),
    "gaussian": CompressionConfig(method="gaussian"),
    "sjlt": CompressionConfig(method="sjlt"),
}
RECIPES = {
    "mlp-64": TrainRecipe(arch="mlp", arch_args={"hidden_sizes": [64]}, epochs=30, seed=0),
    "small_cnn": TrainRecipe(arch="small_cnn", epochs=12, seed=0),
}
KEEP_RATIOS = {"mlp-64": [0.5, 0.25, 0.1], "small_cnn": [0.25, 0.1]}
CURVATURE_KINDS = ("full", "block", "kfac", "ekfac", "identity")
CURVATURE_COMPRESSOR = CompressionConfig(method="dropout", mask="uniform")
TABLES = ("compressors", "curvatures")
DATA_SPEC = "digits:noise=0.1,seed=0"
MAX_DENSE_ENTRIES = 2**28  # a dense Gaussian projection beyond 1 GiB of float32 is not run
TIMING_REPEATS = 21


@dataclass
class Row:
    """One method's measurements at one keep ratio and seed."""

    k: int
    pearson: float
    spearman: float
    top10_proponents: float
    top10_opponents: float
    detection_auc: float
    pearson_own_damping: float
    fit_s: float = 0.0


@dataclass
class Exact:
    """Exact influence: scores (n_test, n_train), self-influence (n_train,) and its damping."""

    scores: np.ndarray
    self_influence: np.ndarray
    damping: float


def exact_influence(model: nn.Module, bundle: DatasetBundle) -> Exact:
    """Exact scores and self-influence with full curvature, λ = 0.1 · mean diag F (Woodbury)."""
    engine = InfluenceEngine(
        model,
        cross_entropy_per_sample,
        CompressionConfig(method="identity"),
        CurvatureConfig(kind="identity"),
        store_dtype=torch.float32,
    )
    engine.fit(bundle.train)
    train = torch.from_numpy(np.array(engine.store.gradients())).double()  # (n, P)
    test = engine.test_gradients(bundle.test)[0].double()  # (m, P)
    n = train.shape[0]
    damping = 0.1 * float(train.pow(2).sum()) / (n * train.shape[1])
    gram = train @ train.T  # (n, n)
    inner = torch.linalg.cholesky(gram + n * damping * torch.eye(n, dtype=gram.dtype))
    test_gram = test @ train.T  # (m, n)
    scores = (test_gram - test_gram @ torch.cholesky_solve(gram, inner)) / damping
    self_inf = (gram.diagonal() - (gram * torch.cholesky_solve(gram, inner)).sum(0)) / damping
    return Exact(scores.float().numpy(), self_inf.float().numpy(), damping)


def captured_layers(
    model: nn.Module, bundle: DatasetBundle, batch_size: int = 256
) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(module, full layer input, full output gradient) of each factored layer on one batch."""
    layout = discover_layers(model)
    inputs, labels = bundle.train.inputs[:batch_size], bundle.train.labels[:batch_size]
    layer_inputs, outputs = [], []

    def keep(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        layer_inputs.append(args[0].detach())
        outputs.append(output)

    hooks = [module.register_forward_hook(keep) for module in layout.modules.values()]
    losses = cross_entropy_per_sample(model, (inputs, labels))
    for hook in hooks:
        hook.remove()
    deltas = torch.autograd.grad(losses.sum(), outputs)
    return list(zip(layout.modules.values(), layer_inputs, deltas, strict=True))


def compression_seconds(
    model: nn.Module, configs: dict[str, CompressionConfig], bundle: DatasetBundle
) -> dict[str, float]:
    """Median seconds per example of each method's compression step alone.

    The step is everything after the forward/backward that all methods share, exactly as the
    engine runs it (``capture.write_layer``): gathering kept units, unfolding or grouped
    backward-weight convolutions, projecting, the per-sample products, and writing float16.
    Methods are timed in turn within each repeat, so a busy machine slows them alike.
    """
    layers = captured_layers(model, bundle)
    specs = [factored_spec(str(i), module) for i, (module, _, _) in enumerate(layers)]
    compressors = {
        label: [build_compressor(spec, config, i) for i, spec in enumerate(specs)]
        for label, config in configs.items()
    }
    seconds: dict[str, list[float]] = {label: [] for label in configs}
    for _ in range(TIMING_REPEATS):
        for label, layer_compressors in compressors.items():
            started = time.perf_counter()
            for compressor, (module, a, delta) in zip(layer_compressors, layers, strict=True):
                kept = gather_units(a, compressor.input_index, compressor.spec)
                out = torch.empty(a.shape[0], compressor.k, dtype=torch.float16)
                write_layer(compressor, module, kept, delta, out)
            seconds[label].append(time.perf_counter() - started)
    batch = layers[0][1].shape[0]
    return {label: statistics.median(values) / batch for label, values in seconds.items()}


def measure(
    model: nn.Module,
    bundle: DatasetBundle,
    config: CompressionConfig,
    exact: Exact,
    kind: str = "full",
) -> Row:
    """Fit one compressor and curvature kind at the exact run's damping; compare with it."""
    curvature = CurvatureConfig(kind=kind, damping=exact.damping, max_full_dim=16384)
    engine = InfluenceEngine(model, cross_entropy_per_sample, config, curvature)
    started = time.perf_counter()
    engine.fit(bundle.train)
    fit_s = time.perf_counter() - started
    agreement = fidelity(engine.pairwise_scores(bundle.test).numpy(), exact.scores, top=10)
    own_damping = InfluenceEngine(
        model, cross_entropy_per_sample, config, CurvatureConfig(kind=kind, max_full_dim=16384)
    )
    own_scores = own_damping.fit(bundle.train).pairwise_scores(bundle.test).numpy()
    return Row(
        k=engine.store.read_manifest()["k"],
        pearson=agreement.pearson,
        spearman=agreement.spearman,
        top10_proponents=agreement.top_proponent_overlap,
        top10_opponents=agreement.top_opponent_overlap,
        detection_auc=roc_auc(engine.self_influence().numpy(), bundle.noisy_mask),
        pearson_own_damping=fidelity(own_scores, exact.scores).pearson,
        fit_s=fit_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-ratios",
        type=float,
        nargs="+",
        default=None,
        help="default: 0.5 0.25 0.1 for the MLP, 0.25 0.1 for the CNN",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(RECIPES))
    parser.add_argument("--quick", action="store_true", help="MLP, keep 0.5, one seed")
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    args = parser.parse_args()
    if args.quick:
        args.keep_ratios, args.seeds, args.models = [0.5], 1, ["mlp-64"]
    keep_ratios = {name: args.keep_ratios or KEEP_RATIOS[name] for name in args.models}
    torch.set_num_threads(2)
    bundle = load_data(DATA_SPEC)
    print(
        f"digits, 10% symmetric noise: {len(bundle.train)} train, {len(bundle.test)} test; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; means over "
        f"{args.seeds} seed(s)\n"
    )
    for name in args.models:
        model = train_model(RECIPES[name], bundle, device="cpu", progress=False).model.eval()
        exact = exact_influence(model, bundle)
        exact_auc = roc_auc(exact.self_influence, bundle.noisy_mask)
        print(
            f"### {name} ({sum(p.numel() for p in model.parameters())} parameters; exact "
            f"self-influence detection AUC {exact_auc:.3f})\n"
        )
        for keep_ratio in keep_ratios[name]:
            if "compressors" in args.tables:
                report(model, bundle, keep_ratio, args.seeds, exact)
            if "curvatures" in args.tables:
                report_curvatures(model, bundle, keep_ratio, args.seeds, exact)


def dense_projection_entries(model: nn.Module, keep_ratio: float) -> int:
    """Entries of the per-layer dense Gaussian matrices (full dim × k) at a keep ratio."""
    return sum(
        spec.full_dim * LayerCompressor(spec, keep_ratio).k for spec in discover_layers(model).specs
    )


def report(
    model: nn.Module, bundle: DatasetBundle, keep_ratio: float, seeds: int, exact: Exact
) -> None:
    """Print one markdown table: every method at one keep ratio."""
    configs = {
        label: CompressionConfig(**{**base.to_dict(), "keep_ratio": keep_ratio})
        for label, base in METHODS.items()
    }
    dense = dense_projection_entries(model, keep_ratio)
    if dense > MAX_DENSE_ENTRIES:
        del configs["gaussian"]
        print(
            f"(gaussian not run at keep ratio {keep_ratio}: its projection matrices would hold "
            f"{dense * 4 / 2**30:.1f} GiB of float32)\n"
        )
    seconds = compression_seconds(model, configs, bundle)
    rows = {
        label: [
            measure(model, bundle, CompressionConfig(**{**config.to_dict(), "seed": seed}), exact)
            for seed in range(seeds)
        ]
        for label, config in configs.items()
    }
    reference = seconds["dropout (energy)"]
    print(f"keep ratio {keep_ratio}, k = {rows['dropout (energy)'][0].k} (dropout, energy)\n")
    print(
        "| method | k | µs/example (compress) | × dropout | Pearson | Spearman | top-10 prop. "
        "| top-10 opp. | detection AUC | Pearson, own λ |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, measured in rows.items():
        print(
            f"| {label} | {measured[0].k} | {seconds[label] * 1e6:.1f} | "
            f"{seconds[label] / reference:.1f} | {fidelity_cells(measured)} |"
        )
    print()


def report_curvatures(
    model: nn.Module, bundle: DatasetBundle, keep_ratio: float, seeds: int, exact: Exact
) -> None:
    """Print one markdown table: the default compressor under every curvature kind."""
    config = CompressionConfig(**{**CURVATURE_COMPRESSOR.to_dict(), "keep_ratio": keep_ratio})
    seeded = [CompressionConfig(**{**config.to_dict(), "seed": seed}) for seed in range(seeds)]
    rows = {
        kind: [measure(model, bundle, each, exact, kind) for each in seeded]
        for kind in CURVATURE_KINDS
    }
    print(f"keep ratio {keep_ratio}, dropout (uniform), k = {rows['full'][0].k}: curvature kinds\n")
    print(
        "| curvature | fit s | Pearson | Spearman | top-10 prop. | top-10 opp. | detection AUC "
        "| Pearson, own λ |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, measured in rows.items():
        fit_s = statistics.median(row.fit_s for row in measured)
        print(f"| {kind} | {fit_s:.2f} | {fidelity_cells(measured)} |")
    print()


def fidelity_cells(measured: list[Row]) -> str:
    """The fidelity and detection cells of a table row: means over the seeds' rows."""
    mean = {
        field: statistics.mean(getattr(row, field) for row in measured)
        for field in Row.__dataclass_fields__
    }
    return (
        f"{mean['pearson']:.3f} | {mean['spearman']:.3f} | {mean['top10_proponents']:.2f} | "
        f"{mean['top10_opponents']:.2f} | {mean['detection_auc']:.3f} | "
        f"{mean['pearson_own_damping']:.3f}"
    )


if __name__ == "__main__":
    main()
