"""Training epochs whose full batches replay one captured CUDA graph of the whole step.

Why: on a GPU, a batch-64 step of the lab's nets is a few hundred small kernels, and launching
them one by one from Python costs more than running them. Measured on an H200
(benchmarks/RESULTS.md, 2026-12-04): the cnn's eager step took 4.5 ms for its ~210 operators
and the vit's 15 ms for ~1,320, each a small kernel at batch 64. A CUDA graph launches the
recorded kernels of a whole step (gather the batch, forward, loss, backward, optimizer step,
running sums) with one call.

Contracts:
- ``GraphedEpochs(...).train_epoch(generator=..., on_batch=...)`` has ``loop.train_one_epoch``'s
  contract: the same seeded batch order (it draws the same permutation from ``generator``), the
  same (mean loss, accuracy), the same ``on_batch`` calls. Full batches read their indices from
  one device buffer and replay the graph; the first full batches of a fit (``WARMUP``) and a
  last, smaller batch run eagerly. Dropout's random numbers come through the graph's own
  generator offsets: a fit with dropout is promised equal in distribution to the eager one,
  not bit for bit; without dropout it computes the same steps.
- The graph is captured once per fit and again when the optimizer's hyperparameters changed
  (a per-epoch schedule); fp16's GradScaler and per-batch schedules are refused earlier, by
  the config (``config._validate_cuda_graphs``). CUDA only.
- The optimizer must be capturable (``loop.build_optimizer`` makes it so when the config asks
  for graphs): its step counts live on the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data import to_input
from .loop import Batch
from .runtime import autocast

# Eager steps before the first capture, on a side stream as PyTorch's CUDA-graph notes do:
# they create the optimizer's state, the cuBLAS/cuDNN handles and autograd's buffers, none of
# which may be allocated inside a capture.
WARMUP = 3


class GraphedEpochs:
    """The training passes of one fit over ``(x, y)``, both already on the CUDA device."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        optimizer: torch.optim.Optimizer,
        precision: str,
    ):
        self.model, self.x, self.y = model, x, y
        self.batch_size, self.optimizer, self.precision = batch_size, optimizer, precision
        self.device = x.device
        # The graph's inputs and outputs live at fixed addresses: the batch's indices in, the
        # running sums and the last loss out.
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), dtype=torch.long, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_loss: torch.Tensor | None = None
        self.captured_with: list | None = None
        self.eager_steps = 0
        self.captures = 0
        # One side stream, on this device, for the warm-up and every capture: torch.cuda.graph's
        # own default stream belongs to whichever device was current when it was first made.
        self._side: torch.cuda.Stream | None = None

    def train_epoch(
        self,
        *,
        generator: torch.Generator,
        on_batch: Callable[[Batch], None] | None = None,
    ) -> tuple[float, float]:
        """One pass in a seeded order; returns (mean loss, accuracy)."""
        self.model.train()
        n, size = len(self.y), self.batch_size
        order = torch.randperm(n, generator=generator).to(self.device)
        self.loss_sum.zero_()
        self.correct.zero_()
        if self.graph is not None and self._hyperparameters() != self.captured_with:
            self.graph = None  # a per-epoch schedule moved the learning rate: capture again
        seen = 0
        # cuda:N current throughout: a capture records only the current device's work.
        on_device = (
            torch.cuda.device(self.device)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with on_device:
            for step, start in enumerate(range(0, n, size), start=1):
                idx = order[start : start + size]
                if len(idx) == size:
                    self.idx.copy_(idx)
                    loss = self._full_batch()
                else:
                    loss = self._eager_step(idx)
                seen += len(idx)
                if on_batch is not None:
                    on_batch(Batch(step, len(idx), loss, self.loss_sum, seen))
        return float(self.loss_sum) / seen, int(self.correct) / seen

    def _full_batch(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            return self.graph_loss
        if self.device.type != "cuda":
            # No graphs off CUDA (the config refuses it there): every step runs eagerly, which
            # is how the tests check this class's batch order and sums without a GPU.
            return self._eager_step(self.idx)
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        if self.eager_steps < WARMUP:
            self._side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._side):
                loss = self._eager_step(self.idx)
            torch.cuda.current_stream(self.device).wait_stream(self._side)
            return loss
        self._capture()
        self.graph.replay()  # a capture records the step without running it
        return self.graph_loss

    def _capture(self) -> None:
        # No gradient may exist when the capture starts: the captured backward then writes
        # each one into memory of the graph's own, at the address every replay writes again.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._side):
            self.graph_loss = self._step(self.idx, cache=False)
        self.graph, self.captured_with = graph, self._hyperparameters()
        self.captures += 1

    def _eager_step(self, idx: torch.Tensor) -> torch.Tensor:
        # Once a graph exists, the gradients are its buffers: zero them in place (the eager
        # backward adds into them) instead of dropping them.
        self.optimizer.zero_grad(set_to_none=self.graph is None)
        self.eager_steps += 1
        return self._step(idx, cache=True)

    def _step(self, idx: torch.Tensor, *, cache: bool) -> torch.Tensor:
        """One whole training step on ``x[idx]``; the running sums grow on the device."""
        xb, yb = to_input(self.x.index_select(0, idx)), self.y.index_select(0, idx)
        with autocast(self.device, self.precision, cache=cache):
            logits = self.model(xb)
            loss = F.cross_entropy(logits, yb)
        loss.backward()
        self.optimizer.step()
        loss = loss.detach()
        self.loss_sum.add_(loss.float() * len(yb))
        self.correct.add_((logits.detach().argmax(1) == yb).sum())
        return loss

    def _hyperparameters(self) -> list:
        """What a captured optimizer step holds as constants."""
        return [
            {k: v for k, v in group.items() if k != "params"}
            for group in self.optimizer.param_groups
        ]
