#!/usr/bin/env python3
"""Trains a small CNN on Fashion-MNIST and exports it as TorchScript for `cleave import`.

The model is an nn.Sequential whose children all are modules (the flatten too), so cleave
can cut it after any child: see examples/README.md. Its first module normalizes, so the
exported model takes raw pixels: float [N, 1, 28, 28] in [0, 1].

Reads the IDX files of the Debian package dataset-fashion-mnist
(/usr/share/datasets/fashion-mnist/*-ubyte.gz); downloads nothing.

  examples/train_fashion_mnist.py --out model.pt            # ~2-3 min on 2 cores, ~91%
  examples/train_fashion_mnist.py --limit 500 --epochs 1    # a smoke run in seconds
"""

import argparse
import gzip
import os
import struct
import sys
import time
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA_DIR = "/usr/share/datasets/fashion-mnist"
# Training-set statistics of the [0, 1] pixels (the same figures cleave's own models use).
MEAN = 0.2860
STD = 0.3530


def read_idx(path, limit=None):
    """An IDX file (gzip-compressed) as a numpy array; the first `limit` items only."""
    with gzip.open(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"{path}: not an IDX file of unsigned bytes")
        dims = list(struct.unpack(">" + "I" * ndim, f.read(4 * ndim)))
        if limit is not None:
            dims[0] = min(dims[0], limit)
        count = int(np.prod(dims))
        data = np.frombuffer(f.read(count), dtype=np.uint8)
    if data.size != count:
        raise ValueError(f"{path}: truncated")
    return data.reshape(dims)


def load_split(data_dir, prefix, limit, rgb32=False):
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"), limit)
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"), limit)
    x = torch.from_numpy(images.copy()).float().unsqueeze(1)  # [N, 1, 28, 28], 0..255
    if rgb32:
        # As cleave converts a gray image for a 3x32x32 input: bilinear resize (half-pixel
        # centers, no antialias), rounded to bytes, the gray plane replicated.
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        x = x.round().clamp(0, 255).repeat(1, 3, 1, 1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x.div_(255.0), y


class Normalize(nn.Module):
    """(x - mean) / std, as a module so it travels inside the exported model."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean = mean
        self.std = std

    def forward(self, x):
        return (x - self.mean) / self.std


def make_model(rgb32=False):
    channels, side = (3, 32) if rgb32 else (1, 28)
    # Pooling before BatchNorm and ReLU: they then touch a quarter of the values, which on a
    # 2-core CPU is a good part of the training time.
    return nn.Sequential(OrderedDict([
        ("normalize", Normalize(MEAN, STD)),
        ("conv1", nn.Conv2d(channels, 16, 3, padding=1)),
        ("pool1", nn.MaxPool2d(2)),            # 16 x 14 x 14
        ("bn1", nn.BatchNorm2d(16)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1)),
        ("pool2", nn.MaxPool2d(2)),            # 32 x 7 x 7
        ("bn2", nn.BatchNorm2d(32)),
        ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()),             # a module, not torch.flatten: keeps it a chain
        ("fc1", nn.Linear(32 * (side // 4) * (side // 4), 128)),
        ("relu3", nn.ReLU()),
        ("dropout", nn.Dropout(0.2)),
        ("fc2", nn.Linear(128, 10)),
    ]))


def evaluate(model, x, y, batch_size=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / max(len(x), 1)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Train a small CNN on Fashion-MNIST and export it with torch.jit.script "
                    "for `cleave import`.")
    parser.add_argument("--out", default="model.pt", help="TorchScript file to write")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first LIMIT training and test images (smoke runs)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (one-cycle)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rgb32", action="store_true",
                        help="train on the images made 3x32x32 RGB (bilinear resize, gray "
                             "replicated), the input of cleave's RGB-folder benchmark")
    parser.add_argument("--exclude-rows", default=None,
                        help="file of training-row indices (one per line) to leave out of "
                             "training, e.g. the rows `cleave import` holds out, so its "
                             "held-out figures are those of images the model never saw")
    parser.add_argument("--data-dir", default=DATA_DIR,
                        help="folder with the *-ubyte.gz files (package dataset-fashion-mnist)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    try:
        train_x, train_y = load_split(args.data_dir, "train", args.limit, args.rgb32)
        test_x, test_y = load_split(args.data_dir, "t10k", args.limit, args.rgb32)
    except FileNotFoundError as e:
        sys.exit(f"error: {e.filename} is missing: apt-get install dataset-fashion-mnist, "
                 "or pass --data-dir")
    if args.exclude_rows:
        with open(args.exclude_rows) as f:
            excluded = {int(line) for line in f if line.strip()}
        keep = torch.tensor([i for i in range(len(train_x)) if i not in excluded],
                            dtype=torch.long)
        train_x, train_y = train_x[keep], train_y[keep]
    print(f"train {len(train_x)} images, test {len(test_x)}, {args.threads} threads")

    model = make_model(args.rgb32)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * ((len(train_x) + args.batch_size - 1) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr,
                                                   total_steps=max(steps, 1))
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x))
        total_loss = 0.0
        for i in range(0, len(train_x), args.batch_size):
            batch = order[i:i + args.batch_size]
            loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total_loss / len(train_x):.4f}, "
              f"{time.time() - start:.0f} s")

    model.eval()
    accuracy = evaluate(model, test_x, test_y)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        sample = test_x[:16]
        if not torch.allclose(scripted(sample), model(sample), atol=1e-5):
            sys.exit("error: the scripted model does not match the trained one")
    scripted.save(args.out)

    names = [name for name, _ in model.named_children()]
    print(f"test accuracy {accuracy:.4f} ({len(test_x)} images)")
    shape = "3, 32, 32" if args.rgb32 else "1, 28, 28"
    print(f"wrote {args.out}: input float [N, {shape}], pixels in [0, 1]; the model "
          f"normalizes itself (mean {MEAN}, std {STD})")
    print("cut points (cleave import --split-after NAME): " + ", ".join(names[:-1]))


if __name__ == "__main__":
    main()
