"""GSPO and SFT on DeepSpeed, loss math as pure functions, checkpoints."""
