"""Images per second of the data pipeline, cold (first decode) and cached.

    python benchmarks/data_pipeline.py --data digits --img-size 64
    python benchmarks/data_pipeline.py --data folder:/tmp/cifar10-jpg --img-size 224

Measures, in this process (no model):
- load cold: load_data with an empty data root (decode every split, write the node cache);
- load cached: load_data again (memory-maps the cache; digits has no cache: it reloads);
- batches: the training batches of each policy: per-sample augmentation (in the
  process or --workers DataLoader workers), then batch preprocessing (resize to
  --img-size, RGB, float, normalise; CutMix/MixUp) on --device, over up to --images images.
The data files stay in the OS page cache between runs: "cold" means not decoded yet, not a cold disk.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from study.core.registry import AUGMENTATIONS
from study.trial.augment import batch_mix, preprocessor, sample_transform
from study.trial.batching import train_loader
from study.trial.data import load_data

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def timed(action):
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def batch_rate(
    data, policy: str, img_size: int, batch_size: int, limit: int, workers: int, device: torch.device
) -> float:
    preprocess = preprocessor(img_size, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    per_sample = sample_transform(policy, img_size, "bicubic")
    mix = batch_mix(policy, 10)
    loader = train_loader(
        data, batch_size, per_sample, torch.Generator().manual_seed(0), workers, pin_memory=device.type == "cuda"
    )
    seen, start = 0, time.perf_counter()
    for images, labels in loader:
        images, labels = preprocess(images.to(device, non_blocking=True)), labels.to(device, non_blocking=True)
        if mix is not None:
            images, labels = mix(images, labels)
        seen += len(images)
        if seen >= limit:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=2048, help="images per policy for the batch rate")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--policies", nargs="+", default=list(AUGMENTATIONS.names()))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"{args.data} at {args.img_size} px, {torch.get_num_threads()} threads, {args.workers} loader workers, "
        f"batches on {device}"
    )
    with tempfile.TemporaryDirectory() as root:
        splits, cold = timed(lambda: load_data(args.data, 0, args.img_size, root))
        total = len(splits.train) + len(splits.val) + len(splits.test) + splits.skipped
        _, warm = timed(lambda: load_data(args.data, 0, args.img_size, root))
        print(
            f"load cold:   {cold:7.2f} s  {total / cold:9.0f} images/s  ({total} images, stored "
            f"{tuple(splits.train.store.shape[1:])})"
        )
        print(f"load cached: {warm:7.2f} s  {total / warm:9.0f} images/s")
        for policy in args.policies:
            rate = batch_rate(splits.train, policy, args.img_size, args.batch_size, args.images, args.workers, device)
            print(f"batches {policy:15s} {rate:9.0f} images/s")


if __name__ == "__main__":
    main()
