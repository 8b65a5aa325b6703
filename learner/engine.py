"""One learner rank's DeepSpeed engine: distributed init, model load, optimizer step, full state dict,
checkpoints and HF export. RL and SFT (`stgrl.learner.rl`, `stgrl.learner.sft`) both drive it.

Concurrency: every method that involves collectives (``step``, ``full_state_dict`` under ZeRO-3,
``save_checkpoint``, ``load_checkpoint``, ``export_hf``) must be called by every rank in the same
order — the Ray wrappers in :mod:`stgrl.learner.actor` do that.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from stgrl.learner import checkpoint as ckpt
from stgrl.learner.config import LearnerConfig
from stgrl.learner.ds_config import build_ds_config
from stgrl.learner.rendezvous import rendezvous_store
from stgrl.learner.schedule import warmup_cosine
from stgrl.transport.security import CurveKeys

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorldInfo:
    """Where this rank sits in the data-parallel group."""

    rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    local_rank: int = 0
    store_keys: CurveKeys | None = field(default=None, repr=False)
    """The group's CURVE key pair for its authenticated
    rendezvous store, the same on every rank; a world of one needs none."""


def on_cpu() -> bool:
    """True when DeepSpeed's accelerator is the CPU one (``DS_ACCELERATOR=cpu`` or no GPU)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cpu"


def init_distributed(world: WorldInfo) -> tuple[Any, Any] | None:
    """Set the torch.distributed env and initialise (gloo on CPU, NCCL on GPU); idempotent per process.

    Returns what must outlive the process group: the rendezvous store (a Python object torch only
    points to: once collected, later groups fail inside torch) and rank 0's store server; None when
    torch.distributed was already initialised.

    On CPU the shared-memory comm op is switched off before DeepSpeed's backend is built: it is a JIT
    compile (~77 s fresh) used only by inference all-reduce (docs/design.md §4 pitfalls). ``LOCAL_SIZE`` is
    deliberately left unset (else it leaks /dev/shm buffers).
    """
    import deepspeed

    if torch.distributed.is_initialized():
        return None
    os.environ.update({"MASTER_ADDR": world.master_addr, "MASTER_PORT": str(world.master_port),
                       "RANK": str(world.rank), "WORLD_SIZE": str(world.world_size),
                       "LOCAL_RANK": str(world.local_rank)})
    cpu = on_cpu()
    if cpu:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    backend = "gloo" if cpu else "nccl"
    # Our own store: authenticated and bound to the master address only (torch's env:// store listens
    # on every interface, without auth): see `stgrl.learner.rendezvous`. DeepSpeed then finds
    # torch.distributed initialised and uses it.
    store, server = rendezvous_store(world.master_addr, world.master_port, world.rank, world.world_size,
                                     world.store_keys)
    torch.distributed.init_process_group(backend, store=store, rank=world.rank, world_size=world.world_size)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                               rank=world.rank, world_size=world.world_size)
    return store, server


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch. Every rank uses the same seed: identical dropout masks are fine
    because ranks see different data, and resume restores each rank's own state anyway."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_model(model_path: str | Path, dtype: torch.dtype = torch.float32):
    """An HF checkpoint as a trainable module: vision-language models through
    ``AutoModelForImageTextToText``, text-only ones through ``AutoModelForCausalLM``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_path)
    auto = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    return auto.from_pretrained(model_path, dtype=dtype)


def enable_gradient_checkpointing(model) -> None:
    """Recompute decoder-layer activations in backward (non-reentrant: works with frozen inputs and
    DeepSpeed's hooks). Active in training mode only, hence :func:`train_without_dropout`."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def train_without_dropout(model) -> None:
    """Training mode (which gradient checkpointing needs) with every dropout layer in eval mode, so a
    forward is the same function as in eval mode and a ratio measures only how the weights moved.

    Attention dropout is a rate read in training mode, not a layer: a model with a nonzero one is
    refused (Qwen2.5-VL's is 0)."""
    for module in model.modules():
        rate = getattr(module, "attention_dropout", 0.0)
        if isinstance(rate, float) and rate > 0:
            raise ValueError(f"gradient checkpointing runs the RL forward in training mode, where this model's "
                             f"attention dropout ({rate}) would act: use a model with attention_dropout 0 or "
                             "learner.gradient_checkpointing=false")
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()


def load_processor(model_path: str | Path):
    """The checkpoint's processor (VL) or tokenizer (text-only), or None when it has neither."""
    from transformers import AutoProcessor, AutoTokenizer

    if not (Path(model_path) / "tokenizer_config.json").exists():
        return None
    for auto in (AutoProcessor, AutoTokenizer):
        try:
            return auto.from_pretrained(model_path)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def pad_token_id(model, processor) -> int:
    """Pad id for right-padding re-forward batches (masked out, so any valid id works)."""
    tok = getattr(processor, "tokenizer", processor)
    for candidate in (getattr(tok, "pad_token_id", None), getattr(model.config, "pad_token_id", None),
                      getattr(getattr(model.config, "text_config", None), "pad_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


def _groups(state: Mapping[str, Tensor], group_bytes: int) -> list[list[tuple[str, Tensor]]]:
    """Consecutive state-dict entries in groups of about ``group_bytes`` (full, gathered sizes); a
    tensor larger than that is a group of its own. Deterministic, so every rank gathers the same."""
    groups: list[list[tuple[str, Tensor]]] = [[]]
    size = 0
    for name, t in state.items():
        nbytes = int(getattr(t, "ds_numel", t.numel())) * t.element_size()
        if groups[-1] and size + nbytes > group_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, t))
        size += nbytes
    return [g for g in groups if g]


class LearnerEngine:
    """A DeepSpeed engine around an HF model plus what a learner rank needs around it.

    ``model_path``: HF checkpoint directory. Loads the full model on every rank, then lets DeepSpeed
    partition it (ZeRO-3 without ``zero.Init``: simple and identical to the HF init, but each rank
    briefly holds a full copy — fine up to a few B parameters per host).
    With ``cfg.kl_beta > 0`` a frozen reference copy of the initial weights is kept on every rank.
    """

    def __init__(self, model_path: str | Path, cfg: LearnerConfig, world: WorldInfo, seed: int = 0):
        import deepspeed

        self.cfg = cfg
        self.world = world
        self.model_path = str(model_path)
        self._rendezvous = init_distributed(world)  # store + server live as long as this engine
        seed_everything(seed)
        bf16 = cfg.precision == "bf16"
        # bf16 straight from disk: a 7B model is 15 GB per rank instead of an fp32 30 GB (DeepSpeed
        # would cast to bf16 anyway).
        model = load_model(model_path, torch.bfloat16 if bf16 else torch.float32)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.processor = load_processor(model_path)
        self.pad_id = pad_token_id(model, self.processor)
        device = self._device()
        self.ref_model = None
        if cfg.kl_beta > 0:
            self.ref_model = load_model(model_path, torch.bfloat16 if bf16 else torch.float32).to(device).eval()
            self.ref_model.requires_grad_(False)
        ds_config = build_ds_config(cfg, world.world_size)

        def make_scheduler(optimizer):
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: warmup_cosine(s, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio))

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=ds_config, lr_scheduler=make_scheduler)
        n = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in self.engine.module.parameters())
        logger.info("rank %d/%d: DeepSpeed ZeRO-%d %s engine, %.2fM parameters", world.rank, world.world_size,
                    cfg.zero_stage, cfg.precision, n / 1e6)

    @staticmethod
    def _device() -> torch.device:
        from deepspeed.accelerator import get_accelerator

        return torch.device(get_accelerator().current_device_name())

    @property
    def module(self):
        """The wrapped HF model (forward it directly; DeepSpeed's hooks are on it)."""
        return self.engine.module

    @property
    def global_steps(self) -> int:
        """Optimizer steps taken (restored by :meth:`load_checkpoint`)."""
        return int(self.engine.global_steps)

    def accumulate(self, loss: Tensor, last: bool) -> float:
        """Backward of one micro-batch whose gradient adds to the previous ones; DeepSpeed reduces
        and the optimizer may step only after the ``last`` one (:meth:`optimizer_step`). Returns s."""
        t0 = time.perf_counter()
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss)
        clear = getattr(self.engine.optimizer, "clear_backward_seen_flag", None)
        if not last and clear is not None:
            # What DeepSpeed's own forward does first; we forward the HF module directly. Without it
            # ZeRO-3 would treat the next micro-batch as this one and overwrite its gradients.
            clear()
        return time.perf_counter() - t0

    def optimizer_step(self) -> dict[str, float]:
        """The clipped optimizer step + scheduler step after the last :meth:`accumulate`."""
        t0 = time.perf_counter()
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return {"time_optimizer_s": time.perf_counter() - t0,
                "grad_norm": float(norm) if norm is not None else float("nan"),
                "lr": float(self.scheduler.get_last_lr()[0])}

    def backward_step(self, loss: Tensor) -> dict[str, float]:
        """Backward + clipped optimizer step + scheduler step; returns timings, grad norm and lr."""
        t0 = time.perf_counter()
        self.engine.backward(loss)
        t1 = time.perf_counter()
        self.engine.step()
        t2 = time.perf_counter()
        norm = self.engine.get_global_grad_norm()
        return {"time_backward_s": t1 - t0, "time_optimizer_s": t2 - t1,
                "grad_norm": float(norm) if norm is not None else float("nan"),
                "lr": float(self.scheduler.get_last_lr()[0])}

    # ---- weights -------------------------------------------------------------------------------

    def full_state_dict(self) -> dict[str, Tensor]:
        """The full model state on CPU (cloned) on rank 0, ``{}`` on other ranks.

        Under ZeRO-3 parameters are gathered (a collective: every rank must call). Under ZeRO-2 every
        rank holds the full weights already, so only rank 0 copies them. Dtype is the training dtype
        of the module (bf16 when ``precision == "bf16"``).
        """
        module = self.engine.module
        if self.cfg.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return self._copy_state(module) if self.world.rank == 0 else {}
        return self._copy_state(module) if self.world.rank == 0 else {}

    def weight_specs(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        """(name, dtype, full shape) of every state-dict entry, in state-dict order, without gathering
        (ZeRO-3 partitions keep the full shape in ``ds_shape``): enough to plan a weight snapshot."""
        state = self.engine.module.state_dict(keep_vars=True)
        return [(k, v.dtype, tuple(getattr(v, "ds_shape", v.shape))) for k, v in state.items()]

    def fill_weights(self, views: Mapping[str, Tensor] | None, group_bytes: int) -> None:
        """Copy the current weights into ``views`` (rank 0; name -> destination tensor, e.g. views of
        the weight publisher's snapshot); other ranks pass None.

        Under ZeRO-3 this is a collective: parameters are gathered a group of about ``group_bytes``
        at a time (`deepspeed.zero.GatheredParameters`), copied, and re-partitioned before the next
        group, so no rank ever holds more than one group beyond its partition, and rank 0's host
        holds the snapshot only. Under ZeRO-0/1/2 every rank has the full weights; rank 0 copies.
        """
        state = self.engine.module.state_dict(keep_vars=True)
        if self.cfg.zero_stage != 3:
            if views is not None:
                for name, t in state.items():
                    views[name].copy_(t.detach())
            return
        import deepspeed

        for group in _groups(state, group_bytes):
            params = list({id(t): t for _, t in group if hasattr(t, "ds_id")}.values())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                if views is not None:
                    for name, t in group:
                        views[name].copy_(t.detach())

    @staticmethod
    def _copy_state(module) -> dict[str, Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    def export_hf(self, out_dir: str | Path) -> None:
        """``save_pretrained`` of the current weights (+ processor) on rank 0; collective under ZeRO-3."""
        state = self.full_state_dict()
        if self.world.rank != 0:
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.engine.module.save_pretrained(out, state_dict=state)
        if self.processor is not None:
            self.processor.save_pretrained(out)
        logger.info("exported HF checkpoint to %s", out)

    # ---- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self, root: str | Path, run_state: dict[str, Any], export: bool = True) -> str:
        """DeepSpeed state + this rank's RNG + run state (+ HF export), then move ``latest``.

        Returns the tag. Collective: every rank calls with the same ``root`` (a shared filesystem for
        multi-node runs).
        """
        root = Path(root)
        tag = ckpt.checkpoint_tag(self.global_steps)
        tag_dir = root / tag
        tag_dir.mkdir(parents=True, exist_ok=True)
        ckpt.save_rng(tag_dir, self.world.rank)  # before any collective can consume randomness
        self.engine.save_checkpoint(str(root), tag=tag, save_latest=False)
        if self.world.rank == 0:
            ckpt.write_run_state(tag_dir, dict(run_state) | {"global_steps": self.global_steps})
        if export:
            self.export_hf(tag_dir / "hf")
        torch.distributed.barrier()
        if self.world.rank == 0:
            ckpt.mark_latest(root, tag)
        torch.distributed.barrier()
        return tag

    def load_checkpoint(self, root: str | Path) -> dict[str, Any]:
        """Restore the latest complete checkpoint under ``root``; returns its run state.

        Raises ``FileNotFoundError`` when ``root`` holds no complete checkpoint.
        """
        root = Path(root)
        tag = ckpt.latest_tag(root)
        if tag is None:
            raise FileNotFoundError(f"no complete checkpoint under {root} (missing '{ckpt.LATEST}')")
        path, _ = self.engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed could not load checkpoint {root / tag}")
        run_state = ckpt.read_run_state(root / tag)
        ckpt.load_rng(root / tag, self.world.rank)
        logger.info("rank %d resumed from %s (global step %d)", self.world.rank, root / tag, self.global_steps)
        return run_state
