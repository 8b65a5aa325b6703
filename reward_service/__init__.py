"""Pure reward functions (temporal gating + adaptive proximity) and the CPU-sharded service."""
