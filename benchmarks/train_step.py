"""Images/s of imseg's training step (Lightning module, our loss, our loader wrapping) vs a plain PyTorch loop.

Same smp model (Unet resnet18), batch, image size, loss (CE + Dice), optimizer (AdamW) and synthetic data,
one process. Also reports the time imseg's step waited on the data loader.

    .venv/bin/python benchmarks/train_step.py [--size 128] [--batch 8] [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch


class Synthetic(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, 2, (n, size, size), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def plain_loop(size: int, batch: int, steps: int) -> float:
    from imseg.semantic.losses import build_loss
    from imseg.semantic.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", encoder="resnet18", num_classes=2).train()
    loss_fn = build_loss("ce+dice", 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(Synthetic(batch * (steps + 2), size), batch_size=batch, shuffle=True)
    it = iter(loader)
    for _ in range(2):  # warm-up
        x, y = next(it)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        x, y = next(it)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def imseg_loop(size: int, batch: int, steps: int) -> tuple[float, float]:
    import lightning.pytorch as L

    from imseg.semantic.train import train

    class Timer(L.Callback):
        def __init__(self):
            self.t_batch_start, self.t_prev_end, self.wait, self.times = [], None, 0.0, []

        def on_train_batch_start(self, trainer, module, batch_, idx):
            now = time.perf_counter()
            if idx >= 2 and self.t_prev_end is not None:
                self.wait += now - self.t_prev_end
            self.start = now

        def on_train_batch_end(self, trainer, module, outputs, batch_, idx):
            now = time.perf_counter()
            if idx >= 2:
                self.times.append(now - self.start)
            self.t_prev_end = now

    timer = Timer()
    data = {"train": Synthetic(batch * (steps + 2), size), "val": Synthetic(batch, size)}
    train(dict(model="unet", encoder="resnet18", epochs=1, imgsz=size, batch=batch, workers=0, progress=False,
               loss="ce+dice", project="/tmp/imseg_bench", name="step", patience=0, warmup=0),
          datasets=data, class_names=["a", "b"], callbacks=[timer])
    total = sum(timer.times) + timer.wait
    return len(timer.times) * batch / total, timer.wait


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ref = plain_loop(args.size, args.batch, args.steps)
    ours, wait = imseg_loop(args.size, args.batch, args.steps)
    ref2 = plain_loop(args.size, args.batch, args.steps)  # again, to expose drift from the shared CPU
    print(f"plain PyTorch: {ref:.2f} img/s then {ref2:.2f} img/s; imseg: {ours:.2f} img/s; "
          f"ratio {ours / ((ref + ref2) / 2):.3f}x; imseg loader wait {wait:.3f} s total over {args.steps} steps")


if __name__ == "__main__":
    main()
