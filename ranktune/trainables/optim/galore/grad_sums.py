"""Full-gradient sums over a step's micro-batches, kept in host memory (`full_grad_buffer: host`).

Per-layer APOLLO / APOLLO-Mini / Fira update with the full gradient of the whole batch, and a
per-layer GaLore refresh takes its SVD from it. With gradient accumulation those sums would all sit on
the device between micro-batches (every full gradient at once). Here each parameter's gradient is
moved out in its post-accumulate-grad hook and added to a host sum, and the device copy is freed; on
the last micro-batch the sum comes back for the update (ZeRO-Offload's scheme, for the sums only).

    sums = HostGradientSums()
    sums.add(p, p.grad); p.grad = None            # micro-batches 1 .. k-1, in the hook
    p.grad = sums.take(p, p.grad)                 # the last one: sum_1^k on p's device, in p's dtype

The sums are fp32 (at least): bf16 gradients summed in bf16 over 256 micro-batches keep 8 bits of
mantissa through every add, and the host has the room (4 bytes per value, 26 GiB at 7b, none of it
on the device). The last micro-batch's gradient is added on the device in fp32 and the result cast to
the parameter's dtype once. In fp32 the additions happen in the order `.grad` accumulation does them,
so the sums are the same bits as the device mode's.

On CUDA the device-to-host copy runs on a side stream into one of two pinned staging buffers (the
largest gradient's size), and the host addition of a parameter waits for its copy only when the
staging slot is needed again, i.e. while the next parameters' gradients are being computed. On CPU
(host and device are the same memory) the sum is a separate fp32 buffer and the copy is a plain add:
the same code path, tested on CPU.
"""

from __future__ import annotations

import torch


def sum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class HostGradientSums:
    """Per-parameter fp32 sums in (pinned, on CUDA) host memory; see the module docstring."""

    STAGING_SLOTS = 2

    def __init__(self) -> None:
        self.sums: dict[int, torch.Tensor] = {}  # id(param) -> flat fp32 host buffer, kept across steps
        self.counts: dict[int, int] = {}  # id(param) -> micro-batches summed this step (0: buffer is stale)
        self.stream: torch.cuda.Stream | None = None
        self.staging: list[torch.Tensor] = []
        self.pending: list[tuple[int, torch.cuda.Event, torch.Size] | None] = []
        self.next_slot = 0
        self.bytes_copied_to_host = 0
        self.bytes_copied_to_device = 0

    # ------------------------------------------------------------------ host memory

    def host_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.sums.values(), *self.staging))

    def buffer(self, p: torch.Tensor) -> torch.Tensor:
        key = id(p)
        if key not in self.sums:
            pin = p.device.type == "cuda"
            self.sums[key] = torch.empty(p.numel(), dtype=sum_dtype(p.dtype), pin_memory=pin)
            self.counts[key] = 0
        return self.sums[key]

    def accumulate_host(self, key: int, grad_on_host: torch.Tensor) -> None:
        buf = self.sums[key]
        if self.counts[key] == 0:
            buf.copy_(grad_on_host.reshape(-1))
        else:
            buf.add_(grad_on_host.reshape(-1))
        self.counts[key] += 1

    # ------------------------------------------------------------------ the hooks' calls

    def add(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        """Add `grad` (p's gradient of one micro-batch) to p's host sum; the caller frees it after."""
        self.buffer(p)
        self.bytes_copied_to_host += grad.numel() * grad.element_size()
        if grad.device.type != "cuda":
            self.accumulate_host(id(p), grad.detach())
            return
        self.add_cuda(p, grad)

    def add_cuda(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        if self.stream is None:
            self.stream = torch.cuda.Stream(device=grad.device)
        slot = self.free_slot(grad)
        staging = self.staging[slot][: grad.numel()].view(grad.shape)
        self.stream.wait_stream(torch.cuda.current_stream(grad.device))  # the gradient is complete
        with torch.cuda.stream(self.stream):
            staging.copy_(grad, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        grad.record_stream(self.stream)  # the allocator keeps it until the copy has read it
        self.pending[slot] = (id(p), done, grad.shape)

    def free_slot(self, grad: torch.Tensor) -> int:
        """A staging slot large enough for `grad`, after adding whatever copy it still holds."""
        if not self.staging or self.staging[0].numel() < grad.numel():
            self.finish_pending()
            self.staging = [
                torch.empty(grad.numel(), dtype=grad.dtype, pin_memory=True) for _ in range(self.STAGING_SLOTS)
            ]
            self.pending = [None] * self.STAGING_SLOTS
        slot = self.next_slot
        self.next_slot = (slot + 1) % self.STAGING_SLOTS
        self.finish_slot(slot)
        if self.staging[slot].dtype != grad.dtype:
            self.staging[slot] = torch.empty(self.staging[slot].numel(), dtype=grad.dtype, pin_memory=True)
        return slot

    def finish_slot(self, slot: int) -> None:
        entry = self.pending[slot]
        if entry is None:
            return
        key, done, shape = entry
        done.synchronize()
        self.accumulate_host(key, self.staging[slot][: shape.numel()])
        self.pending[slot] = None

    def finish_pending(self) -> None:
        for slot in range(len(self.pending)):
            self.finish_slot(slot)

    def take(self, p: torch.Tensor, last_grad: torch.Tensor | None) -> torch.Tensor:
        """The whole step's gradient of p on p's device, in p's dtype: the host sum plus `last_grad`
        (the last micro-batch's, still on the device; None when it was added already). The sum is
        emptied for the next step."""
        key = id(p)
        self.finish_pending()
        if self.counts.get(key, 0) == 0:
            if last_grad is None:
                raise RuntimeError("take() of a parameter with nothing summed this step")
            return last_grad
        self.counts[key] = 0
        host = self.sums[key].view(p.shape)
        self.bytes_copied_to_device += host.numel() * host.element_size()
        total = host.to(p.device, non_blocking=True)  # on CPU: the buffer itself, no copy
        if last_grad is not None:
            total = total + last_grad if total.data_ptr() == host.data_ptr() else total.add_(last_grad)
        return total.to(p.dtype)

    def summed(self, p: torch.Tensor) -> bool:
        return self.counts.get(id(p), 0) > 0
