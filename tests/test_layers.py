"""The package's shape: importing the engine pulls in no UI library."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

UI_LIBRARIES = ("streamlit", "plotly", "umap")


@pytest.mark.parametrize(
    "module", ["dropinf", "dropinf.core", "dropinf.engine", "dropinf.run", "dropinf.review"]
)
def test_importing_the_engine_loads_no_ui_library(module: str) -> None:
    probe = (
        f"import sys, json, {module}; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(result.stdout))
    assert not loaded & set(UI_LIBRARIES), f"{module} imports {loaded & set(UI_LIBRARIES)}"
