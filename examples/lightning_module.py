"""Cached distillation in PyTorch Lightning: a LightningDataModule over kdcache's KDLoader and a
LightningModule whose loss is kdcache's DistillationLoss.

    python examples/lightning_module.py DATA CACHE [--epochs 2] [--model resnet10t]
        [--resolution PX]
"""

import argparse

import lightning as L
import timm
import torch

import kdcache


class CachedKD(L.LightningDataModule):
    """Training batches: replayed views joined with their cached targets."""

    def __init__(
        self,
        data: str,
        cache: str,
        batch_size: int = 64,
        workers: int = 2,
        resolution: int | None = None,
    ):
        super().__init__()
        self.loader = kdcache.KDLoader(
            data, cache, batch_size=batch_size, workers=workers, resolution=resolution
        )

    def train_dataloader(self) -> kdcache.KDLoader:
        return self.loader


class Student(L.LightningModule):
    """A timm student trained on labels plus the cached teacher's soft targets."""

    def __init__(self, model: str, classes: int, channels: int, lr: float = 3e-3):
        super().__init__()
        self.net = timm.create_model(model, num_classes=classes, in_chans=channels)
        self.criterion = kdcache.DistillationLoss("soft", classes, alpha=0.5, tau=1.0)
        self.lr = lr

    def on_train_epoch_start(self) -> None:
        self.trainer.datamodule.loader.set_epoch(self.current_epoch)  # this epoch's views

    def training_step(self, batch: kdcache.KDBatch, index: int) -> torch.Tensor:
        loss = self.criterion(self.net(batch.images), batch.labels, batch.teacher_targets)
        size = len(batch.labels)  # Lightning weighs epoch means by it (a last batch is short)
        self.log("loss", loss, on_epoch=True, on_step=False, batch_size=size)
        self.log("kd", self.criterion.parts["kd"], on_epoch=True, on_step=False, batch_size=size)
        return loss

    def on_train_epoch_end(self) -> None:
        print(f"epoch {self.current_epoch}: loss {self.trainer.callback_metrics['loss']:.4f}")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.05)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("cache")
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=None, help="default: the images'")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = CachedKD(args.data, args.cache, resolution=args.resolution)
    manifest = data.loader.manifest
    print(f"training at {data.loader.resolution} px")
    student = Student(args.model, manifest.num_classes, manifest.channels)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(student, datamodule=data)
