"""A plain PyTorch training loop on cached teacher targets, with kdcache's public API only.

    python examples/plain_loop.py DATA CACHE [--epochs 2] [--model resnet10t] [--resolution PX]

It trains as ``kdcache train --kd soft --warmup-epochs 0`` does with the same options and seed
(AdamW from timm, a per-step cosine schedule), so both reach the same test accuracy.
"""

import argparse

import timm
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

import kdcache

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("data")
parser.add_argument("cache")
parser.add_argument("--model", default="resnet10t")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--resolution", type=int, default=None, help="default: the images'")
args = parser.parse_args()

# --- training code ---
torch.manual_seed(args.seed)
loader = kdcache.KDLoader(
    args.data, args.cache, batch_size=args.batch_size, seed=args.seed, resolution=args.resolution
)
print(f"training at {loader.resolution} px")
classes, channels = loader.manifest.num_classes, loader.manifest.channels
model = timm.create_model(args.model, num_classes=classes, in_chans=channels)
criterion = kdcache.DistillationLoss("soft", classes, alpha=0.5, tau=1.0)
optimizer = create_optimizer_v2(model, "adamw", lr=args.lr, weight_decay=0.05)
steps = sum(loader.steps(epoch) for epoch in range(args.epochs))
scheduler = CosineLRScheduler(optimizer, t_initial=steps, lr_min=1e-5, t_in_epochs=False)
updates = 0
for epoch in range(args.epochs):
    loader.set_epoch(epoch)
    model.train()
    total, seen = 0.0, 0
    for batch in loader:
        loss = criterion(model(batch.images), batch.labels, batch.teacher_targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        updates += 1
        scheduler.step_update(updates)
        total, seen = total + loss.item() * len(batch.labels), seen + len(batch.labels)
    scores = kdcache.evaluate_model(model, args.data, resolution=loader.resolution)
    print(f"epoch {epoch}: loss {total / seen:.4f} (ce {criterion.parts['ce']:.4f}), "
          f"test acc {scores['acc']:.2f}%")  # fmt: skip
