"""dropinf: influence functions on dropout-compressed gradients."""

__version__ = "0.1.0"
