"""Does this CPU's oneDNN get the NHWC weight gradient of a stride-2 1x1 convolution right? (oneDNN issue #6035)

pqd refuses ``train.channels_last`` where a backbone has such a convolution with fewer than
``pqd_lib.backbones.ONEDNN_SAFE_INPUT_CHANNELS`` (16) inputs. This script shows why on your machine: for
each input channel count it runs ``Conv2d(c, 2c, 1, stride=2)`` forward and backward (batch 32, 32x32) in
a fresh process, in NHWC, and compares the weight gradient with the NCHW one. Each line says ``ok``
(relative error < 1e-4), ``WRONG`` (the error) or ``CRASH`` (the exit code; a hang counts as one).

    python scripts/nhwc_pointwise_check.py               # 1..16 input channels, 1 thread
    python scripts/nhwc_pointwise_check.py --threads 2

Measured on the AVX2-only AMD EPYC of the records (torch 2.14.1): 2-7 inputs crash (SIGSEGV, SIGABRT or SIGBUS; a
hang at 2 threads), 1 and 8-16 are ok. oneDNN's report shows AVX-512 machines returning wrong
gradients below 16.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import sys, torch
c = int(sys.argv[1])
torch.manual_seed(0)
conv = torch.nn.Conv2d(c, 2 * c, 1, stride=2, bias=False)
x = torch.randn(32, c, 32, 32)
conv(x).square().mean().backward()
reference, conv.weight.grad = conv.weight.grad.clone(), None
conv = conv.to(memory_format=torch.channels_last)
conv(x.contiguous(memory_format=torch.channels_last)).square().mean().backward()
print(float((conv.weight.grad - reference).abs().max() / reference.abs().max()))
"""


def main() -> int:
    """Print one line per input channel count; exit 1 if any count crashed or was wrong."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-channels", type=int, default=16)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    bad = 0
    for c in range(1, args.max_channels + 1):
        try:
            run = subprocess.run([sys.executable, "-c", CHILD, str(c)], env=env, capture_output=True, text=True,
                                 timeout=60)
            code, out = run.returncode, run.stdout.strip()
        except subprocess.TimeoutExpired:
            code, out = "hang", ""
        if code != 0:
            print(f"{c:3d} inputs: CRASH (exit {code})")
            bad += 1
        elif float(out) >= 1e-4:
            print(f"{c:3d} inputs: WRONG (relative error {float(out):.3g})")
            bad += 1
        else:
            print(f"{c:3d} inputs: ok (relative error {float(out):.1e})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
