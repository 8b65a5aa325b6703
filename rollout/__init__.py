"""Generation engines (HF generate on CPU, vLLM on GPU), video loading, prompt building, data."""
