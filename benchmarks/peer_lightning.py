"""The peer: the lab's cnn trained as a PyTorch Lightning user would write it, with MLflow.

What users would pick instead of ``mnist-tracker train``, written idiomatically: a
``LightningModule`` around the same network, ``torchvision.datasets.MNIST`` with per-image
transforms and ``DataLoader``s, torchmetrics accuracy and macro F1, Lightning's
``MLFlowLogger`` with ``log_model=True`` (the checkpoint Lightning writes becomes an
artifact), the lab's recipe (Adam, lr, weight decay, batch, epochs), at Lightning's default
precision (32-bit) unless ``--precision`` names another (``bf16-mixed``). The test set is
the validation set, evaluated after every epoch as ``mnist-tracker train`` does; the figure
is the last epoch's, so no extra test pass is paid.

It prints one JSON line: ``{"fit_s": ..., "test_accuracy": ..., "test_f1_macro": ...}``.
``benchmarks/peer.py`` runs it; by hand:

    python benchmarks/peer_lightning.py --root TORCHVISION_ROOT --tracking-uri URI [--epochs 1]
        [--precision bf16-mixed]

``--root`` holds ``MNIST/raw/`` as ``torchvision.datasets.MNIST`` reads it (``peer.py``
writes it, since nothing can be downloaded here).
"""

from __future__ import annotations

import argparse
import json
import time

import common
import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import MLFlowLogger
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchvision import datasets, transforms

from mnist_tracker.config import resolve_config
from mnist_tracker.models import get_spec


class LitClassifier(L.LightningModule):
    """The network, its loss, its metrics and its optimizer, Lightning's way."""

    def __init__(self, net: torch.nn.Module, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        self.train_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_f1 = MulticlassF1Score(num_classes=10, average="macro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        self.log("train_accuracy", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.test_f1(logits, y)
        self.log("test_loss", F.cross_entropy(logits, y), on_epoch=True)
        self.log("test_accuracy", self.test_acc, on_epoch=True)
        self.log("test_f1_macro", self.test_f1, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="folder holding MNIST/raw/")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--epochs", type=int, help="[the lab recipe's]")
    parser.add_argument("--precision", default=None, help="Trainer(precision=) [Lightning's: 32]")
    args = parser.parse_args()
    recipe = resolve_config("cnn", epochs=args.epochs)
    spec = get_spec("cnn")
    L.seed_everything(recipe.seed, verbose=False)
    to_tensor = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(spec.input.mean, spec.input.std)]
    )
    train = datasets.MNIST(args.root, train=True, transform=to_tensor)
    test = datasets.MNIST(args.root, train=False, transform=to_tensor)
    train_loader = torch.utils.data.DataLoader(train, batch_size=recipe.batch_size, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test, batch_size=recipe.batch_size)
    model = LitClassifier(common.lab_network(recipe), recipe.lr, recipe.weight_decay)
    logger = MLFlowLogger(experiment_name="peer", tracking_uri=args.tracking_uri, log_model=True)
    trainer = L.Trainer(
        max_epochs=recipe.epochs,
        logger=logger,
        accelerator="auto",
        devices=1,
        precision=args.precision,
        enable_progress_bar=False,  # a progress bar redrawn into a pipe only costs time
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, train_loader, test_loader)
    fit_s = time.perf_counter() - start
    metrics = trainer.callback_metrics
    print(
        json.dumps(
            {
                "fit_s": fit_s,
                "test_accuracy": float(metrics["test_accuracy"]),
                "test_f1_macro": float(metrics["test_f1_macro"]),
                "epochs": recipe.epochs,
                "precision": str(trainer.precision),
                "train_size": len(train),
                "test_size": len(test),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
