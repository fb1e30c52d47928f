"""minibert: BERT from scratch on NumPy (and CuPy), with hand-written backward passes."""

__version__ = "0.1.0"
