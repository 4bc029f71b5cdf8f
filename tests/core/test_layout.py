from __future__ import annotations

from torch import nn

from dropinf.core import discover_layers


def test_layer_table_names_the_module_each_parameter_belongs_to() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(64), nn.Linear(64, 2)
    )
    specs = {spec.name: spec.to_dict() for spec in discover_layers(model).specs}
    assert specs["0"]["kind"] == "conv2d" and specs["0"]["module"] == "Conv2d"
    assert specs["4"]["kind"] == "linear" and specs["4"]["module"] == "Linear"
    for name in ("1.weight", "1.bias"):
        assert specs[name]["kind"] == "flat" and specs[name]["module"] == "BatchNorm2d"
    assert specs["3.weight"]["module"] == "LayerNorm"
    assert "1.running_mean" not in specs  # buffers are not attributed


def test_a_frozen_norm_is_not_attributed() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[1].requires_grad_(False)
    names = [spec.name for spec in discover_layers(model).specs]
    assert names == ["0", "2"]
