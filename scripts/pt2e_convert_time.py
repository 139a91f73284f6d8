"""Time of PT2E's prepare and convert (issue 14): torchao's functions as they are against pqd's.

pqd's ``quantize.prepare_qat``/``convert`` (engine pt2e) let torchao's conv-BN pattern passes look
only for the conv kinds the graph contains (``quantize_pt2e._conv_bn_patterns_of_present_convs``).
This script shows what that saves and that it changes nothing else: from the same model
(ResNet-18 at `--width`, random weights) it prepares twice (pqd; ``prepare_qat_pt2e`` as is, same
quantizer), trains both on the same random batches, converts each (pqd; ``convert_pt2e`` as is) and
compares prepared outputs, INT8 weights and INT8 logits. Prints the four times (pqd's first, so they
pay the process's warm-up), a cProfile summary of the plain convert with ``--profile``, and exits 1
if anything differs.

Usage::

    OMP_NUM_THREADS=1 python scripts/pt2e_convert_time.py [--width 0.25] [--profile]
"""

from __future__ import annotations

import argparse
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

    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    from pqd_lib import hardware, models
    from pqd_lib.stages import quantize as Q
    from pqd_lib.stages import quantize_pt2e as Q2

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = models.build("resnet18", 10, args.width)
    example = (torch.zeros(1, 3, 32, 32),)
    times = {}

    start = time.perf_counter()
    ours = Q.prepare_qat(model, reduce_range=True, example_inputs=example, engine="pt2e")
    times["pqd prepare_qat"] = time.perf_counter() - start
    start = time.perf_counter()
    quantizer = X86InductorQuantizer().set_global(Q2.quantization_config(reduce_range=True))
    plain = Q2._make_switchable(prepare_qat_pt2e(Q2.export_for_qat(model, example), quantizer))
    plain.meta[Q2._BN_FROZEN] = False
    times["torchao prepare_qat_pt2e as is"] = time.perf_counter() - start

    same_prepared = True
    for _ in range(3):  # both train their observers and BN statistics on the same batches
        x = torch.randn(8, 3, 32, 32)
        same_prepared &= torch.equal(ours.train()(x), plain.train()(x))
    for m in (ours, plain):
        Q.freeze_observers(m)
        Q.freeze_bn_stats(m)

    start = time.perf_counter()
    ours_int8 = Q.convert(ours)
    times["pqd convert"] = time.perf_counter() - start
    plain.eval()
    profile = cProfile.Profile()
    start = time.perf_counter()
    plain_int8 = profile.runcall(convert_pt2e, plain)
    times["torchao convert_pt2e as is (under cProfile)"] = time.perf_counter() - start
    Q2._drop_unused_state(plain_int8)

    a, b = Q.int8_weights(ours_int8), Q2.int8_weights(plain_int8)
    same_weights = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        same_logits = torch.equal(ours_int8(x), plain_int8(x))
    print(f"CPU {hardware.capability_class()}, 1 thread, ResNet-18 width {args.width}, torch {torch.__version__}")
    for name, seconds in times.items():
        print(f"{name:45s} {seconds:6.1f} s")
    print(f"prepared outputs identical: {same_prepared}; INT8 layers {len(a)}, weights identical: {same_weights}; "
          f"INT8 logits bit-identical: {same_logits}")
    if args.profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(12)
    return 0 if same_prepared and same_weights and same_logits else 1


if __name__ == "__main__":
    sys.exit(main())
