"""Training and inference throughput of the model variants on this machine.

    python benchmarks/throughput.py [--steps 10] [--device cpu|cuda] [--precision 32|bf16]

Prints one row per (variant, input size): training images/s (forward + backward + SGD step
at the given batch size), inference images/s, and parameters.
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from crackseg import CONFIG_DIR
from crackseg.data.labels import downsample_to_output
from crackseg.models.losses import decision_loss, segmentation_loss
from crackseg.models.segdecnet import SegDecNet

CASES = [
    ("segdec_small", 128, 128, 8),
    ("segdec_small", 160, 160, 8),
    ("segdec", 128, 128, 8),
    ("segdec", 640, 232, 1),
    ("segdec_fullres", 160, 160, 8),
]


def net_arguments(variant: str) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={variant}"])
    return OmegaConf.to_container(cfg.model.net, resolve=True)


def measure(variant, height, width, batch, steps, device, dtype) -> tuple[float, float, int]:
    net = SegDecNet(**net_arguments(variant)).to(device)
    optim = torch.optim.SGD(net.parameters(), lr=0.01)
    images = torch.rand(batch, 3, height, width, device=device)
    mask = (torch.rand(batch, 1, height, width, device=device) > 0.97).float()
    labels = torch.ones(batch, device=device)
    segmented = torch.ones(batch, dtype=torch.bool, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = net(images)
            target = mask if net.full_resolution else downsample_to_output(mask)
            weight = torch.ones_like(target)
            loss = segmentation_loss(out.segmentation.float(), target, weight, segmented)
            loss = loss + decision_loss(out.decision.float(), labels)
        optim.zero_grad()
        loss.backward()
        optim.step()

    def timed(fn, n) -> float:
        for _ in range(3):  # warm-up: allocator and oneDNN kernel selection
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n * batch / (time.perf_counter() - start)

    train = timed(step, steps)
    net.eval()
    with torch.no_grad():
        infer = timed(lambda: net(images), steps)
    return train, infer, sum(p.numel() for p in net.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    print(f"device: {device}, precision: {args.precision}, threads: {torch.get_num_threads()}")
    print("| model | input | batch | train img/s | infer img/s | parameters |")
    print("| --- | --- | --- | --- | --- | --- |")
    for variant, height, width, batch in CASES:
        train, infer, params = measure(variant, height, width, batch, args.steps, device, dtype)
        print(
            f"| {variant} | {height}x{width} | {batch} | {train:.1f} | {infer:.1f} | {params:,} |"
        )


if __name__ == "__main__":
    main()
