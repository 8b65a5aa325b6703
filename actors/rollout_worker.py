"""RolloutWorker: the Ray actor that turns prompts into trajectory groups (docs/design.md §1, 6, 7).

A thin shell around three pieces that live elsewhere: the data pipeline (decode once + processor,
``stgrl.rollout.video.prepare_prompt``), a generation engine (``stgrl.rollout.engine``) and the
transport channels (``WeightSubscriber`` in; ``TrajectorySender`` out, to each learner rank's inbox
with the tensors and to the driver without). The orchestrator drives it with three calls:
``sync_weights(timeout) -> version``, ``generate(prompt_records, step, min_version, destinations) ->
n_groups`` and ``version()``. ``RolloutWorker`` is the Ray actor class (``RolloutWorker.options(
**rollout_worker_options(cfg)).remote(spec)``); ``RolloutWorkerImpl`` the same object without Ray.

Version guarantee: weights change only inside ``sync_weights``, which runs on the actor's single
thread, never during ``generate``; every group is stamped with the engine's version read right before
it was sampled, so a trajectory always carries the version it was generated with.

Trajectory groups carry the exact model tensors of the prompt (``input_ids``, ``attention_mask``,
``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids``) as tensor frames, straight to the learner
rank that trains them, so the learner re-forwards the very pixels the policy saw. ``group_id =
f"{step}/{prompt_id}"`` and the sampling seed is derived from (worker seed, step, prompt id), so a
regenerated group de-duplicates and resamples the same tokens under the same weights.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any

import msgspec
import ray
import torch

from stgrl.reward_service.types import KeyFrame, ScoringSample
from stgrl.rollout.config import DataConfig, RolloutConfig
from stgrl.rollout.data.records import Record
from stgrl.rollout.engine import EnginePrompt, RolloutEngine, SamplingSpec, build_engine
from stgrl.rollout.video import MediaError, PreparedPrompt, VideoCache, prepare_prompt, record_media
from stgrl.rollout.video import _size_kwargs as image_size_kwargs
from stgrl.transport.config import TransportConfig
from stgrl.transport.security import CurveKeys
from stgrl.transport.wire import Completion, TrajectoryGroup

logger = logging.getLogger(__name__)


class RolloutWorkerSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything one worker needs, passed once at construction (one argument, typed)."""

    worker_id: str
    model_path: str
    dataset_dir: str
    weights_address: str | None = None
    """The learner's `WeightPublisher`; None: keep the checkpoint's weights (version -1)."""
    trajectories_address: str | None = None
    """The consumer's `TrajectoryReceiver`; None: `generate` is unavailable, use `generate_groups`."""
    learner_addresses: list[str] = []
    """The learner ranks' trajectory inboxes, by rank. Set: each group goes whole (tensors) to the rank
    `generate`'s ``destinations`` names, and a copy without tensors to ``trajectories_address``."""
    rollout: RolloutConfig = msgspec.field(default_factory=RolloutConfig)
    data: DataConfig = msgspec.field(default_factory=DataConfig)
    transport: TransportConfig = msgspec.field(default_factory=TransportConfig)
    curve_keys: CurveKeys | None = None
    server_public: bytes | None = None
    dtype: str = "float32"
    seed: int = 0
    torch_threads: int = 1
    """Two shared cores: one thread per actor (docs/design.md §8 measured 6-35x slow-downs otherwise)."""


def ground_truth(record: Record, frame_size: tuple[int, int]) -> ScoringSample:
    """What the reward needs from a record; ``completion`` stays empty (filled per completion by the
    reward client), ``frame_size`` is the resized ``[W, H]`` that model boxes refer to."""
    return ScoringSample(
        id=record.id, task=record.task, completion="", answer=record.answer, options=list(record.options) or None,
        key_frames=[KeyFrame(idx=k.idx, time=k.time) for k in record.key_frames],
        key_items={f: {name: [list(b) for b in boxes] for name, boxes in items.items()}
                   for f, items in record.key_items.items()},
        span=list(record.span) if record.span is not None else None, frame_size=[float(x) for x in frame_size],
    )


def make_trajectory_group(prepared: PreparedPrompt, completions: list[Completion], *, step: int, version: int,
                          timings: dict[str, float]) -> tuple[TrajectoryGroup, dict[str, torch.Tensor]]:
    """The wire header of one group plus its tensor frames (the prompt's exact model inputs)."""
    tensors = {k: v.contiguous() for k, v in prepared.model_inputs.items() if isinstance(v, torch.Tensor)}
    group = TrajectoryGroup(
        group_id=f"{step}/{prepared.record.id}", prompt_id=prepared.record.id, step=step, policy_version=version,
        prompt_len=int(tensors["input_ids"].shape[1]), completions=completions,
        sample=ground_truth(prepared.record, prepared.frame_size), frame_size=list(prepared.frame_size),
        timings=timings,
    )
    return group, tensors


def group_seed(seed: int, step: int, prompt_id: str) -> int:
    """Deterministic per (worker seed, step, prompt): a regenerated group resamples the same tokens."""
    return zlib.crc32(f"{seed}/{step}/{prompt_id}".encode())


class RolloutWorkerImpl:
    """The actor's body, usable without Ray. One thread: Ray actors run their methods one at a time
    unless made concurrent, and the engine and sockets rely on that."""

    def __init__(self, spec: RolloutWorkerSpec) -> None:
        torch.set_num_threads(spec.torch_threads)
        from transformers import AutoProcessor

        self.spec = spec
        self.engine: RolloutEngine = build_engine(spec.rollout.engine, spec.model_path, dtype=spec.dtype,
                                                  gpu_memory_utilization=spec.rollout.gpu_memory_utilization,
                                                  seed=spec.seed, max_images_per_prompt=spec.data.max_frames,
                                                  rollout=spec.rollout)
        self.processor = AutoProcessor.from_pretrained(spec.model_path)
        self.cache = VideoCache(capacity=64)
        self._subscriber = None
        self._sender = None
        if spec.weights_address is not None:
            from stgrl.transport.weight_channel import WeightSubscriber

            self._subscriber = WeightSubscriber(spec.weights_address, spec.transport, spec.curve_keys,
                                                server_public=spec.server_public, subscriber_id=spec.worker_id)
        if spec.trajectories_address is not None:
            from stgrl.transport.trajectory_channel import TrajectorySender

            self._sender = TrajectorySender(spec.trajectories_address, spec.transport, spec.curve_keys,
                                            server_public=spec.server_public)
        self._rank_senders: dict[int, Any] = {}
        self._stats = {"groups": 0, "samples": 0, "tokens": 0, "generate_s": 0.0, "skipped": 0}
        logger.info("rollout worker %s ready (engine %s)", spec.worker_id, spec.rollout.engine)

    def version(self) -> int:
        """The policy version the engine generates with (-1: the initial checkpoint)."""
        return self.engine.version

    def sync_weights(self, timeout: float | None = None) -> int:
        """Pull the latest published version if newer, load it in place, return the version now run.

        Raises `TransportTimeout` (publisher silent) or `WeightVerificationError` (version refused;
        the engine keeps its previous version).
        """
        if self._subscriber is None:
            return self.engine.version
        got = self._subscriber.poll_latest(timeout)
        if got is not None:
            version, state = got
            self.engine.load_weights(state, version)
        return self.engine.version

    def generate_groups(self, prompt_records: list[Record | dict[str, Any]],
                        step: int) -> list[tuple[TrajectoryGroup, dict[str, torch.Tensor]]]:
        """Prepare every record, then sample all their groups in ONE engine call (vLLM batches a step's
        prompts); records whose media fail are logged and skipped. A group's ``generate_s`` is its
        share of that call (the call's time over its groups)."""
        cfg = self.spec.rollout
        prepared_all: list[tuple[PreparedPrompt, float]] = []
        for raw in prompt_records:
            record = raw if isinstance(raw, Record) else msgspec.convert(raw, Record)
            t0 = time.perf_counter()
            try:
                prepared = prepare_prompt(record, self.processor, self.spec.data, self.spec.dataset_dir, self.cache)
            except MediaError as err:
                logger.warning("worker %s skips record %s: %s", self.spec.worker_id, record.id, err)
                self._stats["skipped"] += 1
                continue
            prepared_all.append((prepared, time.perf_counter() - t0))
        if not prepared_all:
            return []
        samplings = [SamplingSpec(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                  seed=group_seed(self.spec.seed, step, p.record.id)) for p, _ in prepared_all]
        version = self.engine.version
        t1 = time.perf_counter()
        groups = self.engine.generate_groups([self._engine_prompt(p) for p, _ in prepared_all], cfg.group_size,
                                             samplings)
        share = (time.perf_counter() - t1) / len(prepared_all)
        out = []
        for (prepared, prepare_s), completions in zip(prepared_all, groups):
            n_tokens = sum(len(c.token_ids) for c in completions)
            self._stats["groups"] += 1
            self._stats["samples"] += len(completions)
            self._stats["tokens"] += n_tokens
            self._stats["generate_s"] += share
            timings = {"prepare_s": prepare_s, "generate_s": share, "tokens_per_s": n_tokens / max(share, 1e-9),
                       "created_unix_s": time.time()}
            out.append(make_trajectory_group(prepared, completions, step=step, version=version, timings=timings))
        return out

    def wait_for_version(self, min_version: int, timeout: float | None = None) -> int:
        """Sync until the engine runs ``min_version`` or newer; `TimeoutError` naming the publisher."""
        limit = self.spec.transport.timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        while self.sync_weights(max(0.1, deadline - time.monotonic())) < min_version:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"worker {self.spec.worker_id}: no weight version >= {min_version} from "
                                   f"{self.spec.weights_address} within {limit:.1f}s (running {self.engine.version})")
            time.sleep(0.05)
        return self.engine.version

    def generate(self, prompt_records: list[Record | dict[str, Any]], step: int, min_version: int | None = None,
                 flush_timeout: float | None = None, destinations: dict[str, int] | None = None) -> int:
        """Generate a group per record and deliver them on the trajectory channel; returns how many.

        ``min_version``: first pull newer weights and wait until the engine runs at least this
        version (the staleness bound of the async schedule). With ``learner_addresses``, group
        ``gid`` goes whole to learner rank ``destinations[gid]`` (none: scored, not trained) and,
        once every rank acknowledged its groups, a copy without tensors goes to the driver: a group
        the driver holds is always at its rank. Returns after every group is acknowledged
        (at-least-once delivery; receivers de-duplicate by ``group_id``), so a worker that returns
        has nothing in flight.
        """
        if self._sender is None:
            raise RuntimeError(f"worker {self.spec.worker_id} has no trajectories_address; use generate_groups")
        if min_version is not None:
            self.wait_for_version(min_version)
        groups = self.generate_groups(prompt_records, step)
        if self.spec.learner_addresses:
            used = set()
            for group, tensors in groups:
                rank = (destinations or {}).get(group.group_id)
                if rank is not None:
                    self._rank_sender(rank).send(group, tensors)
                    used.add(rank)
            for rank in sorted(used):
                self._rank_senders[rank].flush(flush_timeout)
            for group, _ in groups:
                self._sender.send(group, None)
        else:
            for group, tensors in groups:
                self._sender.send(group, tensors)
        self._sender.flush(flush_timeout)
        return len(groups)

    def _rank_sender(self, rank: int) -> Any:
        """The sender to learner rank ``rank``'s inbox (one connection per rank, made on first use)."""
        if rank not in self._rank_senders:
            from stgrl.transport.trajectory_channel import TrajectorySender

            if not 0 <= rank < len(self.spec.learner_addresses):
                raise ValueError(f"worker {self.spec.worker_id}: destination rank {rank} is not one of the "
                                 f"{len(self.spec.learner_addresses)} learner inboxes")
            self._rank_senders[rank] = TrajectorySender(self.spec.learner_addresses[rank], self.spec.transport,
                                                        self.spec.curve_keys, server_public=self.spec.server_public)
        return self._rank_senders[rank]

    def weights_checksum(self) -> dict[str, int]:
        """Per-tensor xxh3 of the weights the engine runs (HF engine; tests compare it with the
        learner's `weights_checksum`). Raises on an engine that does not expose its model."""
        from stgrl.transport.weight_channel import state_checksums

        model = getattr(self.engine, "model", None)
        if model is None:
            raise RuntimeError(f"worker {self.spec.worker_id}: engine {self.spec.rollout.engine} does not expose "
                               "its weights")
        return state_checksums(model.state_dict())

    def stats(self) -> dict[str, float]:
        """Counters since start plus ``tokens_per_s``/``samples_per_s`` of generation time (docs/design.md §11)."""
        s = dict(self._stats)
        busy = max(s["generate_s"], 1e-9)
        return {**s, "tokens_per_s": s["tokens"] / busy, "samples_per_s": s["samples"] / busy,
                "version": float(self.engine.version)}

    def close(self) -> None:
        """Close both channels and stop the engine (vLLM's engine core holds a process and memory)."""
        for channel in (self._subscriber, self._sender, *self._rank_senders.values()):
            if channel is not None:
                channel.close()
        close_engine = getattr(self.engine, "close", None)
        if close_engine is not None:
            close_engine()

    def _engine_prompt(self, prepared: PreparedPrompt) -> EnginePrompt:
        """vLLM runs its own processor on the frames: hand it the cached decode (no second decode)."""
        if self.spec.rollout.engine != "vllm":
            return EnginePrompt(prepared.model_inputs)
        media = record_media(prepared.record, self.spec.dataset_dir, self.spec.data, self.cache)
        return EnginePrompt(prepared.model_inputs, images=list(media.frames),
                            processor_kwargs=image_size_kwargs(self.spec.data))


def rollout_worker_options(cfg: RolloutConfig) -> dict[str, Any]:
    """Ray placement of one worker: the `rollout` custom resource, and GPUs when configured."""
    opts: dict[str, Any] = {"resources": {"rollout": 1}, "num_cpus": 1}
    if cfg.num_gpus_per_worker > 0:
        opts["num_gpus"] = cfg.num_gpus_per_worker
    return opts


RolloutWorker = ray.remote(RolloutWorkerImpl)
"""The Ray actor class: ``RolloutWorker.options(**rollout_worker_options(cfg)).remote(spec)``."""


def rollout_worker_actor(spec: RolloutWorkerSpec, name: str | None = None, **options: Any):
    """Start one RolloutWorker actor placed by `rollout_worker_options` (+ ``options``, e.g.
    ``max_restarts``); returns its handle."""
    opts = rollout_worker_options(spec.rollout)
    if name is not None:
        opts["name"] = name
    return RolloutWorker.options(**{**opts, **options}).remote(spec)
