"""The ZeroMQ data plane every socket user builds on: wire schema, tensor frames, CurveZMQ security,
endpoints, the trajectory and weight channels and same-host shared-memory snapshots. Imports no Ray."""
