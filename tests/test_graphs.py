"""The CUDA-graph training path where no GPU is: its batch order and sums, the capturable
optimizer it needs, and the settings it refuses. Its captures run in tests/test_gpu.py."""

from __future__ import annotations

import pytest
import torch

from mnist_tracker import data
from mnist_tracker.config import ConfigError, resolve_config
from mnist_tracker.models import create_model
from mnist_tracker.training import runtime
from mnist_tracker.training.graphs import GraphedEpochs
from mnist_tracker.training.loop import build_optimizer, train_one_epoch
from mnist_tracker.workflows import suite

from .conftest import SUBSET

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def splits():
    mnist = data.load_mnist(SUBSET, download_missing=False)
    return data.split_data(mnist, seed=0, limit_train=300, limit_test=64)


def _two_epochs(splits, graphed: bool):
    """Two epochs of 300 images at batch 64 (four full batches and one of 44): (results,
    every on_batch call read at once, the weights after)."""
    config = resolve_config("cnn", device="cpu", limit_train=300)
    torch.manual_seed(0)
    model = create_model(config)
    optimizer = build_optimizer(config, model)
    generator = torch.Generator().manual_seed(1)
    calls = []

    def on_batch(b):
        calls.append((b.step, b.size, b.seen, float(b.loss), float(b.loss_sum)))

    if graphed:
        epochs = GraphedEpochs(
            model, splits.train_x, splits.train_y, batch_size=64, optimizer=optimizer,
            precision="fp32",
        )  # fmt: skip
        results = [epochs.train_epoch(generator=generator, on_batch=on_batch) for _ in range(2)]
    else:
        results = [
            train_one_epoch(
                model,
                splits.train_x,
                splits.train_y,
                batch_size=64,
                optimizer=optimizer,
                device=torch.device("cpu"),
                precision="fp32",
                generator=generator,
                on_batch=on_batch,
            )
            for _ in range(2)
        ]
    return results, calls, [p.detach().clone() for p in model.parameters()]


def test_graphed_epochs_take_the_loops_batches_and_sums(splits):
    """Off CUDA no graph is captured, so GraphedEpochs must compute exactly what the eager
    loop does: the same seeded order, the last smaller batch, the same running sums and
    on_batch calls, the same weights, bit for bit."""
    loop, graphed = _two_epochs(splits, graphed=False), _two_epochs(splits, graphed=True)
    assert graphed[0] == loop[0]
    assert graphed[1] == loop[1]
    assert [c[:3] for c in graphed[1][:5]] == [(1, 64, 64), (2, 64, 128), (3, 64, 192),
                                               (4, 64, 256), (5, 44, 300)]  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(graphed[2], loop[2], strict=True))


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_graphs_make_the_adam_family_capturable(optimizer):
    """A captured optimizer step needs its step counts on the device: capturable=True."""
    config = resolve_config("cnn", optimizer=optimizer, cuda_graphs=True)
    groups = build_optimizer(config, create_model(config)).param_groups
    assert all(g["capturable"] is True for g in groups)
    plain = build_optimizer(config.replace(cuda_graphs=False), create_model(config))
    assert not any(g["capturable"] for g in plain.param_groups)


def test_graphs_need_a_cuda_device():
    config = resolve_config("cnn", cuda_graphs=True, device="cpu")
    with pytest.raises(ConfigError, match="--cuda-graphs needs a CUDA device"):
        runtime.resolve_runtime(config)
    assert runtime.resolve_runtime(config.replace(cuda_graphs=False)).device == "cpu"


def test_graphs_are_a_logged_param_and_reach_every_model_of_a_suite():
    config = resolve_config("cnn", cuda_graphs=True)
    assert config.to_params()["cuda_graphs"] == "true"
    assert resolve_config("cnn").to_params()["cuda_graphs"] == "false"
    configs = suite.suite_configs(["cnn", "vit", "alexnet"], cuda_graphs=True)
    assert [c.cuda_graphs for c in configs] == [True, True, True]


def test_a_graph_replays_each_full_batch_and_is_dropped_when_the_lr_moves(splits):
    """With a graph in place (a stand-in that counts its replays: no capture without CUDA),
    every full batch replays it, the last smaller one runs eagerly into the same gradient
    tensors (kept, not dropped: they are the graph's buffers), and a changed learning rate
    drops the graph before the next epoch's first batch."""
    config = resolve_config("cnn", device="cpu", limit_train=300)
    model = create_model(config)
    optimizer = build_optimizer(config, model)
    epochs = GraphedEpochs(
        model, splits.train_x, splits.train_y, batch_size=64, optimizer=optimizer,
        precision="fp32",
    )  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    epochs.train_epoch(generator=generator)  # eager: creates the gradients

    class CountingGraph:
        replays = 0

        def replay(self):
            CountingGraph.replays += 1

    epochs.graph, epochs.graph_loss = CountingGraph(), torch.zeros(())
    epochs.captured_with = epochs._hyperparameters()
    grads = [p.grad for p in model.parameters()]
    epochs.train_epoch(generator=generator)
    assert CountingGraph.replays == 4  # 300 images: four batches of 64, then one of 44
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))

    optimizer.param_groups[0]["lr"] /= 2
    epochs.train_epoch(generator=generator)
    assert epochs.graph is None and CountingGraph.replays == 4
