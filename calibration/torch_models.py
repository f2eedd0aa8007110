"""Models for the calibration runs and figure 11, built here (random or briefly trained
weights, nothing downloaded) and saved as files the containers load.

- ``mnist-cnn``: 1x28x28 inputs (MNIST's size: 784 values, 6,272 bytes as doubles), the
  TensorFlow "Deep MNIST" tutorial's net (5x5 convolutions of 32 and 64 channels, each
  with a 2x2 max-pool, a 1,024-unit linear layer and 10 outputs): the conv net of the
  paper's figures 5 and 11; random weights (the latency does not depend on them).
- ``digits-cnn``: 1x8x8 inputs (scikit-learn's digits as images), two 3x3 convolutions
  (16, 32 channels) and a linear layer; trained for a few epochs on digits (seconds).
- ``cifar-cnn``: 3x32x32 inputs, three conv-ReLU-pool stages (32, 64, 128 channels) and
  two linear layers (a CIFAR-10-sized net), random weights.
- ``resnet18-w16``: 3x224x224 inputs, ResNet-18's shape (stem conv 7x7/2 + max-pool, four
  stages of two basic blocks, global pooling, linear) at a quarter of its width (16 base
  channels instead of 64, ~1/16 of the FLOPs), so that a single CPU core serves it at
  a few tens of images per second; random weights.
- scikit-learn ``logreg`` and ``forest`` (50 trees, depth 16) on digits "is it a 3?", for
  the fidelity table.

Torch models are saved as TorchScript (``torch.jit.trace``), so the container needs no
Python class to load them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TORCH_MODELS", "TorchModel", "build_torch", "digits_images", "save_sklearn",
           "save_torch"]


@dataclass(frozen=True, slots=True)
class TorchModel:
    name: str
    input_shape: tuple[int, ...]
    description: str
    dtype: str = "float32"  # what a query carries (the MNIST net: the paper's doubles)


TORCH_MODELS: dict[str, TorchModel] = {
    m.name: m
    for m in (
        TorchModel("mnist-cnn", (1, 28, 28), "MNIST conv net (TF Deep MNIST: 2 conv + 2 linear)",
                   "float64"),
        TorchModel("digits-cnn", (1, 8, 8), "digits CNN (2 conv + linear, trained on digits)"),
        TorchModel("cifar-cnn", (3, 32, 32), "CIFAR-sized CNN (3 conv stages + 2 linear)"),
        TorchModel("resnet18-w16", (3, 224, 224), "ResNet-18 shape at 1/4 width, 224x224x3"),
    )
}


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as float32 images (n, 1, 8, 8) scaled to [0, 1], labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32), d.target.astype(np.int64)


def build_torch(name: str, seed: int = 0):  # type: ignore[no-untyped-def]  # noqa: ANN201
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if name == "digits-cnn":
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
        )
        x, y = digits_images()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(3):
            perm = torch.randperm(len(xt))
            for i in range(0, len(xt), 64):
                idx = perm[i : i + 64]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
        return net.eval()
    if name == "mnist-cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Linear(1024, 10),
        ).eval()
    if name == "cifar-cnn":
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, 10),
        ).eval()
    if name == "resnet18-w16":
        return _resnet18(16).eval()
    raise ValueError(f"unknown torch model {name!r}; known: {sorted(TORCH_MODELS)}")


def _resnet18(width: int):  # type: ignore[no-untyped-def]  # noqa: ANN202
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout else nn.Identity()
            )

        def forward(self, x):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
            y = self.b2(self.c2(self.b1(self.c1(x)).relu()))
            return (y + self.short(x)).relu()

    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = width
    for i, mult in enumerate((1, 2, 4, 8)):
        cout = width * mult
        layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


def save_torch(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build ``name`` and save it as TorchScript under ``out_dir``; returns the path."""
    import torch

    spec = TORCH_MODELS[name]
    net = build_torch(name, seed)
    path = Path(out_dir) / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript: what containers load
        traced = torch.jit.trace(  # type: ignore[no-untyped-call]
            net, torch.zeros((2, *spec.input_shape))
        )
        torch.jit.save(traced, str(path))
    return path


def save_sklearn(name: str, out_dir: str | Path) -> Path:
    """``logreg`` or ``forest`` (50 trees, depth 16) trained on digits "is it a 3?"."""
    import joblib  # type: ignore[import-untyped]
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    y = (y == 3).astype(np.int64)
    if name == "logreg":
        est = LogisticRegression(max_iter=2000).fit(x, y)
    elif name == "forest":
        est = RandomForestClassifier(n_estimators=50, max_depth=16, random_state=0,
                                     n_jobs=1).fit(x, y)
    else:
        raise ValueError(f"unknown scikit-learn model {name!r}; known: logreg, forest")
    path = Path(out_dir) / f"{name}.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(est, path)
    return path
