#!/usr/bin/python3
"""Plain PyTorch reference for `cleave bench continual`'s joint (offline) upper bound.

The simple CNN of `cleave bench fl` trained for one epoch on all of Fashion-MNIST (batch 64,
SGD lr 0.01 momentum 0.9), then tested. With --normalize the inputs are standardized with
the training set's mean and std, as cleave's networks do; without it they stay in [0, 1].

    /usr/bin/python3 examples/continual_joint_reference.py --normalize --seeds 1 2
"""
import argparse
import gzip
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def load(directory, images, labels):
    def read(name):
        path = os.path.join(directory, name)
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            return f.read()
    x = np.frombuffer(read(images), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    y = np.frombuffer(read(labels), np.uint8, offset=8)
    return torch.tensor(x, dtype=torch.float32) / 255.0, torch.tensor(y, dtype=torch.long)


class SimpleCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.f1, self.f2, self.f3 = nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2).flatten(1)
        return self.f3(F.relu(self.f2(F.relu(self.f1(x)))))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--normalize", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    a = p.parse_args()
    names = sorted(os.listdir(a.data_dir))
    pick = lambda prefix: next(n for n in names if n.startswith(prefix))
    xtr, ytr = load(a.data_dir, pick("train-images"), pick("train-labels"))
    xte, yte = load(a.data_dir, pick("t10k-images"), pick("t10k-labels"))
    if a.normalize:
        mean, std = xtr.mean(), xtr.std()
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
    for seed in a.seeds:
        torch.manual_seed(seed)
        net = SimpleCnn()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        order = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = (net(xte).argmax(1) == yte).float().mean().item()
        print(f"seed {seed}: joint accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
