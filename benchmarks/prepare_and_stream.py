"""Prepare-stage and streaming-reader throughput on this machine.

1. The prepare stage on the embedded default of ``params.yaml`` (and on ``digits``), into a
   temporary folder: wall time and total Parquet size.
2. A generated JPEG set (``--images`` smooth random images of ``--side`` px, 80/20 train/test
   in an ImageFolder layout) prepared, then streamed: images/s of decode + transform at
   ``--size`` px through a DataLoader with 0 and 2 workers (train: random resized crop + flip;
   test: resize + centre crop), plus decode alone for reference.

    python benchmarks/prepare_and_stream.py                  # 2,000 images of 300 px, 224 px out
    python benchmarks/prepare_and_stream.py --images 500 --workers 0 2 4
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdlora.config import DataConfig, load_config
from sdlora.data.prepare import prepare
from sdlora.data.stream import ParquetStream, build_transform, make_loader, task_files

REPO = Path(__file__).resolve().parents[1]


def parquet_bytes(folder: Path) -> int:
    """Total size of the Parquet files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*.parquet"))


def time_prepare(cfg: DataConfig, seed: int, out: Path) -> tuple[float, dict]:
    """(seconds, manifest) of one prepare run."""
    start = time.perf_counter()
    manifest = prepare(cfg, seed=seed, out=out)
    return time.perf_counter() - start, manifest


def write_jpegs(root: Path, images: int, side: int, classes: int, seed: int = 0) -> float:
    """Smooth random JPEGs (natural-image-like file sizes) in train/test; return mean KiB."""
    rng = np.random.default_rng(seed)
    per_class = images // classes
    n_test = max(1, per_class // 5)
    sizes = []
    for c in range(classes):
        for i in range(per_class):
            split = "test" if i < n_test else "train"
            coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
            pixels = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), np.float32)
            pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
            path = root / split / f"class_{c:03d}" / f"img_{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, format="JPEG", quality=90)
            sizes.append(path.stat().st_size)
    return float(np.mean(sizes)) / 1024


def stream_rate(
    files: list[Path], train: bool, size: int, workers: int, batch: int, epochs: int
) -> tuple[int, float]:
    """(images, seconds) for ``epochs`` passes through the training loader
    (:func:`sdlora.data.stream.make_loader`, persistent workers), start-up included."""
    stream = ParquetStream(files, build_transform(train, size), shuffle=train, seed=0)
    loader = make_loader(stream, batch, workers, torch.device("cpu"))  # as training reads
    count = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        for images, _ in loader:
            count += images.shape[0]
    return count, time.perf_counter() - start


def decode_rate(files: list[Path]) -> tuple[int, float]:
    """(images, seconds) to decode every image once in this process, no transform."""
    stream = ParquetStream(files, None)
    start = time.perf_counter()
    count = 0
    for image, _ in stream:
        image.load()
        count += 1
    return count, time.perf_counter() - start


def main() -> None:
    """Run both measurements and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=300, help="generated JPEG side, px")
    parser.add_argument("--size", type=int, default=224, help="model input side, px")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="streaming passes timed")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, torch threads {threads}")

    with tempfile.TemporaryDirectory(prefix="sdlora-bench-") as tmp_name:
        tmp = Path(tmp_name)
        cfg = load_config(args.params)
        print("\n1. prepare, embedded benchmarks")
        print(
            f"{'dataset':<10} {'tasks':>5} {'train':>6} {'test':>6} {'seconds':>8} {'Parquet':>10}"
        )
        runs = [(f"{cfg.data.dataset}", cfg.data), ("digits", DataConfig(dataset="digits"))]
        for name, data_cfg in runs:
            seconds, manifest = time_prepare(data_cfg, cfg.seed, tmp / f"prep-{name}")
            size = parquet_bytes(tmp / f"prep-{name}")
            totals = manifest["totals"]
            print(
                f"{name:<10} {len(manifest['tasks']):>5} {totals['train']:>6} {totals['test']:>6} "
                f"{seconds:>8.2f} {size / 1024:>8.0f} KiB"
            )

        print(f"\n2. streaming, {args.images} generated {args.side}x{args.side} JPEGs")
        start = time.perf_counter()
        kib = write_jpegs(tmp / "jpegs", args.images, args.side, classes=20)
        print(f"generated in {time.perf_counter() - start:.1f} s, mean file {kib:.1f} KiB")
        jpeg_cfg = DataConfig(
            dataset="imagefolder", root=str(tmp / "jpegs"), init_cls=10, increment=10
        )
        seconds, manifest = time_prepare(jpeg_cfg, 0, tmp / "prep-jpegs")
        total = sum(manifest["totals"].values())
        print(
            f"prepare: {total} images in {seconds:.2f} s ({total / seconds:.0f} images/s, "
            f"full decode check), Parquet {parquet_bytes(tmp / 'prep-jpegs') / 2**20:.1f} MiB"
        )
        prepared = tmp / "prep-jpegs"
        train_files = task_files(prepared, [0, 1], "train")
        test_files = task_files(prepared, [0, 1], "test")
        print(f"\n{'pass':<34} {'workers':>7} {'images':>7} {'seconds':>8} {'images/s':>9}")
        n, s = decode_rate(train_files)
        print(f"{'decode only (no transform)':<34} {0:>7} {n:>7} {s:>8.2f} {n / s:>9.0f}")
        for train, files in ((True, train_files), (False, test_files)):
            label = f"decode + {'train' if train else 'test'} transform {args.size}px"
            for workers in args.workers:
                n, s = stream_rate(files, train, args.size, workers, args.batch, args.epochs)
                print(f"{label:<34} {workers:>7} {n:>7} {s:>8.2f} {n / s:>9.0f}")


if __name__ == "__main__":
    main()
