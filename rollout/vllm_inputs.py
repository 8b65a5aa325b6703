"""What the vLLM engine sends to vLLM, as pure functions: prompt ids and weight names.

Kept apart from :mod:`stgrl.rollout.vllm_engine` (which imports vLLM) so the main test suite checks
them without vLLM installed.

Prompt ids. The data pipeline's processor output holds *expanded* ids: one ``<|image_pad|>`` per
visual token of each image. vLLM runs its own processor on the images and expands every placeholder
it finds again, silently (two images of 16 tokens: 67 → 97 prompt tokens, and wrong log-probs), so
it must get the *unexpanded* ids — one placeholder per image — beside ``multi_modal_data``.

Weight names. The learner's ``state_dict`` of a Qwen2.5-VL under transformers 5 says
``model.language_model.*`` and ``model.visual.*``; the checkpoint on disk (and vLLM's own loader
mapping) says ``model.*`` and ``visual.*``. vLLM's ``reload_weights`` accepts both; our pre-flight
check compares in the checkpoint's namings. A model with tied embeddings stores no ``lm_head.weight``
on disk, but vLLM keeps a separate ``lm_head`` tensor after a reload unless ``lm_head.weight`` is
sent, so it is always sent (a copy of the input embeddings when the learner left it out).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# learner (transformers in-memory) prefix -> checkpoint prefix; first match wins
_NAME_PREFIXES = (
    ("model.language_model.", "model."),
    ("model.visual.", "visual."),
)
LM_HEAD = "lm_head.weight"
EMBED = "model.embed_tokens.weight"


def checkpoint_name(name: str) -> str:
    """The checkpoint's name of a learner tensor (checkpoint names map to themselves)."""
    for learner_prefix, ckpt_prefix in _NAME_PREFIXES:
        if name.startswith(learner_prefix):
            return ckpt_prefix + name[len(learner_prefix):]
    return name


def with_tied_lm_head(pairs: list[tuple[str, Any]], tied: bool) -> list[tuple[str, Any]]:
    """``pairs`` plus ``lm_head.weight`` = the input embeddings when the model ties them and the
    learner did not send it (vLLM's lm_head would keep its old values otherwise)."""
    if not tied or any(checkpoint_name(n) == LM_HEAD for n, _ in pairs):
        return pairs
    embed = next((t for n, t in pairs if checkpoint_name(n) == EMBED), None)
    return pairs if embed is None else [*pairs, (LM_HEAD, embed)]


def unexpanded_prompt_ids(ids: Sequence[int], pad_id: int, tokens_per_image: Sequence[int]) -> list[int]:
    """Collapse each image's run of ``pad_id`` into one placeholder, checking the run lengths.

    ``tokens_per_image[i]`` is image ``i``'s visual token count (its grid ``t*h*w / merge**2``): a run
    of another length means the ids and the pixels disagree, which is refused rather than guessed.
    """
    out: list[int] = []
    runs: list[int] = []
    for token in ids:
        if token == pad_id:
            if out and out[-1] == pad_id:
                runs[-1] += 1
                continue
            runs.append(1)
        out.append(token)
    if runs != list(tokens_per_image):
        raise ValueError(f"prompt has image placeholder runs {runs[:8]} (of {len(runs)}) but its images need "
                         f"{list(tokens_per_image)[:8]} (of {len(tokens_per_image)}) visual tokens")
    return out


def tokens_per_image(image_grid_thw: Any, merge_size: int) -> list[int]:
    """Visual tokens of each image from the processor's ``image_grid_thw`` rows ``(t, h, w)``."""
    return [int(t) * int(h) * int(w) // (merge_size * merge_size) for t, h, w in image_grid_thw.tolist()]
