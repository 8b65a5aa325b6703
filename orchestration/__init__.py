"""Typed config, the ``stgrl`` CLI, stage chaining (SFT -> RL Ray jobs), the RL loop, metrics."""
