"""Ray actor shells and the ZeroMQ/msgspec data plane (trajectories, rewards, weights)."""
