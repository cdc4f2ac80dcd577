"""The training loop: one `Trainer` owns model, data, method (optimizer), schedule and checkpoints.

    trainer.train_step(micro_batches)   one optimizer update: forward/backward per micro-batch (DDP
                                        syncs on the last), then the method's step
    trainer.fit()                       train_step until train.steps, logging, evaluating and
                                        checkpointing when should_log / should_eval / should_save say

Independent of Ray and MLflow: everything it has to say goes through `Callback`s.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ranktune.trainables.callbacks import Callback, Metrics
from ranktune.trainables.checkpoint import (
    check_resume_compatible,
    latest_checkpoint,
    load_latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ranktune.trainables.config import ConfigError, TrainConfig
from ranktune.trainables.data import (
    CachedBlocks,
    ShuffledBatches,
    TokenBlocks,
    eval_set_id,
    prepare_tokens,
    validation_indices,
)
from ranktune.trainables.model import build_model, count_parameters
from ranktune.trainables.optim import build_method, build_schedule
from ranktune.trainables.runtime import (
    distributed_rank_and_size,
    gradient_bytes,
    mean_over_ranks,
    parameter_bytes,
    peak_memory_bytes,
    resolve_device,
)
from ranktune.trainables.stream import StreamedBlocks, open_stream, streaming_enabled

MicroBatch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), each (B, T)

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    pass


class Trainer:
    def __init__(self, cfg: TrainConfig, callbacks: Sequence[Callback] = (), progress: bool = True) -> None:
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.device = resolve_device(cfg.train.device)
        self.output_dir = Path(cfg.output.dir)

        # Data parallel (DDP, e.g. under Ray Train): every rank draws the same global micro-batch of
        # micro_batch_size * world_size blocks and trains on its own slice of it.
        self.rank, self.world_size = distributed_rank_and_size()
        per_step = cfg.train.micro_batch_size * self.world_size
        if cfg.train.batch_size % per_step:
            problem = (
                f"train.batch_size: {cfg.train.batch_size} -> a multiple of train.micro_batch_size x workers "
                f"({cfg.train.micro_batch_size} x {self.world_size})"
            )
            raise ConfigError([problem])
        self.grad_accum_steps = cfg.train.batch_size // per_step
        if streaming_enabled(cfg.data):
            # Tokenized by a background thread as training reads it (stream.py): step 1 comes within minutes.
            streamed = open_stream(cfg.data, per_step)
            val_stream, vocab_size, corpus_key = streamed.val, streamed.vocab_size, streamed.corpus_key
            self.train_data: CachedBlocks | StreamedBlocks = streamed.train
        else:
            tokens = prepare_tokens(cfg.data, progress=progress)
            val_stream, vocab_size, corpus_key = tokens.val, tokens.vocab_size, tokens.corpus_key
            self.train_blocks = TokenBlocks(tokens.train, cfg.data.seq_len)
            self.batches = ShuffledBatches(len(self.train_blocks), per_step, cfg.train.seed)
            self.train_data = CachedBlocks(self.train_blocks, self.batches)
        self.val_blocks = TokenBlocks(val_stream, cfg.data.seq_len)
        self.val_indices = validation_indices(len(self.val_blocks), cfg.train.eval_blocks)
        self.eval_set = eval_set_id(corpus_key, cfg.data.seq_len, self.val_indices)

        torch.manual_seed(cfg.train.seed)
        self.llama_cfg = cfg.model.llama_config(vocab_size=vocab_size)
        dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
        self.model = build_model(self.llama_cfg, self.device, cfg.model.activation_checkpointing, dtype)
        # The method may wrap layers of the model in place (ReLoRA); always go through self.model.
        self.method = build_method(self.model, cfg)
        self.schedule = build_schedule(cfg)
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model
        self._ddp: torch.nn.Module | None = None
        self._ddp_params: tuple[int, ...] = ()

        self.step = 0  # optimizer updates done
        self.tokens_seen = 0
        self.elapsed = 0.0  # training wall time, carried across resumes
        # Set (e.g. by a SIGINT handler) to stop cleanly after the current step with a checkpoint.
        self.stop_requested = False

    # ------------------------------------------------------------------ pieces

    def autocast(self):
        if self.cfg.train.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def training_forward(self) -> torch.nn.Module:
        """The module to train through: the model, or its DDP wrapper when distributed.

        DDP is rebuilt when the set of trainable parameters changes (ReLoRA wraps layers after its
        warm start), since DDP registers its gradient buckets once, at construction."""
        if self.world_size == 1:
            return self.forward
        if getattr(self.method, "syncs_gradients", False):
            # The method's gradient hooks average across ranks themselves (per-layer GaLore); DDP's
            # buckets would reduce gradients those hooks already freed. Start from rank 0's weights.
            if self._ddp_params != ("broadcast",):
                import torch.distributed as dist

                for tensor in self.model.state_dict().values():
                    dist.broadcast(tensor, src=0)
                self._ddp_params = ("broadcast",)
            return self.forward
        params = tuple(id(p) for p in self.model.parameters() if p.requires_grad)
        if self._ddp is None or params != self._ddp_params:
            self._ddp = self.wrap_ddp()
            self._ddp_params = params
        return self._ddp

    def wrap_ddp(self) -> DistributedDataParallel:
        """The one place the model is wrapped for data parallelism."""
        # Ray Train gives each worker its own GPU as cuda:0 (CUDA_VISIBLE_DEVICES).
        device_ids = None
        if self.device.type == "cuda":
            device_ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        return DistributedDataParallel(self.model, device_ids=device_ids)

    def local_slice(self, indices):
        mb = self.cfg.train.micro_batch_size
        return indices[self.rank * mb : (self.rank + 1) * mb]

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        return x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)

    @torch.no_grad()
    def evaluate(self) -> Metrics:
        """Mean loss over the fixed held-out blocks (never seen by a training step)."""
        self.model.eval()
        total, count = 0.0, 0
        mb = self.cfg.train.micro_batch_size
        for start in range(0, len(self.val_indices), mb):
            idx = self.val_indices[start : start + mb]
            x, y = self._to_device(*self.val_blocks.batch(idx))
            with self.autocast():
                _, loss = self.forward(x, y)
            total += loss.item() * len(idx)
            count += len(idx)
        self.model.train()
        loss = total / count
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "elapsed": self.elapsed,
            "method": self.method.state_dict(),
            "model": self.model.state_dict(),
            "data": self.train_data.state_dict(),
            "rng": rng_state(),
            "config": self.cfg.model_dump(mode="json"),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        problems = check_resume_compatible(self.cfg.model_dump(mode="json"), state["config"], "being resumed")
        if problems:
            raise ConfigError(problems)
        # The method first: it may restore structure (e.g. ReLoRA's wrapped layers) the weights need.
        self.method.load_state_dict(state["method"])
        self.model.load_state_dict(state["model"])
        self.train_data.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        self.step, self.tokens_seen, self.elapsed = state["step"], state["tokens_seen"], state["elapsed"]

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0 only: every rank holds the same state under DDP)."""
        if self.rank != 0:
            return None
        # A step can leave NaN/inf weights though its own loss (computed before the update) was finite;
        # saved, they would replace the last good checkpoint that `--resume --set optim.lr=...` needs.
        bad = next((name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            kept = latest_checkpoint(self.output_dir)
            raise TrainingDiverged(
                f"diverged at step {self.step}: weight {bad} is not finite; not saved"
                + (f", the last good checkpoint ({kept.name}) is kept" if kept else "")
            )
        return save_checkpoint(self.output_dir, self.step, self.state_dict(), self.cfg.output.keep_checkpoints)

    def resume_from_latest(self) -> bool:
        found = load_latest_checkpoint(self.output_dir)
        if found is None:
            return False
        path, state = found
        self.load_state_dict(state)
        log.info("resumed from %s (step %d)", path, self.step)
        return True

    def memory_metrics(self) -> Metrics:
        by_category = self.method.state_bytes()
        metrics = {f"optimizer_state_bytes/{k}": v for k, v in by_category.items()}
        metrics["optimizer_state_bytes"] = sum(by_category.values())
        metrics["parameter_bytes"] = parameter_bytes(self.model)
        metrics["peak_memory_bytes"] = peak_memory_bytes(self.device)
        return metrics

    def _emit(self, hook: str, metrics: Metrics) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(metrics)

    # ------------------------------------------------------------------ loop

    def next_micro_batches(self) -> Iterator[MicroBatch]:
        """This rank's micro-batches of the next optimizer step, drawn as they are consumed."""
        for _ in range(self.grad_accum_steps):
            rows = torch.from_numpy(self.local_slice(self.train_data.next_rows()))
            yield self._to_device(rows[:, :-1], rows[:, 1:])

    def train_step(self, micro_batches: Iterable[MicroBatch], measure_gradients: bool = False) -> Metrics:
        """One optimizer update over `micro_batches` (grad_accum_steps of them; the loss is their mean);
        returns the step's metrics. `measure_gradients` adds `gradient_bytes`, counted before the method
        frees the gradients."""
        lr = self.schedule(self.step)
        self.method.begin_step(lr)
        forward = self.training_forward()
        accum = self.grad_accum_steps
        loss_sum, micro = 0.0, -1
        for micro, (x, y) in enumerate(micro_batches):
            is_last = micro == accum - 1
            self.method.begin_micro_batch(is_last=is_last)
            # Under DDP, gradients are all-reduced once per step: on the last micro-batch only.
            sync = forward.no_sync() if not is_last and forward is self._ddp else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    _, loss = forward(x, y)
                (loss / accum).backward()
            loss_sum += loss.item()
        if micro + 1 != accum:
            raise ValueError(f"train_step got {micro + 1} micro-batches, expected grad_accum_steps = {accum}")
        if self.world_size > 1:  # report the loss of the whole global batch, the same on every rank
            loss_sum = mean_over_ranks(loss_sum, self.device)
        grads = {"gradient_bytes": gradient_bytes(self.model)} if measure_gradients else {}
        stats = self.method.step()
        self.step += 1
        stats.update(self.method.end_step(self.step))
        train_loss = loss_sum / accum
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"diverged at step {self.step}: train loss is {train_loss}")
        self.tokens_seen += self.cfg.tokens_per_step
        return {"step": self.step, "tokens": self.tokens_seen, "train_loss": train_loss, "lr": lr, **stats, **grads}

    # Decisions after `step` updates (the last step always logs, evaluates and checkpoints).

    def should_log(self, step: int) -> bool:
        return step % self.cfg.train.log_every == 0 or step == self.cfg.train.steps

    def should_eval(self, step: int) -> bool:
        return step % self.cfg.train.eval_every == 0 or step == self.cfg.train.steps

    def should_save(self, step: int) -> bool:
        every = self.cfg.output.checkpoint_every
        return step == self.cfg.train.steps or bool(every and step % every == 0)

    def fit(self) -> Metrics:
        """Train until train.steps (or a stop request); returns the run's summary."""
        try:
            return self._fit()
        finally:
            self.train_data.close()  # a streamed run's tokenizer thread

    def _fit(self) -> Metrics:
        self._emit("on_train_start", self.start_info())
        first_eval = None
        if self.step == 0:
            first_eval = self.evaluate()
            self._emit("on_eval", {"step": 0, "tokens": 0, **first_eval})

        self.model.train()
        interval_start, interval_tokens = time.perf_counter(), 0
        last_eval: Metrics = {}
        while self.step < self.cfg.train.steps:
            step_start = time.perf_counter()
            log_this_step = self.should_log(self.step + 1)  # known before the step: gradients are counted in it
            metrics = self.train_step(self.next_micro_batches(), measure_gradients=log_this_step)
            interval_tokens += self.cfg.tokens_per_step
            self.elapsed += time.perf_counter() - step_start
            gradients = metrics.pop("gradient_bytes", None)
            self._emit("on_step", metrics)
            if log_this_step:
                now = time.perf_counter()
                throughput = interval_tokens / max(now - interval_start, 1e-9)
                metrics.update(
                    tokens_per_s=throughput, wall_time=self.elapsed, gradient_bytes=gradients, **self.memory_metrics()
                )
                self._emit("on_log", metrics)
                interval_start, interval_tokens = now, 0
            if self.should_eval(self.step):
                last_eval = {"step": self.step, "tokens": self.tokens_seen, **self.evaluate()}
                self.check_finite_eval(last_eval)  # before the checkpoint and the report
                path = self.save() if self.should_save(self.step) else None
                if path is not None:
                    last_eval["checkpoint"] = str(path)
                self._emit("on_eval", last_eval)
                interval_start = time.perf_counter()  # evaluation time is not training throughput
            elif self.should_save(self.step):
                self.save()
            if self.stop_requested and self.step < self.cfg.train.steps:
                path = self.save()
                log.warning("stopped at step %d on request; checkpoint %s (resume with --resume)", self.step, path)
                break

        if not last_eval:  # resumed at the very end: nothing left to run, report the final state
            last_eval = {"step": self.step, "tokens": self.tokens_seen, **self.evaluate()}
            self.check_finite_eval(last_eval)
        summary = {
            "steps": self.step,
            "tokens": self.tokens_seen,
            "wall_time": self.elapsed,
            "completed": self.step >= self.cfg.train.steps,
            "final_eval_loss": last_eval["eval_loss"],
            "final_eval_ppl": last_eval["eval_ppl"],
            "eval_set": self.eval_set,
            **({"initial_eval_loss": first_eval["eval_loss"]} if first_eval else {}),
            **self.memory_metrics(),
        }
        self._emit("on_train_end", summary)
        return summary

    def check_finite_eval(self, evaluation: Metrics) -> None:
        """A non-finite held-out loss is a divergence, as a non-finite train loss is: the weights no
        longer score anything, so the run must not end `completed` with it nor report it as a result."""
        loss = evaluation["eval_loss"]
        if not math.isfinite(loss):
            raise TrainingDiverged(f"diverged at step {self.step}: eval loss is {loss}")

    def start_info(self) -> Metrics:
        return {
            "start_step": self.step,
            "total_steps": self.cfg.train.steps,
            "parameters": count_parameters(self.model),
            "trainable_parameters": sum(p.numel() for p in self.method.trainable_parameters()),
            "tokens_per_step": self.cfg.tokens_per_step,
            "train_blocks": self.train_data.num_blocks,  # None when streamed (not counted up front)
            "val_blocks": len(self.val_blocks),
            "eval_set": self.eval_set,
            "device": str(self.device),
        }
