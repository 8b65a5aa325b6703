"""stgrl: train video language models to show spatio-temporal evidence.

The design's top-level folders are mapped under this namespace (``actors/`` -> ``stgrl.actors``).
Importing ``stgrl`` must stay cheap: no torch, Ray or transformers at import time.
"""

__version__ = "0.1.0"
