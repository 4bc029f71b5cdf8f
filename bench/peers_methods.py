"""One adapter per attribution method of the peer benchmark.

Every adapter takes the same trained model, the same train / test splits in the same order, the
same per-sample cross-entropy loss, float32 and the same thread count, and returns a
:class:`MethodResult` with its scores as (n_test, n_train), ``+ = proponent``, and a per-example
suspicion (self-influence) for mislabel detection. Peer libraries are imported inside their
adapter, so the dropinf adapters run in the main venv without them.
"""

from __future__ import annotations

import copy
import math
import signal
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peers_measure import MethodResult, PeakMemory, folder_bytes, phase
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset

BATCH = 256


@dataclass
class Problem:
    """The shared inputs of every method on one setting.

    Attributes:
        model: The trained checkpoint (every adapter gets its own deep copy).
        train: Training split (noisy labels), fixed order.
        test: Test split (the first ``n_test`` examples are scored).
        k: Compressed dimension matched across methods that have one.
        damping_ratio: Damping as a multiple of the mean diagonal of the curvature.
        num_classes: Number of classes.
        workdir: Scratch folder for methods that write to disk.
    """

    model: nn.Module
    train: Dataset
    test: Dataset
    k: int
    damping_ratio: float
    num_classes: int
    workdir: Path


def loader(dataset: Dataset, batch_size: int = BATCH) -> DataLoader:
    """A deterministic (unshuffled) loader."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


class MethodTimeoutError(TimeoutError):
    """A method ran past the benchmark's per-method time limit."""


def _on_alarm(signum: int, frame: object) -> None:
    raise MethodTimeoutError("ran past the per-method time limit")


def run_method(
    name: str,
    adapter: Callable[[Problem, MethodResult], None],
    problem: Problem,
    timeout_s: int = 0,
) -> MethodResult:
    """Run one adapter under the memory sampler; record the exception text if it fails.

    Args:
        name: Method label.
        adapter: The method's adapter.
        problem: The shared inputs.
        timeout_s: Stop the method after this many seconds (0: no limit); a stopped method is
            reported with ``error = "MethodTimeoutError: ... (> N s)"``.
    """
    result = MethodResult(name=name)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(timeout_s)
    try:
        with PeakMemory() as memory:
            adapter(problem, result)
        result.peak_bytes = memory.peak
        check_output(result, len(problem.test), len(problem.train))
    except Exception as error:  # a peer failing is a result, not a crash of the benchmark
        result.error = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        if isinstance(error, MethodTimeoutError):
            result.error += f" (> {timeout_s} s)"
        result.note = traceback.format_exc(limit=-3)[-1500:]
        result.scores = result.suspicion = None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return result


def check_output(result: MethodResult, n_test: int, n_train: int) -> None:
    """Refuse outputs of the wrong shape or with NaN / inf (reported as the method's error)."""
    expected = {"scores": (n_test, n_train), "suspicion": (n_train,)}
    for name, shape in expected.items():
        value = getattr(result, name)
        if value is None:
            continue
        if value.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, the method returned {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name}: expected finite values, found NaN or infinity")


# --------------------------------------------------------------------------------- dropinf


def dropinf_adapter(method: str, keep_ratio: float, mask: str = "uniform"):
    """An adapter running dropinf's InfluenceEngine with one compression method."""

    def adapter(problem: Problem, result: MethodResult) -> None:
        from dropinf.config import CompressionConfig, CurvatureConfig
        from dropinf.engine import InfluenceEngine
        from dropinf.losses import cross_entropy_per_sample

        compression = CompressionConfig(method=method, keep_ratio=keep_ratio, seed=0, mask=mask)
        curvature = CurvatureConfig(kind="auto", damping_ratio=problem.damping_ratio)
        run_dir = Path(tempfile.mkdtemp(dir=problem.workdir, prefix=f"dropinf-{method}-"))
        engine = InfluenceEngine(
            copy.deepcopy(problem.model),
            cross_entropy_per_sample,
            compression,
            curvature,
            run_dir=run_dir,
            overwrite=True,
        )
        _time_engine_phases(engine, result)
        engine.fit(problem.train, batch_size=BATCH)
        with phase(result, "scoring"):
            result.scores = engine.pairwise_scores(problem.test, batch_size=BATCH).numpy()
        with phase(result, "self_influence"):
            result.suspicion = engine.self_influence().numpy()
        result.bytes_stored = folder_bytes(run_dir)
        result.k = int(engine.store.read_manifest()["k"])
        result.note = f"{method}, keep {keep_ratio}, mask {mask}, auto curvature"

    return adapter


ENGINE_PHASES = {
    "_prepare_capture": "gradients",
    "_gradient_phase": "gradients",
    "_curvature_phase": "curvature",
    "_self_influence_phase": "self_influence",
}


def _time_engine_phases(engine, result: MethodResult) -> None:
    """Wrap the engine's fit stages so each one's time lands in its phase."""

    def timed(method, name):
        def wrapper(*args, **kwargs):
            with phase(result, name):
                return method(*args, **kwargs)

        return wrapper

    for attribute, name in ENGINE_PHASES.items():
        setattr(engine, attribute, timed(getattr(engine, attribute), name))


# ------------------------------------------------------------------------------- kronfluence


def kronfluence_adapter(problem: Problem, result: MethodResult) -> None:
    """Kronfluence EK-FAC on every Linear / Conv2d layer, loss as the measurement."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class ClassificationTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            inputs, labels = batch
            logits = model(inputs)
            if sample:  # true Fisher: labels sampled from the model
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits, -1), 1).flatten()
            return functional.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            inputs, labels = batch
            return functional.cross_entropy(model(inputs), labels, reduction="sum")

    task = ClassificationTask()
    model = prepare_model(copy.deepcopy(problem.model).eval(), task)
    out = Path(tempfile.mkdtemp(dir=problem.workdir, prefix="kronfluence-"))
    analyzer = Analyzer(
        "bench",
        model=model,
        task=task,
        cpu=True,
        output_dir=str(out),
        disable_tqdm=True,
        disable_model_save=True,
    )
    with phase(result, "curvature"):  # EK-FAC factors; gradients are taken again when scoring
        analyzer.fit_all_factors(
            "ekfac",
            dataset=problem.train,
            per_device_batch_size=BATCH,
            factor_args=FactorArguments(strategy="ekfac"),
            overwrite_output_dir=True,
        )
    score_args = ScoreArguments(damping_factor=None)  # Kronfluence's 0.1 · mean eigenvalue
    with phase(result, "scoring"):
        analyzer.compute_pairwise_scores(
            "pair",
            factors_name="ekfac",
            query_dataset=problem.test,
            train_dataset=problem.train,
            score_args=score_args,
            per_device_query_batch_size=BATCH,
            per_device_train_batch_size=BATCH,
            overwrite_output_dir=True,
        )
        scores = analyzer.load_pairwise_scores("pair")["all_modules"]
    with phase(result, "self_influence"):
        analyzer.compute_self_scores(
            "self",
            factors_name="ekfac",
            train_dataset=problem.train,
            score_args=score_args,
            per_device_train_batch_size=BATCH,
            overwrite_output_dir=True,
        )
        suspicion = analyzer.load_self_scores("self")["all_modules"]
    result.scores = scores.float().numpy()
    result.suspicion = suspicion.float().numpy()
    result.bytes_stored = folder_bytes(out / "bench" / "factors_ekfac")
    result.note = "EK-FAC (no compression; k = all parameters), damping heuristic 0.1·mean eig"


# ------------------------------------------------------------------------------------ traker


def traker_adapter(problem: Problem, result: MethodResult) -> None:
    """TRAK (``traker``) with its CPU ``BasicProjector`` (dense Gaussian), proj_dim = k."""
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    model = copy.deepcopy(problem.model).eval()
    grad_dim = sum(p.numel() for p in model.parameters())
    projector = BasicProjector(
        grad_dim=grad_dim, proj_dim=problem.k, seed=0, proj_type=ProjectionType.normal, device="cpu"
    )
    out = Path(tempfile.mkdtemp(dir=problem.workdir, prefix="traker-"))
    traker = TRAKer(
        model=model,
        task="image_classification",
        train_set_size=len(problem.train),
        save_dir=str(out),
        device="cpu",
        projector=projector,
        proj_dim=problem.k,
        use_half_precision=False,
        load_from_save_dir=True,
    )
    checkpoint = model.state_dict()
    with phase(result, "gradients"):
        traker.load_checkpoint(checkpoint, model_id=0)
        for batch in loader(problem.train):
            traker.featurize(batch=batch, num_samples=len(batch[0]))
    with phase(result, "curvature"):
        features = torch.as_tensor(np.asarray(traker.saver.current_store["features"]))  # (n, k)
        mean_diag = float(features.float().pow(2).sum(dim=0).mean())  # mean diag of ΦᵀΦ
        traker.score_computer.lambda_reg = problem.damping_ratio * mean_diag
        traker.finalize_features()
    result.scores = _traker_scores(traker, checkpoint, problem.test, "test", result, "scoring")
    self_scores = _traker_scores(
        traker, checkpoint, problem.train, "self", result, "self_influence"
    )
    result.suspicion = np.diag(self_scores).copy()
    result.bytes_stored = folder_bytes(out)
    result.k = problem.k
    result.note = "TRAK, 1 checkpoint, λ = shared ratio · mean diag ΦᵀΦ; self = diag of train×train"


def _traker_scores(traker, checkpoint, dataset, name, result, phase_name) -> np.ndarray:
    with phase(result, phase_name):
        traker.start_scoring_checkpoint(
            exp_name=name, checkpoint=checkpoint, model_id=0, num_targets=len(dataset)
        )
        for batch in loader(dataset):
            traker.score(batch=batch, num_samples=len(batch[0]))
        scores = traker.finalize_scores(exp_name=name)  # (n_train, n_targets)
    return np.asarray(scores, dtype=np.float32).T


# ------------------------------------------------------------------------------------ dattri


def _dattri_task(model: nn.Module):
    """The functional (per-example, ``torch.func``) task of dattri's TRAK."""
    from dattri.task import AttributionTask

    def loss_func(params, data):
        inputs, labels = data
        logits = torch.func.functional_call(model, params, inputs.unsqueeze(0))
        return functional.cross_entropy(logits, labels.unsqueeze(0))

    return AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())


def _dattri_batch_task(model: nn.Module):
    """The hook-based (whole-batch) task of dattri's block-projected IF (LoGra, FactGraSS)."""
    from dattri.task import AttributionTask

    def loss_func(net, batch, device):
        inputs, labels = (tensor.to(device) for tensor in batch)
        return functional.cross_entropy(net(inputs), labels, reduction="sum")

    return AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())


def dattri_trak_adapter(problem: Problem, result: MethodResult) -> None:
    """Dattri's TRAKAttributor (dense Gaussian projection to k), one checkpoint."""
    from dattri.algorithm.trak import TRAKAttributor

    model = copy.deepcopy(problem.model).eval()
    task = _dattri_task(model)

    def correct_probability(params, data):
        inputs, labels = data
        logits = torch.func.functional_call(model, params, inputs.unsqueeze(0))
        return torch.exp(-functional.cross_entropy(logits, labels.unsqueeze(0)))

    attributor = TRAKAttributor(
        task,
        correct_probability,
        device="cpu",
        projector_kwargs={"proj_dim": problem.k, "device": "cpu"},
    )
    with phase(result, "scoring"):  # no .cache(): its self_attribute then refuses the loader
        result.scores = attributor.attribute(loader(problem.test), loader(problem.train)).T.numpy()
    with phase(result, "self_influence"):
        result.suspicion = attributor.self_attribute(loader(problem.train)).numpy().ravel()
    result.k = problem.k
    result.bytes_stored = len(problem.train) * problem.k * 4
    result.note = "dattri TRAK, regularization 0 (default); recomputes train features per call"


def dattri_block_adapter(kind: str):
    """Dattri's block-projected IF: ``logra`` (factorised Gaussian) or ``factgrass``."""

    def adapter(problem: Problem, result: MethodResult) -> None:
        from dattri.algorithm.factgrass import FactGraSSAttributor
        from dattri.algorithm.logra import LoGraAttributor

        model = copy.deepcopy(problem.model).eval()
        task = _dattri_batch_task(model)
        side = max(1, round(math.sqrt(problem.k)))
        if kind == "logra":
            attributor = LoGraAttributor(task, device="cpu", proj_dim=side * side, offload="cpu")
        else:
            attributor = FactGraSSAttributor(
                task, device="cpu", proj_dim=side * side, offload="cpu"
            )
        train_loader = loader(problem.train)
        with phase(result, "gradients"):  # projected gradients and the eFIM inverse
            attributor.cache(train_loader)
        with phase(result, "scoring"):
            scores = attributor.attribute(train_loader, loader(problem.test))
        with phase(result, "self_influence"):
            result.suspicion = attributor.compute_self_attribution().numpy()
        result.scores = scores.T.numpy()
        result.k = side * side
        result.bytes_stored = len(problem.train) * result.k * 4
        result.note = f"dattri {kind}, Linear layers only, proj_dim {side}² per layer"

    return adapter


# ------------------------------------------------------------------------------------ captum


def captum_tracin_adapter(problem: Problem, result: MethodResult) -> None:
    """Captum TracInCP on one checkpoint: full-gradient dot products (no curvature, k = p)."""
    from captum.influence import TracInCP

    model = copy.deepcopy(problem.model).eval()
    path = Path(tempfile.mkdtemp(dir=problem.workdir, prefix="captum-")) / "ckpt.pt"
    torch.save(model.state_dict(), path)

    def load(net: nn.Module, ckpt: str) -> float:
        net.load_state_dict(torch.load(ckpt, weights_only=True))
        return 1.0  # learning-rate weight of the checkpoint

    tracin = TracInCP(
        model,
        problem.train,
        checkpoints=[str(path)],
        checkpoints_load_func=load,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=BATCH,
        sample_wise_grads_per_batch=True,
    )
    inputs, labels = next(iter(loader(problem.test, len(problem.test))))
    with phase(result, "scoring"):
        result.scores = tracin.influence((inputs, labels)).numpy()
    with phase(result, "self_influence"):
        result.suspicion = tracin.self_influence().numpy()
    result.bytes_stored = path.stat().st_size
    result.note = "TracInCP, 1 checkpoint, recomputes train gradients per query (nothing cached)"


# ---------------------------------------------------------------------------------- cleanlab


def cleanlab_adapter(train_fold: Callable[[np.ndarray], nn.Module], folds: int = 5):
    """Cleanlab ``find_label_issues`` on cross-validated predicted probabilities.

    Args:
        train_fold: Trains the same recipe on the training examples of a boolean mask.
        folds: Number of cross-validation folds.
    """

    def adapter(problem: Problem, result: MethodResult) -> None:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        labels = np.asarray([int(y) for _, y in problem.train])
        with phase(result, "cross_val_training"):
            probs = _cross_val_probs(problem.train, labels, train_fold, problem.num_classes, folds)
        with phase(result, "find_label_issues"):
            issues = find_label_issues(labels, probs, filter_by="prune_by_noise_rate")
            quality = get_label_quality_scores(labels, probs)
        result.suspicion = 1.0 - quality
        result.bytes_stored = probs.nbytes
        result.note = f"{folds}-fold CV probs; flags {int(issues.sum())} issues"

    return adapter


def _cross_val_probs(train, labels, train_fold, num_classes: int, folds: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    fold_of = rng.permutation(len(labels)) % folds
    probs = np.zeros((len(labels), num_classes), dtype=np.float64)
    inputs = torch.stack([x for x, _ in train])
    for fold in range(folds):
        model = train_fold(fold_of != fold).eval()
        held_out = np.flatnonzero(fold_of == fold)
        with torch.no_grad():
            logits = model(inputs[torch.from_numpy(held_out)])
        probs[held_out] = torch.softmax(logits, -1).double().numpy()
    return probs
