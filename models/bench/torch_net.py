#!/usr/bin/env python3
"""The GMMAS network of models/src/net.rs re-implemented in PyTorch (CPU), for `gmmas bench
--torch-python`: the same layers and the same operations, loading our `.safetensors` weights
(parsed here, without the safetensors package) by the variable names of tch's VarStore, with
the model config from the sidecar `.json`.

usage:
  torch_net.py check --weights W.safetensors --data D.safetensors
      runs the replica on the input a Rust test or the bench wrote (keys `input`, `present`,
      `seg`, `tasks`; optionally `labels`, `task_labels`, `loss` for the training objective)
      and prints one JSON line with the largest absolute differences.
  torch_net.py bench --weights W.safetensors [--threads 2] [--size 144,168,144]
      [--patch 64,64,64] [--batch 1] [--warmup 1] [--repeats 3] [--check D.safetensors]
      times whole-volume inference (eval, no_grad) and one training step (the objective of
      models/src/train.rs with TrainConfig::default(): Dice + CE + global Dice, weighted task
      CE, eq. (7) weighting, AdamW, gradient clipping at 5) and prints `TORCH_PY {json}`.
      With --serve it runs one of the two per stdin line (`infer` / `step`) and answers
      `TIME <s>`: `gmmas bench --torch-python` interleaves these runs with its own.
"""
import argparse
import json
import math
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MODALITIES = ("t1", "t1ce", "t2", "flair")
TASKS = ("grade_gbm", "idh_mutant", "codel_1p19q", "mgmt_methylated")
SEG_CLASSES = 4
SEG_TUMOUR = 4
BN_EPS = 1e-5  # tch's BatchNorm default, also used when folding BatchNorm into convolutions
BN_MOMENTUM = 0.1
LN_EPS = 1e-5

# safetensors dtype names -> numpy little-endian types
DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U8": "u1", "BOOL": "?",
}


def read_safetensors(path):
    """name -> tensor of a safetensors file: u64 LE header length, JSON header, raw LE data."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = np.dtype(DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        shape = [int(s) for s in info["shape"]]
        count = int(np.prod(shape)) if shape else 1
        if end - start != count * dtype.itemsize or base + end > len(raw):
            raise ValueError(f"{path}: tensor {name} has {end - start} bytes for shape {shape} {info['dtype']}")
        arr = np.frombuffer(raw, dtype=dtype, count=count, offset=base + start).reshape(shape)
        out[name] = torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))
    return out


def expected_shapes(cfg):
    """Every variable tch's VarStore creates for `cfg` (Net::new), with its shape."""
    s = {}
    ch, g = cfg["channels"], cfg["global_channels"]
    e = cfg["embed_dim"]
    bw = e if cfg["transformer"] else ch[3]

    def conv(p, i, o, k, bias):
        s[f"{p}.weight"] = [o, i, k, k, k]
        if bias:
            s[f"{p}.bias"] = [o]

    def bn(p, c):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            s[f"{p}.{leaf}"] = [c]

    def linear(p, i, o, bias=True):
        s[f"{p}.weight"] = [o, i]
        if bias:
            s[f"{p}.bias"] = [o]

    def ln(p, c):
        s[f"{p}.weight"] = [c]
        s[f"{p}.bias"] = [c]

    def conv_bn_act(p, c):
        conv(f"{p}.conv", c, c, 3, False)
        bn(f"{p}.bn", c)

    def res_block(p, c):
        conv_bn_act(f"{p}.a", c)
        conv(f"{p}.conv", c, c, 3, False)
        bn(f"{p}.bn", c)

    def stem(p, c):
        for m in MODALITIES:
            s[f"{p}.{m}.weight"] = [c, 1, 3, 3, 3]
        s[f"{p}.modality_logits"] = [len(MODALITIES)]

    def fusion(p, backbone, glob):
        c = backbone + glob
        hidden = max(c // 4, 4)
        linear(f"{p}.fc1", c, hidden)
        linear(f"{p}.fc2", hidden, c)
        conv(f"{p}.out", c, backbone, 1, True)

    stem("encoder.stem", ch[0])
    bn("encoder.stem_bn", ch[0])
    for l in range(1, 4):
        conv(f"encoder.down{l}", ch[l - 1], ch[l], 3, True)
    for l in range(4):
        for b in range(cfg["enc_blocks"][l]):
            res_block(f"encoder.level{l}.block{b}", ch[l])
    if cfg["transformer"]:
        grid = [p // 8 for p in cfg["patch"]]
        conv("transformer.proj", ch[3], e, 3, True)
        s["transformer.pos_embed"] = [1, e] + grid
        for i in range(cfg["layers"]):
            p = f"transformer.layer{i}"
            ln(f"{p}.ln1", e)
            linear(f"{p}.qkv", e, 3 * e, bias=False)
            linear(f"{p}.proj", e, e)
            ln(f"{p}.ln2", e)
            linear(f"{p}.fc1", e, e * cfg["mlp_ratio"])
            linear(f"{p}.fc2", e * cfg["mlp_ratio"], e)
        ln("transformer.norm", e)
    else:
        res_block("conv_bottleneck", ch[3])
    inputs = [ch[1], ch[2], bw]
    for l in range(3):
        conv(f"decoder.reduce{l}", inputs[l], ch[l], 1, True)
        conv_bn_act(f"decoder.conv{l}", ch[l])
    conv("decoder.seg_head", ch[0], SEG_CLASSES, 1, True)
    hidden = cfg["cls_hidden"]
    half = max(hidden // 2, 1)
    linear("classifier.summarize", 2 * (ch[3] + bw), hidden)
    for t in TASKS:
        linear(f"classifier.{t}.fc1", hidden, half)
        linear(f"classifier.{t}.fc2", half, 2)
    if cfg["global_branch"]:
        stem("global.stem", g[0])
        bn("global.stem_bn", g[0])
        for l in range(3):
            res_block(f"global.enc{l}", g[l])
        for l in range(1, 3):
            conv(f"global.down{l}", g[l - 1], g[l], 3, True)
        for l in range(2):
            conv(f"global.reduce{l}", g[l + 1], g[l], 1, True)
            conv_bn_act(f"global.dec{l}", g[l])
        conv("global.seg_head", g[0], SEG_CLASSES, 1, True)
        fusion("fuse_bottleneck", bw, g[2])
        fusion("fuse_decoder", ch[1], g[0])
    return s


def load_model(weights_path):
    """(config, name -> tensor) of `<name>.safetensors` and its `<name>.json` sidecar; the
    file must hold exactly the variables of the config with their shapes."""
    weights_path = Path(weights_path)
    card = json.loads(weights_path.with_suffix(".json").read_text())
    cfg = dict(card["config"])
    cfg.setdefault("decoder_dropout", 0.0)
    tensors = read_safetensors(weights_path)
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    wrong = sorted(k for k in want if k in tensors and list(tensors[k].shape) != want[k])
    if missing or extra or wrong:
        raise ValueError(f"{weights_path}: missing {missing[:5]}, unexpected {extra[:5]}, wrong shape {wrong[:5]}")
    for k, v in tensors.items():
        v = v.float().contiguous()
        # BatchNorm running statistics are buffers; everything else is trained.
        if not (k.endswith(".running_mean") or k.endswith(".running_var")):
            v.requires_grad_(True)
        tensors[k] = v
    return cfg, tensors


def lrelu(x):
    """LeakyReLU (slope 0.01), in place when no gradient is tracked (as net.rs)."""
    return F.leaky_relu(x, 0.01, inplace=not x.requires_grad)


def add(a, b):
    """a + b, in place on a when neither tracks a gradient (as net.rs)."""
    if a.requires_grad or b.requires_grad:
        return a + b
    return a.add_(b)


def dropout(x, p, on):
    if not on or p <= 0.0:
        return x
    return F.dropout(x, p, True)


def gap_gmp(x):
    return torch.cat([x.mean(dim=(2, 3, 4)), x.amax(dim=(2, 3, 4))], 1)


def per_mask(x, present, f):
    """f(x, mask) for the whole batch when every sample has the same mask, else per sample."""
    if all(m == present[0] for m in present):
        return f(x, present[0])
    return torch.cat([f(x[i:i + 1], m) for i, m in enumerate(present)], 0)


def crop_resample(feat, boxes, size):
    """Whole-volume features resampled to the region each box `[z0, y0, x0, z1, y1, x1]`
    (fractions of the volume) covers; outside reads zeros (net.rs crop_resample)."""
    b = len(boxes)
    theta = []
    for bx in boxes:
        bx = [np.float32(v) for v in bx]
        sz, sy, sx = bx[3] - bx[0], bx[4] - bx[1], bx[5] - bx[2]
        tz, ty, tx = bx[0] + bx[3] - 1, bx[1] + bx[4] - 1, bx[2] + bx[5] - 1
        theta += [sx, 0, 0, tx, 0, sy, 0, ty, 0, 0, sz, tz]
    theta = torch.tensor(np.array(theta, dtype=np.float32)).view(b, 3, 4)
    c = feat.shape[1]
    grid = F.affine_grid(theta, [b, c, *size], align_corners=False)
    src = feat if feat.shape[0] == b else feat.expand(b, -1, -1, -1, -1)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class GmmasNet:
    """Forward pass of net.rs on a dict of tensors named as tch's VarStore names them.
    `train`: BatchNorm on batch statistics (updating the running ones) and dropout on;
    otherwise BatchNorm is folded into the preceding convolution, as net.rs does."""

    def __init__(self, cfg, w):
        self.cfg = cfg
        self.w = w

    def parameters(self):
        return [v for v in self.w.values() if v.requires_grad]

    # -- building blocks -------------------------------------------------------------------
    def conv(self, p, x, stride=1):
        wt = self.w[f"{p}.weight"]
        return F.conv3d(x, wt, self.w.get(f"{p}.bias"), stride, wt.shape[-1] // 2)

    def linear(self, p, x):
        return F.linear(x, self.w[f"{p}.weight"], self.w.get(f"{p}.bias"))

    def layer_norm(self, p, x):
        return F.layer_norm(x, (x.shape[-1],), self.w[f"{p}.weight"], self.w[f"{p}.bias"], LN_EPS)

    def conv_bn(self, x, kernel, bn, train):
        w = self.w
        gamma, beta = w[f"{bn}.weight"], w[f"{bn}.bias"]
        mean, var = w[f"{bn}.running_mean"], w[f"{bn}.running_var"]
        if train:
            y = F.conv3d(x, kernel, None, 1, 1)
            return F.batch_norm(y, mean, var, gamma, beta, True, BN_MOMENTUM, BN_EPS)
        scale = gamma / torch.sqrt(var + BN_EPS)
        bias = beta - mean * scale
        return F.conv3d(x, kernel * scale.view(-1, 1, 1, 1, 1), bias, 1, 1)

    def conv_bn_act(self, p, x, train):
        return lrelu(self.conv_bn(x, self.w[f"{p}.conv.weight"], f"{p}.bn", train))

    def res_block(self, p, x, train):
        y = self.conv_bn_act(f"{p}.a", x, train)
        y = self.conv_bn(y, self.w[f"{p}.conv.weight"], f"{p}.bn", train)
        return lrelu(add(y, x))

    def stem_weights(self, p, mask):
        m = torch.tensor([1.0 if v else 0.0 for v in mask])
        a = F.softplus(self.w[f"{p}.modality_logits"]) * m
        return a / a.sum()

    def fused_kernel(self, p, mask):
        a = self.stem_weights(p, mask)
        return torch.cat([self.w[f"{p}.{m}.weight"] * a[i] for i, m in enumerate(MODALITIES)], 1)

    def stem(self, p, bn, x, present, train):
        """The per-modality stems fused by eq. (1), BatchNorm, LeakyReLU."""
        if train:
            y = per_mask(x, present, lambda xs, m: F.conv3d(xs, self.fused_kernel(p, m), None, 1, 1))
            w = self.w
            y = F.batch_norm(y, w[f"{bn}.running_mean"], w[f"{bn}.running_var"], w[f"{bn}.weight"],
                             w[f"{bn}.bias"], True, BN_MOMENTUM, BN_EPS)
        else:
            y = per_mask(x, present, lambda xs, m: self.conv_bn(xs, self.fused_kernel(p, m), bn, False))
        return lrelu(y)

    def fusion(self, p, backbone, glob):
        """Channel-attention fusion: concat, GAP + GMP through a shared MLP, sigmoid, 1x1x1."""
        cat = torch.cat([backbone, glob], 1)
        b, c = cat.shape[0], cat.shape[1]

        def mlp(v):
            return self.linear(f"{p}.fc2", F.relu(self.linear(f"{p}.fc1", v)))

        att = torch.sigmoid(mlp(cat.mean(dim=(2, 3, 4))) + mlp(cat.amax(dim=(2, 3, 4)))).view(b, c, 1, 1, 1)
        return self.conv(f"{p}.out", cat * att)

    # -- the parts ---------------------------------------------------------------------------
    def encode(self, x, present, train):
        stem = self.stem("encoder.stem", "encoder.stem_bn", x, present, train)
        h = stem
        feats = []
        for l in range(4):
            if l > 0:
                h = self.conv(f"encoder.down{l}", feats[l - 1], stride=2)
            for b in range(self.cfg["enc_blocks"][l]):
                h = self.res_block(f"encoder.level{l}.block{b}", h, train)
            feats.append(h)
        return feats

    def transformer_layer(self, p, x, drop):
        b, n, e = x.shape
        h = self.cfg["heads"]
        qkv = self.linear(f"{p}.qkv", self.layer_norm(f"{p}.ln1", x)).view(b, n, 3, h, e // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = F.scaled_dot_product_attention(q, k, v)
        del q, k, v, qkv
        att = att.transpose(1, 2).reshape(b, n, e)
        x = x + self.linear(f"{p}.proj", att)
        m = F.gelu(self.linear(f"{p}.fc1", self.layer_norm(f"{p}.ln2", x)))
        p_drop = self.cfg["dropout"]
        m = dropout(m, p_drop, drop)
        m = dropout(self.linear(f"{p}.fc2", m), p_drop, drop)
        return add(x, m)

    def transformer(self, x, drop):
        f = self.conv("transformer.proj", x)
        b, e, d, h, w = f.shape
        pos = self.w["transformer.pos_embed"]
        if tuple(pos.shape[2:]) != (d, h, w):
            pos = F.interpolate(pos, size=(d, h, w), mode="trilinear", align_corners=False)
        t = add(f, pos).flatten(2, 4).transpose(1, 2)
        for i in range(self.cfg["layers"]):
            t = self.transformer_layer(f"transformer.layer{i}", t, drop)
        return self.layer_norm("transformer.norm", t).transpose(1, 2).reshape(b, e, d, h, w)

    def classifier(self, enc, bott, drop):
        p_drop = self.cfg["dropout"]
        feats = torch.cat([gap_gmp(enc), gap_gmp(bott)], 1)
        s = dropout(F.leaky_relu(self.linear("classifier.summarize", feats)), p_drop, drop)
        logits = [
            self.linear(f"classifier.{t}.fc2", dropout(F.leaky_relu(self.linear(f"classifier.{t}.fc1", s)), p_drop, drop))
            for t in TASKS
        ]
        return torch.stack(logits, 1)

    def global_input(self, volume):
        return F.adaptive_avg_pool3d(volume, self.cfg["global_size"])

    def global_features(self, low, present, train):
        """(bottleneck, last decoder features, segmentation logits) of the global U-Net."""
        h = self.stem("global.stem", "global.stem_bn", low, present, train)
        skips = []
        for l in range(3):
            if l > 0:
                h = self.conv(f"global.down{l}", h, stride=2)
            h = self.res_block(f"global.enc{l}", h, train)
            skips.append(h)
        bottleneck = h
        for l in (1, 0):
            h = self.conv(f"global.reduce{l}", h)
            h = F.interpolate(h, size=tuple(skips[l].shape[2:]), mode="trilinear", align_corners=False)
            h = add(h, skips[l])
            h = self.conv_bn_act(f"global.dec{l}", h, train)
        return bottleneck, h, self.conv("global.seg_head", h)

    def head(self, feats, ctx, train, mc=False):
        """Bottleneck, fusion, classifier, decoder: (seg logits, task logits, global seg)."""
        drop = train or mc
        if self.cfg["transformer"]:
            h = self.transformer(feats[3], drop)
        else:
            h = dropout(self.res_block("conv_bottleneck", feats[3], train), self.cfg["dropout"], drop)
        if ctx is not None:
            (g_bott, _, _), boxes = ctx
            h = self.fusion("fuse_bottleneck", h, crop_resample(g_bott, boxes, tuple(h.shape[2:])))
        tasks = self.classifier(feats[3], h, drop)
        for l in (2, 1, 0):
            skip = feats[l]
            h = self.conv(f"decoder.reduce{l}", h)
            h = F.interpolate(h, size=tuple(skip.shape[2:]), mode="trilinear", align_corners=False)
            h = add(h, skip)
            h = self.conv_bn_act(f"decoder.conv{l}", h, train)
            if self.cfg["decoder_dropout"] > 0.0:
                h = dropout(h, self.cfg["decoder_dropout"], drop)
            if l == 1 and ctx is not None:
                (_, g_dec, _), boxes = ctx
                h = self.fusion("fuse_decoder", h, crop_resample(g_dec, boxes, tuple(h.shape[2:])))
        seg = self.conv("decoder.seg_head", h)
        global_seg = ctx[0][2] if ctx is not None else None
        return seg, tasks, global_seg

    def forward(self, x, present, train, mc=False):
        """Net::forward with no explicit global context: each input is its own whole volume."""
        if len(present) == 1:
            present = present * x.shape[0]
        feats = self.encode(x, present, train)
        ctx = None
        if self.cfg["global_branch"]:
            g = self.global_features(self.global_input(x), present, train)
            ctx = (g, [[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]] * x.shape[0])
        return self.head(feats, ctx, train, mc)


# -- the training objective of models/src/train.rs (TrainConfig::default()) -------------------
def one_hot_channels(target, classes):
    nd = target.dim()
    return F.one_hot(target, classes).permute(0, nd, *range(1, nd)).float()


def partial_dice_loss(logits, target, eps):
    """partial::dice_loss: eq. (4) Dice, with whole-tumour and ignored voxels handled."""
    c = logits.shape[1]
    probs = logits.softmax(1)
    known = (target >= 0) & (target <= c - 1)
    tumour = target == SEG_TUMOUR
    safe = target.long().clamp(0, c - 1)
    known_f = known.unsqueeze(1).float()
    onehot = one_hot_channels(safe, c) * known_f
    bg_mask = (known | tumour).unsqueeze(1).float()
    shape = list(known_f.shape)
    shape[1] = c - 1
    mask = torch.cat([bg_mask, known_f.expand(shape)], 1)
    p = probs * mask
    dims = [0] + list(range(2, logits.dim()))
    inter = (p * onehot).sum(dims)
    denom = p.sum(dims) + onehot.sum(dims) + eps
    return 1.0 - (inter * 2.0 / denom).mean()


def partial_cross_entropy(logits, target):
    """partial::cross_entropy: voxel CE (-log(1 - p0) at whole-tumour voxels)."""
    c = logits.shape[1]
    known = (target >= 0) & (target <= c - 1)
    tumour = target == SEG_TUMOUR
    logp = logits.log_softmax(1)
    safe = target.long().clamp(0, c - 1)
    picked = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    log_tumour = logp.narrow(1, 1, c - 1).logsumexp(1)
    zero = torch.zeros_like(picked)
    known_f, tumour_f = known.float(), tumour.float()
    per_voxel = torch.where(known, picked, zero) * known_f + torch.where(tumour, log_tumour, zero) * tumour_f
    count = (known_f + tumour_f).sum().clamp_min(1.0)
    return -per_voxel.sum() / count


def resample_labels(target, size):
    if tuple(target.shape[1:]) == tuple(size):
        return target
    return F.interpolate(target.unsqueeze(1).float(), size=tuple(size), mode="nearest").squeeze(1).long()


def soft_weighted_cross_entropy(logits, soft, weights):
    logp = logits.log_softmax(-1)
    q = torch.stack([(1.0 - soft) * weights[0], soft * weights[1]], 1)
    return -(logp * q).sum(1).mean()


class Trainer:
    """Trainer::step in supervised mode with TrainConfig::default(): AdamW (lr 1e-3, weight
    decay 1e-5), gradient norm clipped at 5, a second AdamW (lr 1e-2, no decay) on the five
    log sigmas of eq. (7)."""

    def __init__(self, net, lr=1e-3, weight_decay=1e-5, sigma_lr=1e-2, grad_clip=5.0, seg_ce_weight=1.0,
                 global_seg_weight=0.5, dice_eps=1e-5):
        self.net = net
        self.log_sigma = torch.zeros(len(TASKS) + 1, requires_grad=True)
        self.params = net.parameters()
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
        self.mtl_opt = torch.optim.AdamW([self.log_sigma], lr=sigma_lr, betas=(0.9, 0.999), eps=1e-8,
                                         weight_decay=0.0)
        self.grad_clip = grad_clip
        self.seg_ce_weight = seg_ce_weight
        self.global_seg_weight = global_seg_weight
        self.dice_eps = dice_eps
        self.class_weights = [[1.0, 1.0]] * len(TASKS)

    def objective(self, image, seg, task_labels, present, train=True):
        """(total, parts) of eq. (7); `task_labels[i][t]` is True / False / None (no label)."""
        net = self.net
        b = seg.shape[0]
        ctx, global_target = None, None
        if net.cfg["global_branch"]:
            g = net.global_features(net.global_input(image), present, train)
            global_target = resample_labels(seg, net.cfg["global_size"])
            ctx = (g, [[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]] * b)
        feats = net.encode(image, present, train)
        out_seg, out_tasks, global_seg = net.head(feats, ctx, train)
        dice = partial_dice_loss(out_seg, seg, self.dice_eps)
        terms = [dice]
        if self.seg_ce_weight > 0:
            terms.append(partial_cross_entropy(out_seg, seg) * self.seg_ce_weight)
        if global_seg is not None:
            d = partial_dice_loss(global_seg, global_target, self.dice_eps)
            if self.global_seg_weight > 0:
                terms.append(d * self.global_seg_weight)
        seg_loss = torch.stack(terms, 0).sum()
        losses = [seg_loss]
        for t in range(len(TASKS)):
            rows = [(i, float(r[t])) for i, r in enumerate(task_labels) if r[t] is not None]
            if not rows:
                losses.append(None)
                continue
            idx = torch.tensor([i for i, _ in rows], dtype=torch.long)
            targets = torch.tensor([y for _, y in rows], dtype=torch.float32)
            logits = out_tasks.select(1, t).index_select(0, idx)
            losses.append(soft_weighted_cross_entropy(logits, targets, self.class_weights[t]))
        total = None
        for i, l in enumerate(losses):
            if l is None:
                continue
            s = self.log_sigma[i]
            term = torch.exp(s * -2.0) * 0.5 * l + s
            total = term if total is None else total + term
        parts = {"seg": seg_loss.item(), "dice": dice.item(), "tasks": [None if l is None else l.item() for l in losses[1:]]}
        return total, parts

    def step(self, image, seg, task_labels, present):
        self.opt.zero_grad()
        self.mtl_opt.zero_grad()
        total, parts = self.objective(image, seg, task_labels, present, True)
        value = total.item()
        if not math.isfinite(value):
            raise RuntimeError("non-finite loss")
        total.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        self.mtl_opt.step()
        return value


# -- commands ---------------------------------------------------------------------------------
def masks_of(present):
    """A [B, 4] 0/1 tensor -> list of per-sample boolean masks."""
    return [[bool(v > 0.5) for v in row] for row in present.tolist()]


def labels_of(task_labels):
    """A [B, 4] tensor of 1 / 0 / -1 (no label) -> list of rows of True / False / None."""
    return [[None if v < 0 else bool(v > 0.5) for v in row] for row in task_labels.tolist()]


def check(weights, data_path, echo=True):
    """Largest absolute differences between the replica and the outputs stored in data."""
    cfg, w = load_model(weights)
    net = GmmasNet(cfg, w)
    data = read_safetensors(data_path)
    x = data["input"].float()
    present = masks_of(data["present"])
    with torch.no_grad():
        seg, tasks, _ = net.forward(x, present, train=False)
    res = {
        "seg_max_abs_diff": (seg - data["seg"]).abs().max().item(),
        "tasks_max_abs_diff": (tasks - data["tasks"]).abs().max().item(),
        "seg_max_abs": data["seg"].abs().max().item(),
        "seg_argmax_agreement": (seg.argmax(1) == data["seg"].argmax(1)).float().mean().item(),
    }
    if "loss" in data:
        # The training objective on a fresh copy of the weights (train mode; the reference
        # was computed with dropout 0 so it is deterministic), then each later step's loss.
        cfg, w = load_model(weights)
        trainer = Trainer(GmmasNet(cfg, w))
        labels = data["labels"].long()
        task_labels = labels_of(data["task_labels"])
        want = data["loss"].double().tolist()
        got = [trainer.step(x, labels, task_labels, present) for _ in range(len(want))]
        res["loss"] = got
        res["loss_want"] = want
        res["loss_max_abs_diff"] = max(abs(a - b) for a, b in zip(got, want))
    if echo:
        print(json.dumps(res))
    return res


def parse_triple(s):
    v = [int(p) for p in s.split(",")]
    if len(v) != 3:
        raise argparse.ArgumentTypeError(f"{s!r}: expected D,H,W")
    return v


def timed(fn, warmup, repeats):
    times = []
    for i in range(warmup + repeats):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        if i >= warmup:
            times.append(dt)
    return times


def workloads(args):
    """The two timed things, each on its own copy of the weights: one whole-volume inference
    (eval, no_grad) of a seeded [1, 4, size] input, and one training step on a seeded batch
    [batch, 4, patch] with task labels (True, False, none, True), as `gmmas bench` does in tch."""
    cfg, w = load_model(args.weights)
    net = GmmasNet(cfg, w)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, *args.size, generator=gen)

    def infer():
        with torch.no_grad():
            net.forward(x, [[True] * 4], train=False)

    cfg, w = load_model(args.weights)
    trainer = Trainer(GmmasNet(cfg, w))
    patch = args.patch or cfg["patch"]
    image = torch.randn(args.batch, 4, *patch, generator=gen)
    seg = torch.randint(0, 4, (args.batch, *patch), generator=gen)
    task_labels = [[True, False, None, True]] * args.batch
    present = [[True] * 4] * args.batch

    def step():
        trainer.step(image, seg, task_labels, present)

    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "infer_input": [1, 4, *args.size], "step_input": [args.batch, 4, *patch]}
    return {"infer": infer, "step": step}, meta


def bench(args):
    """Times both workloads here: warm-up, then `repeats` runs; prints `TORCH_PY {json}`."""
    torch.set_num_threads(args.threads)
    result = {}
    if args.check:
        result["check"] = check(args.weights, args.check)
    work, meta = workloads(args)
    result.update(meta)
    result["infer_s"] = timed(work["infer"], args.warmup, args.repeats)
    result["step_s"] = timed(work["step"], args.warmup, args.repeats)
    result["infer_median_s"] = statistics.median(result["infer_s"])
    result["step_median_s"] = statistics.median(result["step_s"])
    result["warmup"] = args.warmup
    print("TORCH_PY " + json.dumps(result), flush=True)


def serve(args):
    """Runs one workload per line read from stdin (`infer` or `step`; `quit` or end of input
    stops) and answers `TIME <seconds>`, so that the caller can interleave its own runs with
    these ones and both see the same machine. Prints `CHECK {json}` (with --check) and
    `READY {json}` first."""
    torch.set_num_threads(args.threads)
    if args.check:
        print("CHECK " + json.dumps(check(args.weights, args.check, echo=False)), flush=True)
    work, meta = workloads(args)
    print("READY " + json.dumps(meta), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd in ("", "quit"):
            break
        if cmd not in work:
            print(f"ERROR unknown command {cmd!r}", flush=True)
            continue
        t = time.perf_counter()
        work[cmd]()
        print(f"TIME {time.perf_counter() - t:.6f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="compare the replica with outputs the Rust side wrote")
    c.add_argument("--weights", required=True)
    c.add_argument("--data", required=True)
    b = sub.add_parser("bench", help="time inference and one training step")
    b.add_argument("--weights", required=True)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--size", type=parse_triple, default=[144, 168, 144], help="inference input D,H,W")
    b.add_argument("--patch", type=parse_triple, default=None, help="training patch D,H,W (default: the model's)")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--check", default=None, help="also run `check` on this data file first")
    b.add_argument("--serve", action="store_true",
                   help="time one run per stdin line (`infer` / `step`) instead, answering `TIME <s>`")
    args = ap.parse_args()
    if args.cmd == "check":
        check(args.weights, args.data)
    elif args.serve:
        serve(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
