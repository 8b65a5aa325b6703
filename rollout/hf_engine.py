"""HF transformers rollout engine: batched ``generate`` (CPU default, the embedded demo; docs/design.md §7).

The prompt is processed once by the data pipeline and sampled G times in one ``generate`` call with
``num_return_sequences=G``: transformers encodes the frames once and expands features and text tensors
to G rows. `expand_group` is the explicit twin (text tensors repeated, ``pixel_values`` concatenated G
times, ``image_grid_thw`` repeated) that the tests check it against.

Behaviour log-probs come from ``output_logits`` (the raw logits, before any logits processor), as
``log_softmax(logits / T)`` at the sampled token — the convention of ``stgrl.rollout.engine`` and of
the learner's ``completion_logprobs``. Sampling itself does use the processors: temperature, top-p,
and the suppression of the vision special tokens (docs/design.md §2.2: a sampled ``<|video_pad|>`` breaks the
learner's re-forward), so suppressed tokens are never sampled but do not renormalise the log-probs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from stgrl.rollout.engine import EnginePrompt, SamplingSpec, check_completion, named_tensors
from stgrl.transport.wire import Completion

logger = logging.getLogger(__name__)

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
VISION_TOKENS = ("<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>")
# First dim counts images (or their patches), not batch rows: repeated as whole blocks per row.
PER_IMAGE_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
PER_ROW_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def expand_group(model_inputs: Mapping[str, torch.Tensor], group_size: int) -> dict[str, torch.Tensor]:
    """Batch-of-1 processor output -> G identical rows (the model consumes images in row order).

    The reference for what ``num_return_sequences`` does inside ``generate`` (which additionally runs
    the vision tower only once); also what a batch re-forward of one group looks like.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in model_inputs.items():
        if key in PER_ROW_KEYS:
            if value.shape[0] != 1:
                raise ValueError(f"{key} must hold one prompt, got shape {tuple(value.shape)}")
            out[key] = value.expand(group_size, *value.shape[1:]).contiguous()
        elif key in PER_IMAGE_KEYS:
            out[key] = torch.cat([value] * group_size, dim=0)
        else:
            raise ValueError(f"don't know how to expand model input {key!r} to a group")
    return out


class HFEngine:
    """Implements ``stgrl.rollout.engine.RolloutEngine`` on an HF model's ``generate``.

    Loads any checkpoint that ``AutoModelForImageTextToText`` (vision-language) or
    ``AutoModelForCausalLM`` (text-only) loads; ``model``/``tokenizer`` may be passed in instead.
    """

    def __init__(self, model: Any, tokenizer: Any = None, *, processor: Any = None) -> None:
        if tokenizer is None:
            if processor is None:
                raise ValueError("HFEngine needs a tokenizer or a processor")
            tokenizer = processor.tokenizer
        self.model = model.eval()
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        stop = {vocab[t] for t in STOP_TOKENS if t in vocab}
        if tokenizer.eos_token_id is not None:
            stop.add(tokenizer.eos_token_id)
        self._stop_ids = sorted(stop)
        self._suppress_ids = sorted(vocab[t] for t in VISION_TOKENS if t in vocab)
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self._stop_ids[0]
        self._device = next(model.parameters()).device
        self._version = -1

    @classmethod
    def from_pretrained(cls, model_path: str | Path, *, dtype: str = "float32", device: str = "cpu") -> HFEngine:
        import json

        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        config = json.loads((Path(model_path) / "config.json").read_text())
        auto = AutoModelForImageTextToText if "vision_config" in config else AutoModelForCausalLM
        model = auto.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
        return cls(model, AutoTokenizer.from_pretrained(model_path))

    @property
    def version(self) -> int:
        return self._version

    @property
    def stop_token_ids(self) -> list[int]:
        return list(self._stop_ids)

    @property
    def suppressed_token_ids(self) -> list[int]:
        """Vision special tokens that are never sampled."""
        return list(self._suppress_ids)

    @torch.no_grad()
    def load_weights(self, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                     version: int) -> None:
        """Copy a full version into the model's tensors in place.

        Every state-dict entry must be covered (tied entries sharing storage with a covered one
        excepted) and no unknown name may appear: a partial version must never run under a version
        number. Checked before anything is written, so a bad version leaves the model untouched.
        """
        started = time.perf_counter()
        state = self.model.state_dict()
        incoming = dict(named_tensors(weights))
        unknown = sorted(set(incoming) - set(state))
        if unknown:
            raise KeyError(f"version {version}: unknown weight names {unknown[:5]}")
        for name, tensor in incoming.items():
            if tuple(tensor.shape) != tuple(state[name].shape):
                raise ValueError(f"version {version}: {name} has shape {tuple(tensor.shape)}, "
                                 f"model has {tuple(state[name].shape)}")
        covered = {state[n].data_ptr() for n in incoming}
        missing = sorted(n for n in set(state) - set(incoming) if state[n].data_ptr() not in covered)
        if missing:
            raise KeyError(f"version {version}: missing weights {missing[:5]} (of {len(missing)})")
        for name, tensor in incoming.items():
            state[name].copy_(tensor)
        self._version = version
        logger.info("HF engine at version %d (%d tensors, %.3f s)", version, len(incoming),
                    time.perf_counter() - started)

    @torch.no_grad()
    def generate_group(self, prompt: EnginePrompt, group_size: int,
                       sampling: SamplingSpec) -> list[Completion]:
        """One batched ``generate`` of G samples; greedy when ``temperature == 0``.

        The batch-of-1 prompt goes in with ``num_return_sequences=G``: transformers runs the vision
        tower once and expands the image features and text tensors to G rows itself (bit-identical to
        feeding `expand_group`'s G rows, which encode the same pixels G times; see the tests). Greedy
        samples coincide, so one is generated and repeated (HF refuses G > 1 without sampling).
        """
        from transformers import GenerationConfig

        n = 1 if sampling.greedy else group_size
        inputs = {k: v.to(self._device) for k, v in prompt.model_inputs.items()}
        if inputs["input_ids"].shape[0] != 1:
            raise ValueError(f"EnginePrompt holds one prompt, got input_ids {tuple(inputs['input_ids'].shape)}")
        prompt_len = inputs["input_ids"].shape[1]
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens, do_sample=not sampling.greedy, num_return_sequences=n,
            temperature=None if sampling.greedy else sampling.temperature,
            top_p=None if sampling.greedy else sampling.top_p, top_k=None,
            eos_token_id=self._stop_ids, pad_token_id=self._pad_id,
            bad_words_ids=[[i] for i in self._suppress_ids] or None,
            stop_strings=list(sampling.stop) or None,
            output_logits=True, return_dict_in_generate=True,
        )
        extra = {"tokenizer": self.tokenizer} if sampling.stop else {}
        with torch.random.fork_rng(devices=[]):
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            out = self.model.generate(**inputs, generation_config=config, **extra)
        new_tokens = out.sequences[:, prompt_len:]
        logits = torch.stack(out.logits, dim=1).float()  # [n, T, V], raw (unprocessed)
        logp = torch.log_softmax(logits / sampling.logprob_temperature, dim=-1)
        token_logp = logp.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        completions = [self._completion(new_tokens[r], token_logp[r], sampling) for r in range(n)]
        return completions * (group_size // n)

    def generate_groups(self, prompts: list[EnginePrompt], group_size: int,
                        samplings: list[SamplingSpec]) -> list[list[Completion]]:
        """:meth:`generate_group` per prompt: HF ``generate`` pads a batch, so prompts of different
        lengths and images gain nothing from sharing a call."""
        if len(prompts) != len(samplings):
            raise ValueError(f"{len(prompts)} prompts but {len(samplings)} sampling specs")
        return [self.generate_group(p, group_size, s) for p, s in zip(prompts, samplings)]

    def _completion(self, tokens: torch.Tensor, logp: torch.Tensor, sampling: SamplingSpec) -> Completion:
        """Cut one row after its stop (later positions are padding): the first stop token, or the
        first prefix whose text contains a stop string (which stays in the completion)."""
        ids = tokens.tolist()
        end = next((i + 1 for i, t in enumerate(ids) if t in self._stop_ids), None)
        if end is None and sampling.stop:
            end = next((k for k in range(1, len(ids) + 1)
                        if any(s in self.tokenizer.decode(ids[:k], skip_special_tokens=True) for s in sampling.stop)),
                       None)
        finish = "length" if end is None else "stop"
        ids = ids[:end]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return check_completion(Completion(token_ids=ids, behaviour_logprobs=logp[:len(ids)].tolist(), text=text,
                                           finish_reason=finish))
