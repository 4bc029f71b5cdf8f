"""The run manifest: its schema, how a fresh one is built, and when a saved one may be reused.

``manifest.json`` records everything a run's files depend on (the signature: format, configs,
dtypes, loss, model and data fingerprints, n_train) and how far the run got (status, rows done,
timings). A saved run is reused only when its whole signature equals the one asked for. The
shard size is decided here too, once the compressed dimension k is known.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import torch

from dropinf.core import CompressionConfig, CurvatureConfig, LayerCompressor, LayerSpec
from dropinf.errors import RunConfigMismatchError
from dropinf.run.files import now_iso

FORMAT_VERSION = 2
SHARD_BYTES = 64 * 2**20
SHARDS_PER_PROCESS = 4  # several processes: shards small enough that each gets at least this many
# Everything the stored scores depend on: a run is reused only when all of these are equal.
SIGNATURE_FIELDS = (
    "format",
    "compression",
    "curvature",
    "dtype",
    "store_dtype",
    "loss",
    "model_fingerprint",
    "data_fingerprint",
    "n_train",
)


class Manifest(TypedDict):
    """The fields of ``manifest.json`` (``updated`` is stamped by ``RunStore.write_manifest``).

    ``k``, ``shard_rows`` and the layers' ``k`` are None until the compressors are saved;
    ``curvature_kind`` and ``damping`` until the curvature is fitted; ``test_fingerprint``
    names the test set whose scores are stored (None: none are); ``world_size`` how many
    processes computed the run (torch.distributed), the last time it was resumed.
    """

    format: int
    status: str
    compression: dict[str, Any]
    curvature: dict[str, Any]
    dtype: str
    store_dtype: str
    loss: str
    model_fingerprint: str
    data_fingerprint: str
    test_fingerprint: str | None
    n_train: int
    rows_done: int
    layers: list[dict[str, Any]]
    k: int | None
    shard_rows: int | None
    curvature_kind: str | None
    damping: float | None
    provenance: dict[str, Any]
    versions: dict[str, str]
    created: str
    timings: dict[str, float]
    error: str | None
    world_size: int


def dtype_name(dtype: torch.dtype) -> str:
    """``float32`` for ``torch.float32`` and so on."""
    return str(dtype).removeprefix("torch.")


def new_manifest(
    *,
    compression: CompressionConfig,
    curvature: CurvatureConfig,
    dtype: torch.dtype,
    store_dtype: torch.dtype,
    loss: str,
    model_fingerprint: str,
    data_fingerprint: str,
    n_train: int,
    specs: Sequence[LayerSpec],
    provenance: dict[str, Any],
    dropinf_version: str,
) -> Manifest:
    """The manifest of a run that has not started: its signature, nothing done yet.

    ``dropinf_version`` is passed in (``dropinf.__version__``): this layer never imports the
    top-level package, which imports the engine.
    """
    return Manifest(
        format=FORMAT_VERSION,
        status="running",
        compression=compression.to_dict(),
        curvature=curvature.to_dict(),
        dtype=dtype_name(dtype),
        store_dtype=dtype_name(store_dtype),
        loss=loss,
        model_fingerprint=model_fingerprint,
        data_fingerprint=data_fingerprint,
        test_fingerprint=None,
        n_train=n_train,
        rows_done=0,
        layers=[{**spec.to_dict(), "k": None} for spec in specs],
        k=None,
        shard_rows=None,
        curvature_kind=None,
        damping=None,
        provenance=provenance,
        versions={
            "dropinf": dropinf_version,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        created=now_iso(),
        timings={},
        error=None,
        world_size=1,
    )


def shard_rows_for(
    k: int, store_dtype: torch.dtype, batch_size: int, n_rows: int = 0, processes: int = 1
) -> int:
    """Rows per shard: whole capture batches filling about ``SHARD_BYTES`` (at least one).

    With several processes, shards are also cut small enough that each process gets about
    ``SHARDS_PER_PROCESS`` of the ``n_rows`` (still whole batches, so a row's batch, and
    therefore its gradient, is the one a single process would capture).
    """
    itemsize = torch.empty(0, dtype=store_dtype).element_size()
    whole_batches = SHARD_BYTES // (k * itemsize) // batch_size  # batches never straddle
    if processes > 1:
        per_shard = -(-n_rows // (processes * SHARDS_PER_PROCESS))
        whole_batches = min(whole_batches, -(-per_shard // batch_size))
    return batch_size * max(1, whole_batches)


def layer_fields(
    specs: Sequence[LayerSpec],
    compressors: Sequence[LayerCompressor],
    store_dtype: torch.dtype,
    batch_size: int,
    shard_rows: int | None = None,
) -> dict[str, Any]:
    """The manifest fields fixed by the compressors: the layer table, k and the shard size.

    Args:
        specs: The captured layers, in capture order.
        compressors: Their compressors.
        store_dtype: Precision of the stored gradients.
        batch_size: The capture batch size.
        shard_rows: Rows per shard; None sizes shards with ``shard_rows_for``.

    Returns:
        ``layers``, ``k`` and ``shard_rows``.
    """
    layers = [{**s.to_dict(), "k": c.k} for s, c in zip(specs, compressors, strict=True)]
    k = sum(c.k for c in compressors)
    return {
        "layers": layers,
        "k": k,
        "shard_rows": shard_rows or shard_rows_for(k, store_dtype, batch_size),
    }


def is_dropinf_manifest(manifest: dict[str, Any]) -> bool:
    """True when a manifest carries dropinf's marker: an integer format and a dropinf version."""
    versions = manifest.get("versions")
    return (
        isinstance(manifest.get("format"), int)
        and isinstance(versions, dict)
        and ("dropinf" in versions)
    )


def signature_differences(saved: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """The signature fields on which a saved run differs from the one asked for.

    ``layers`` is among them when the model's layers are captured differently (another
    dropinf captured a Conv1d as flat parameters, say): the stored gradients would not line
    up with new ones.
    """
    differing = [field for field in SIGNATURE_FIELDS if saved.get(field) != fresh[field]]
    if captured_layers(saved) != captured_layers(fresh):
        differing.append("layers")
    return differing


def captured_layers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's layer table without each layer's k (decided after the manifest)."""
    return [
        {key: value for key, value in layer.items() if key != "k"}
        for layer in manifest.get("layers") or []
    ]


def layer_change(saved: dict[str, Any], fresh: dict[str, Any]) -> str:
    """The first captured layer on which two manifests differ, as ``expected …, found …``."""
    pairs = itertools.zip_longest(captured_layers(fresh), captured_layers(saved), fillvalue={})
    for expected, found in pairs:
        if expected != found:
            return (
                f"expected layer {expected.get('name')} as {expected.get('kind')}, "
                f"found {found.get('name')} as {found.get('kind')}"
            )
    return "the same layers"


def check_same_layers(manifest: dict[str, Any], specs: Sequence[LayerSpec], run_dir: Path) -> None:
    """Refuse a run whose layers were captured otherwise than ``specs`` capture them.

    Raises:
        RunConfigMismatchError: They differ (the run came from another dropinf version).
    """
    fresh = {"layers": [spec.to_dict() for spec in specs]}
    if captured_layers(manifest) != captured_layers(fresh):
        raise RunConfigMismatchError(layers_message(run_dir, manifest, fresh))


def layers_message(run_dir: Path, saved: dict[str, Any], fresh: dict[str, Any]) -> str:
    """Why a run whose layers were captured otherwise cannot be used."""
    return (
        f"run directory {run_dir} holds a run whose model layers were captured differently "
        f"({layer_change(saved, fresh)}), by another version of dropinf; recompute it with "
        "--overwrite (overwrite=True) or use another directory"
    )


def mismatch_message(run_dir: Path, saved: dict[str, Any], fresh: dict[str, Any]) -> str:
    """Why a saved run cannot be reused, naming each differing field."""
    if saved.get("format") != fresh["format"]:
        return (
            f"run directory {run_dir} holds a run of the older run format "
            f"{saved.get('format')} (expected {fresh['format']}); recompute it with "
            "--overwrite (overwrite=True) or use another directory"
        )
    differing = signature_differences(saved, fresh)
    if differing == ["layers"]:
        return layers_message(run_dir, saved, fresh)
    differing = [field for field in differing if field != "layers"]
    return (
        f"run directory {run_dir} holds a run with a different {', '.join(differing)}; "
        f"expected {[fresh[f] for f in differing]}, found {[saved.get(f) for f in differing]}. "
        "Use another directory or --overwrite (overwrite=True)."
    )


def check_format(manifest: dict[str, Any], run_dir: str | Path) -> None:
    """Refuse a run written in another run format.

    Raises:
        RunConfigMismatchError: Its format is not ``FORMAT_VERSION``.
    """
    if manifest.get("format") != FORMAT_VERSION:
        raise RunConfigMismatchError(
            f"run {run_dir} has the run format {manifest.get('format')}, expected "
            f"{FORMAT_VERSION}: recompute it with this version of dropinf"
        )
