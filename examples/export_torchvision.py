#!/usr/bin/env python3
"""Exports a torchvision architecture, sized for small images, as TorchScript that cleave can cut.

torchvision writes ResNet's and MobileNet's forward with a torch.flatten between the pooling
and the classifier (and ResNet's behind a _forward_impl call), so `cleave import` refuses them
as they are. This script rebuilds the same layers as an nn.Sequential, with nn.Flatten as a
module, which is a chain cleave can cut after any child, and inside any child that is itself
an nn.Sequential ("layer2.0", "features.3"). The model normalizes its input itself: it takes
float [N, 3, S, S] RGB in [0, 1].

  examples/export_torchvision.py --arch resnet18 --out resnet18.pt         # untrained
  examples/export_torchvision.py --arch mobilenet_v3_small --width-mult 0.5 --out mnv3.pt
  examples/export_torchvision.py --train-steps 200 --out resnet18.pt       # briefly trained

--train-steps trains on Fashion-MNIST (package dataset-fashion-mnist), the grayscale images
resized to S x S and repeated over three channels: enough to see a model that learned
something at every cut, not a useful RGB classifier.
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
import torchvision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class Normalize(nn.Module):
    """Per-channel (x - mean) / std, as a module so it travels inside the exported model."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def resnet18_chain(num_classes, image_size):
    """ResNet-18 as an nn.Sequential; for small images (<= 64 px) with the CIFAR-style stem:
    a 3x3 stride-1 first convolution and no max-pool."""
    r = torchvision.models.resnet18(num_classes=num_classes)
    children = [("normalize", Normalize(IMAGENET_MEAN, IMAGENET_STD))]
    if image_size <= 64:
        children.append(("conv1", nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)))
        children += [("bn1", r.bn1), ("relu", r.relu)]
    else:
        children += [("conv1", r.conv1), ("bn1", r.bn1), ("relu", r.relu), ("maxpool", r.maxpool)]
    children += [(name, getattr(r, name)) for name in ("layer1", "layer2", "layer3", "layer4")]
    children += [("avgpool", r.avgpool), ("flatten", nn.Flatten()), ("fc", r.fc)]
    return nn.Sequential(OrderedDict(children))


def mobilenet_v3_small_chain(num_classes, width_mult):
    m = torchvision.models.mobilenet_v3_small(num_classes=num_classes, width_mult=width_mult)
    return nn.Sequential(OrderedDict([
        ("normalize", Normalize(IMAGENET_MEAN, IMAGENET_STD)),
        ("features", m.features),
        ("avgpool", m.avgpool),
        ("flatten", nn.Flatten()),
        ("classifier", m.classifier),
    ]))


def cut_points(module, prefix=""):
    """The cut names cleave will list for this chain, in order, the end of the model included.

    Children that are nn.Sequential are chains cleave can cut inside; the cut after the last
    child of an inner chain is the cut after that chain and takes its (outer) name. Other
    modules are leaves here; cleave may still find a custom module with a chain forward.
    """
    names = []
    for name, child in module.named_children():
        full = prefix + name
        if isinstance(child, nn.Sequential) and len(child) > 0:
            names += cut_points(child, full + ".")[:-1]
        names.append(full)
    return names


def read_idx(path, limit):
    with gzip.open(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"{path}: not an IDX file of unsigned bytes")
        dims = list(struct.unpack(">" + "I" * ndim, f.read(4 * ndim)))
        dims[0] = min(dims[0], limit)
        data = np.frombuffer(f.read(int(np.prod(dims))), dtype=np.uint8)
    return data.reshape(dims)


def train_briefly(model, steps, image_size, num_classes, data_dir, batch_size=64):
    """`steps` Adam steps on Fashion-MNIST, resized and made RGB (see the module docstring)."""
    count = min(60000, steps * batch_size)
    images = read_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"), count)
    labels = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"), count)
    x = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64)) % num_classes
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    start = time.time()
    for step in range(steps):
        batch = torch.randint(0, len(x), (batch_size,))
        inputs = F.interpolate(x[batch], size=(image_size, image_size), mode="bilinear",
                               align_corners=False).repeat(1, 3, 1, 1)
        loss = F.cross_entropy(model(inputs), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            print(f"step {step + 1}/{steps}: loss {loss.item():.3f}, {time.time() - start:.0f} s")
    model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Export a torchvision architecture sized for small images as a cuttable "
                    "TorchScript nn.Sequential for `cleave import`.")
    parser.add_argument("--arch", choices=("resnet18", "mobilenet_v3_small"), default="resnet18")
    parser.add_argument("--out", default="model.pt", help="TorchScript file to write")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32, help="input height and width")
    parser.add_argument("--width-mult", type=float, default=1.0,
                        help="channel multiplier (mobilenet_v3_small only)")
    parser.add_argument("--trace", action="store_true",
                        help="export with torch.jit.trace instead of torch.jit.script")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="train this many steps on Fashion-MNIST first (0: untrained)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=FASHION_MNIST_DIR,
                        help="Fashion-MNIST *-ubyte.gz folder, for --train-steps")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.arch == "resnet18":
        model = resnet18_chain(args.num_classes, args.image_size)
    else:
        model = mobilenet_v3_small_chain(args.num_classes, args.width_mult)
    if args.train_steps > 0:
        try:
            train_briefly(model, args.train_steps, args.image_size, args.num_classes,
                          args.data_dir)
        except FileNotFoundError as e:
            sys.exit(f"error: {e.filename} is missing: apt-get install dataset-fashion-mnist, "
                     "or pass --data-dir")
    model.eval()

    sample = torch.rand(2, 3, args.image_size, args.image_size)
    with torch.no_grad():
        exported = torch.jit.trace(model, sample) if args.trace else torch.jit.script(model)
        if not torch.allclose(exported(sample), model(sample), atol=1e-4):
            sys.exit("error: the exported model does not match the eager one")
    exported.save(args.out)

    parameters = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {args.arch}, {parameters} parameters, input float "
          f"[N, 3, {args.image_size}, {args.image_size}] RGB in [0, 1] (normalized inside "
          f"with the ImageNet mean/std)")
    print("cut points (cleave import --split-after NAME): " + ", ".join(cut_points(model)[:-1]))


if __name__ == "__main__":
    main()
