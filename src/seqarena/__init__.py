"""seqarena: Mamba vs Transformer++, reproduced end to end."""

__version__ = "0.1.0"
