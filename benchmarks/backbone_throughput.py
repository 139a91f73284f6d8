"""Which width of WRN-28-10 and VGG-16-BN fits one ``mini`` seed in 2 hours on 2 cores? Measured, in one run.

Every figure is a *ratio* against ResNet-18 at the ``mini`` width (0.25), timed in the same minute:
each block of a backbone (FP32 training, QAT training, evaluation) sits between two blocks of the
reference in the same mode, and its ratio is the reference's images/s (geometric mean of the two
blocks around it) over the backbone's; ``--rounds`` repeats that and takes the median ratio (the
min-max over rounds is printed as its spread). A loaded machine slows both sides alike, so the
ratio holds where absolute images/s do not; the MAC ratio (``measure.proxies``, per image, forward)
is printed beside it as the load-free expectation. The ratio turns into a time per ``mini`` seed through the one cost
that was measured end to end: ResNet-18's ``mini`` grid (notebooks 01-06, one seed) took 47-53 min
on a quiet 2-core Zen 4 (AVX-512 VNNI) VM (:data:`pqd_lib.config.PRESETS`' comment), and its FP32
training runs 2.18x slower on the 2-core AVX2-only EPYC (676 vs 310 images/s, the ``standard``
preset's comment), so about 103-116 min there.

    python benchmarks/backbone_throughput.py                     # the default settings, ~10-15 min loaded
    python benchmarks/backbone_throughput.py --seconds 5 --settings wrn28_10:0.0625   # a smoke test

The time per seed uses the *largest* of a setting's three ratios (FP32 training, QAT training,
evaluation): an upper bound on the grid's mix of them, since the grid spends its time in those three.
The last line names, per machine class, the largest width per backbone whose upper bound fits
``--budget-min``: ``chosen: Zen 4: wrn28_10 W (N min), vgg16_bn W (N min); AVX2: ...``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from pqd_lib import config as C
from pqd_lib import data as D
from pqd_lib import hardware, models, train
from pqd_lib.backbones import check_width
from pqd_lib.measure.proxies import layer_macs
from pqd_lib.stages import quantize

#: ResNet-18's ``mini`` seed (notebooks 01-06) in minutes on 2 quiet Zen 4 cores (PRESETS' comment).
REFERENCE_MINI_MINUTES_ZEN4 = (47.0, 53.0)
#: FP32 training images/s of the same 2-core grid, Zen 4 (676) over AVX2-only EPYC (310).
AVX2_SLOWDOWN = 676 / 310
REFERENCE = ("resnet18", C.PRESETS["mini"]["model"]["width"])
DEFAULT_SETTINGS = "wrn28_10:0.25,wrn28_10:0.125,wrn28_10:0.1,wrn28_10:0.08,wrn28_10:0.0625,vgg16_bn:0.25"
MODES = ("fp32", "qat", "eval")


def _splits(batch: int) -> D.DataSplits:
    """One batch of training images and `batch` x 4 test images from the embedded CIFAR-10 subset."""
    full = D.load(C.DataConfig(source="embedded"))
    return D.DataSplits.from_tensors(full.x_train[:batch], full.y_train[:batch], full.x_test[: 4 * batch],
                                     full.y_test[: 4 * batch], classes=full.classes, mean=full.mean, std=full.std)


def _stepper(name: str, width: float, mode: str, splits: D.DataSplits) -> Callable[[], int]:
    """A callable doing one unit of `mode` work with the library's own loop; returns the images it processed."""
    t = C.TrainConfig()
    torch.manual_seed(0)
    model = models.build(name, num_classes=10, width=width)
    if mode == "qat":  # what stage Q trains: the FX QAT-prepared model, x86 engine, 7-bit activations
        model = quantize.prepare_qat(model, backend="x86", reduce_range=True)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    device = torch.device("cpu")
    if mode == "eval":
        return lambda: train.evaluate(model, splits, batch_size=t.eval_batch_size, channels_last=t.channels_last)[
            "images"]
    opt = train.make_optimizer(model, lr=0.01, momentum=t.momentum, weight_decay=t.weight_decay)
    loss = train.cross_entropy()
    gen = torch.Generator().manual_seed(0)
    return lambda: train.train_one_epoch(model, splits, opt, loss, batch_size=t.batch_size, generator=gen,
                                         device=device, channels_last=t.channels_last, progress=False)["images"]


def _images_per_s(step: Callable[[], int], seconds: float, min_steps: int = 2) -> float:
    """Images/s of `step` repeated for >= `seconds` and >= `min_steps` calls, after one warm-up call."""
    step()
    images, start = 0, time.perf_counter()
    calls = 0
    while calls < min_steps or time.perf_counter() - start < seconds:
        images += step()
        calls += 1
    return images / (time.perf_counter() - start)


def _macs(name: str, width: float) -> int:
    """Forward multiply-accumulates per 32x32 image (every conv and linear layer)."""
    return sum(layer_macs(models.build(name, num_classes=10, width=width)).values())


def _seed_minutes(time_factor: float) -> tuple[float, float, float, float]:
    """(Zen 4 low, high, AVX2 low, high) minutes of one ``mini`` seed at `time_factor` x ResNet-18's cost."""
    lo, hi = (m * time_factor for m in REFERENCE_MINI_MINUTES_ZEN4)
    return lo, hi, lo * AVX2_SLOWDOWN, hi * AVX2_SLOWDOWN


def _parse_settings(text: str) -> list[tuple[str, float]]:
    settings = []
    for item in text.split(","):
        name, _, width = item.strip().partition(":")
        try:
            w = float(width)
        except ValueError:
            raise SystemExit(f"--settings: {item!r} is not backbone:width, e.g. wrn28_10:0.1") from None
        if name not in models.MODELS:
            raise SystemExit(f"--settings: {name!r} is not a backbone; choose one of {', '.join(models.MODELS)}")
        try:
            check_width(name, w)
        except ValueError as exc:
            raise SystemExit(f"--settings: {exc}") from None
        settings.append((name, w))
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="backbone:width,... (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds per timed block (>= 2 steps each)")
    parser.add_argument("--modes", default=",".join(MODES), help="fp32, qat, eval (comma-separated)")
    parser.add_argument("--rounds", type=int, default=1, help="reference/backbone/reference rounds; median ratio")
    parser.add_argument("--budget-min", type=float, default=120.0, help="minutes one mini seed may take")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = _parse_settings(args.settings)
    modes = [m for m in args.modes.split(",") if m]
    splits = _splits(C.TrainConfig.batch_size)
    caps = hardware.capabilities()
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"class {hardware.capability_class(caps)}, torch {torch.__version__}, threads {args.threads}")
    print(f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"# reference {REFERENCE[0]} width {REFERENCE[1]}; blocks of >= {args.seconds:g} s, batch "
          f"{C.TrainConfig.batch_size} (train) / {C.TrainConfig.eval_batch_size} (eval)")
    refs = {m: _stepper(*REFERENCE, m, splits) for m in modes}
    start = time.perf_counter()
    rows = []
    ref_macs = _macs(*REFERENCE)
    print(f"{'backbone':10} {'width':>7} {'MACs x ref':>10} {'mode':5} {'img/s':>8} {'ref img/s':>10} "
          f"{'time x ref':>10}  spread over rounds")
    for name, width in settings:
        factors = {}
        mac_ratio = _macs(name, width) / ref_macs
        for mode in modes:
            step = _stepper(name, width, mode, splits)
            ratios, speeds, ref_speeds = [], [], []
            for _ in range(args.rounds):
                before = _images_per_s(refs[mode], args.seconds)
                speeds.append(_images_per_s(step, args.seconds))
                after = _images_per_s(refs[mode], args.seconds)
                ref_speeds.append(math.sqrt(before * after))
                ratios.append(ref_speeds[-1] / speeds[-1])
            factors[mode] = statistics.median(ratios)
            print(f"{name:10} {width:7g} {mac_ratio:10.2f} {mode:5} {statistics.median(speeds):8.1f} "
                  f"{statistics.median(ref_speeds):10.1f} {factors[mode]:10.2f}  "
                  f"[{min(ratios):.2f}, {max(ratios):.2f}] over {len(ratios)}", flush=True)
        rows.append((name, width, factors))
    print(f"\n## One mini seed (notebooks 01-06) at the largest ratio, minutes on 2 cores "
          f"(ResNet-18 w{REFERENCE[1]}: Zen 4 {REFERENCE_MINI_MINUTES_ZEN4[0]:g}-{REFERENCE_MINI_MINUTES_ZEN4[1]:g}, "
          f"AVX2 x{AVX2_SLOWDOWN:.2f})")
    print(f"{'backbone':10} {'width':>7} {'time x ref':>10} {'Zen 4 min':>12} {'AVX2 min':>12}  "
          f"fits {args.budget_min:g} min (upper bound)")
    # Per machine class: the largest width whose upper bound fits, with that bound in minutes.
    chosen: dict[str, dict[str, tuple[float, float]]] = {"Zen 4": {}, "AVX2": {}}
    for name, width, factors in rows:
        factor = max(factors.values())
        z_lo, z_hi, a_lo, a_hi = _seed_minutes(factor)
        fits = {"Zen 4": z_hi <= args.budget_min, "AVX2": a_hi <= args.budget_min}
        print(f"{name:10} {width:7g} {factor:10.2f} {z_lo:5.0f}-{z_hi:<6.0f} {a_lo:5.0f}-{a_hi:<6.0f}  "
              + ", ".join(f"{cls} {'yes' if ok else 'no'}" for cls, ok in fits.items()))
        for cls, bound in (("Zen 4", z_hi), ("AVX2", a_hi)):
            if fits[cls] and width > chosen[cls].get(name, (0.0, 0.0))[0]:
                chosen[cls][name] = (width, bound)
    print(f"# load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"total {time.perf_counter() - start:.0f} s")
    names = dict.fromkeys(name for name, _, _ in rows)
    print("chosen: " + "; ".join(
        f"{cls}: " + ", ".join(f"{n} {pick[n][0]:g} ({pick[n][1]:.0f} min)" if n in pick else f"{n} none fits"
                               for n in names) for cls, pick in chosen.items()))

if __name__ == "__main__":
    main()
