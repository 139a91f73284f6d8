"""Time of PT2E's convert (issue 14): torchao's ``convert_pt2e`` as is against pqd's ``quantize.convert``.

pqd's convert limits torchao's QAT conv-BN fold to the conv kinds the graph contains
(``quantize_pt2e._fold_only_present_convs``); this script shows what that saves and that it changes
nothing else: both convert the same QAT-prepared model (ResNet-18 at `--width`, random weights,
observers fed a few random batches), then it compares their INT8 weights and logits. Prints both
times, a cProfile summary of the plain convert with ``--profile``, and exits 1 if the graphs differ.

Usage::

    OMP_NUM_THREADS=1 python scripts/pt2e_convert_time.py [--width 0.25] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-18 width (mini: 0.25)")
    parser.add_argument("--profile", action="store_true", help="print the plain convert's top cProfile entries")
    args = parser.parse_args(argv)

    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from pqd_lib import hardware, models
    from pqd_lib.stages import quantize as Q
    from pqd_lib.stages import quantize_pt2e as Q2

    torch.set_num_threads(1)
    torch.manual_seed(0)
    prepared = Q.prepare_qat(models.build("resnet18", 10, args.width), reduce_range=True,
                             example_inputs=(torch.zeros(1, 3, 32, 32),), engine="pt2e")
    for _ in range(3):
        prepared(torch.randn(8, 3, 32, 32))  # gives the observers ranges
    Q.freeze_observers(prepared)
    Q.freeze_bn_stats(prepared)

    start = time.perf_counter()
    fast = Q.convert(prepared)
    fast_s = time.perf_counter() - start
    twin = copy.deepcopy(prepared).cpu()
    twin.eval()
    profile = cProfile.Profile()
    start = time.perf_counter()
    plain = profile.runcall(convert_pt2e, twin)
    plain_s = time.perf_counter() - start
    Q2._drop_unused_state(plain)

    a, b = Q.int8_weights(fast), Q2.int8_weights(plain)
    same_weights = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        same_logits = torch.equal(fast(x), plain(x))
    print(f"CPU {hardware.capability_class()}, 1 thread, ResNet-18 width {args.width}, torch {torch.__version__}")
    print(f"pqd quantize.convert (fold limited to present conv kinds): {fast_s:.1f} s (first convert of the process)")
    print(f"torchao convert_pt2e as is:                                {plain_s:.1f} s (under cProfile)")
    print(f"INT8 layers {len(a)}; weights identical: {same_weights}; logits bit-identical: {same_logits}")
    if args.profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(12)
    return 0 if same_weights and same_logits else 1


if __name__ == "__main__":
    sys.exit(main())
