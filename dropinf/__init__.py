"""dropinf: influence functions on dropout-compressed gradients.

The public API::

    from dropinf import InfluenceEngine, CompressionConfig, CurvatureConfig
"""

__version__ = "0.1.0"

from dropinf.core import CompressionConfig, CurvatureConfig
from dropinf.engine import InfluenceEngine

__all__ = ["CompressionConfig", "CurvatureConfig", "InfluenceEngine", "__version__"]
