//! The GMMAS network: modality stems fused by eq. (1), residual encoder, transformer
//! bottleneck, segmentation decoder, global U-Net branch with channel-attention fusion, classifier.
//!
//! Tensors are `[batch, channel, z, y, x]`. Every forward takes `train` (BatchNorm uses batch
//! statistics and updates its running averages) and `mc` (dropout on while BatchNorm stays in
//! eval mode, for MC-Dropout); dropout is active when either is set.

use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

use crate::ModelError;
use crate::config::{BACKBONE_STRIDE, MODALITIES, MODALITY_NAMES, ModelConfig, SEG_CLASSES, TASK_NAMES};

/// LeakyReLU, in place when no gradient is tracked.
fn lrelu(mut x: Tensor) -> Tensor {
    if x.requires_grad() {
        x.leaky_relu()
    } else {
        let _ = x.leaky_relu_();
        x
    }
}

/// `a + b`, in place on `a` when no gradient is tracked.
fn add(mut a: Tensor, b: &Tensor) -> Tensor {
    if a.requires_grad() || b.requires_grad() {
        a + b
    } else {
        let _ = a.g_add_(b);
        a
    }
}

fn conv(p: nn::Path, i: usize, o: usize, k: i64, stride: i64, bias: bool) -> nn::Conv3D {
    let cfg = nn::ConvConfig { stride, padding: k / 2, bias, ..Default::default() };
    nn::conv3d(p, i as i64, o as i64, k, cfg)
}

fn bn(p: nn::Path, c: usize) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig { ws_init: nn::Init::Const(1.0), ..Default::default() };
    nn::batch_norm3d(p, c as i64, cfg)
}

fn linear(p: nn::Path, i: usize, o: usize, bias: bool) -> nn::Linear {
    let cfg = nn::LinearConfig { bias, ..Default::default() };
    nn::linear(p, i as i64, o as i64, cfg)
}

fn spatial(x: &Tensor) -> [i64; 3] {
    let s = x.size();
    [s[2], s[3], s[4]]
}

thread_local! {
    /// `(seed, calls so far)` while [`with_seeded_dropout`] runs on this thread.
    static SEEDED_DROPOUT: std::cell::Cell<Option<(u64, u64)>> = const { std::cell::Cell::new(None) };
    /// Set while [`with_case_norm`] runs on this thread.
    static CASE_NORM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every BatchNorm of this thread's evaluation-mode forward passes normalising
/// by the statistics of the tensor it sees (the case's own) instead of the running averages
/// learnt in training; the running averages are neither used nor changed. Training-mode
/// passes are unaffected. With `on` false, `f` runs as it is.
pub fn with_case_norm<T>(on: bool, f: impl FnOnce() -> T) -> T {
    let prev = CASE_NORM.with(|c| c.replace(on));
    let out = f();
    CASE_NORM.with(|c| c.set(prev));
    out
}

/// Runs `f` with every dropout of this thread's forward passes drawing its mask from a
/// counter-based hash of `(seed, call number, element index)` instead of libtorch's global
/// generator, so MC-Dropout passes are reproducible for a seed whatever other threads draw
/// (libtorch has one CPU generator per process). The masks have the same law as libtorch's
/// (keep with probability `1 - p`, scale by `1 / (1 - p)`).
pub fn with_seeded_dropout<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    let prev = SEEDED_DROPOUT.with(|c| c.replace(Some((seed, 0))));
    let out = f();
    SEEDED_DROPOUT.with(|c| c.set(prev));
    out
}

/// splitmix64 finaliser.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform `[0, 1)` values of `shape` from a 32-bit integer hash of the element index keyed
/// by `key`; int64 arithmetic that never overflows (32-bit values times 31-bit constants).
fn hashed_uniform(shape: &[i64], key: u64, device: tch::Device) -> Tensor {
    const M32: i64 = 0xFFFF_FFFF;
    let n: i64 = shape.iter().product();
    let round = |h: Tensor, k: i64, mul: i64| -> Tensor {
        let h = h.bitwise_xor(k).bitwise_and(M32);
        let h = h.bitwise_xor_tensor(&h.bitwise_right_shift_tensor_scalar(16));
        let h = (h * mul).bitwise_and(M32);
        h.bitwise_xor_tensor(&h.bitwise_right_shift_tensor_scalar(15))
    };
    let idx = Tensor::arange(n, (Kind::Int64, device));
    let mut h = round(idx, (key & 0xFFFF_FFFF) as i64, 0x7FEB_352D);
    h = round(h, (key >> 32) as i64, 0x68E3_1DA5);
    h = round(h, 0x2545_F491, 0x4F6C_DD1D);
    (h.to_kind(Kind::Double) / 4_294_967_296.0).to_kind(Kind::Float).view(shape)
}

/// Dropout with probability `p` when `on` (libtorch's, or the seeded one inside
/// [`with_seeded_dropout`]).
fn dropout(x: &Tensor, p: f64, on: bool) -> Tensor {
    if !on || p <= 0.0 {
        return x.shallow_clone();
    }
    let seeded = SEEDED_DROPOUT.with(|c| {
        let v = c.get();
        if let Some((seed, n)) = v {
            c.set(Some((seed, n + 1)));
        }
        v
    });
    match seeded {
        None => x.dropout(p, true),
        Some((seed, n)) => {
            let key = mix64(seed ^ mix64(n.wrapping_add(0x9E37_79B9_7F4A_7C15)));
            let keep = hashed_uniform(&x.size(), key, x.device()).ge(p).to_kind(x.kind());
            x * keep / (1.0 - p)
        }
    }
}

/// Concatenated global average and global max pooling over the spatial axes: `[B, 2C]`.
fn gap_gmp(x: &Tensor) -> Tensor {
    let avg = x.mean_dim(&[2i64, 3, 4][..], false, Kind::Float);
    let max = x.amax(&[2i64, 3, 4][..], false);
    Tensor::cat(&[avg, max], 1)
}

/// BatchNorm epsilon (tch default, used when folding BatchNorm into convolutions).
const BN_EPS: f64 = 1e-5;

/// `bn(conv(x))` for a bias-free stride-1 convolution with kernel `w` and padding `pad`.
/// With `train` false the BatchNorm is folded into the kernel and a bias, which saves a
/// full-size intermediate tensor and a pass over it at inference.
fn conv_bn(x: &Tensor, w: &Tensor, pad: i64, bn: &nn::BatchNorm, train: bool) -> Tensor {
    if train {
        let y = x.conv3d::<Tensor>(w, None, [1, 1, 1], [pad; 3], [1, 1, 1], 1);
        return bn.forward_t(&y, true);
    }
    let (gamma, beta) = match (&bn.ws, &bn.bs) {
        (Some(g), Some(b)) => (g.shallow_clone(), b.shallow_clone()),
        _ => (bn.running_mean.ones_like(), bn.running_mean.zeros_like()),
    };
    if CASE_NORM.with(std::cell::Cell::get) {
        let y = x.conv3d::<Tensor>(w, None, [1, 1, 1], [pad; 3], [1, 1, 1], 1);
        return Tensor::batch_norm(
            &y,
            Some(&gamma),
            Some(&beta),
            None::<&Tensor>,
            None::<&Tensor>,
            true,
            0.0,
            BN_EPS,
            false,
        );
    }
    let scale = gamma / (&bn.running_var + BN_EPS).sqrt();
    let bias = beta - &bn.running_mean * &scale;
    let w = w * scale.view([-1, 1, 1, 1, 1]);
    x.conv3d(&w, Some(&bias), [1, 1, 1], [pad; 3], [1, 1, 1], 1)
}

/// 3x3x3 convolution (no bias) + BatchNorm + LeakyReLU.
#[derive(Debug)]
struct ConvBnAct {
    conv: nn::Conv3D,
    bn: nn::BatchNorm,
}

impl ConvBnAct {
    fn new(p: nn::Path, i: usize, o: usize) -> Self {
        Self { conv: conv(&p / "conv", i, o, 3, 1, false), bn: bn(&p / "bn", o) }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        lrelu(conv_bn(x, &self.conv.ws, 1, &self.bn, train))
    }
}

/// Two 3x3x3 conv + BatchNorm layers with LeakyReLU and an identity shortcut.
#[derive(Debug)]
struct ResBlock {
    a: ConvBnAct,
    conv: nn::Conv3D,
    bn: nn::BatchNorm,
}

impl ResBlock {
    fn new(p: nn::Path, c: usize) -> Self {
        Self { a: ConvBnAct::new(&p / "a", c, c), conv: conv(&p / "conv", c, c, 3, 1, false), bn: bn(&p / "bn", c) }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = self.a.forward(x, train);
        y = conv_bn(&y, &self.conv.ws, 1, &self.bn, train);
        lrelu(add(y, x))
    }
}

/// Per-modality 3x3x3 stems fused by the learnable weighted average of eq. (1).
///
/// The stems are linear, so the weighted average of the four feature maps equals one
/// convolution whose kernel for modality `m` is `a_m * W_m`, with
/// `a_m = softplus(theta_m) / sum_{present} softplus(theta)` (zero for absent modalities).
/// That fused kernel is what is applied; the result is identical to eq. (1).
#[derive(Debug)]
pub struct ModalityStem {
    kernels: Vec<Tensor>,
    logits: Tensor,
}

impl ModalityStem {
    fn new(p: nn::Path, c: usize) -> Self {
        let kernels = MODALITY_NAMES
            .iter()
            .map(|m| (&p / *m).var("weight", &[c as i64, 1, 3, 3, 3], nn::Init::Const(0.0)))
            .collect();
        let logits = p.var("modality_logits", &[MODALITIES as i64], nn::Init::Const(0.5413));
        Self { kernels, logits }
    }

    /// Normalized fusion weights `a_m` for a presence mask (zeros for absent modalities).
    pub fn weights(&self, present: [bool; MODALITIES]) -> Tensor {
        let mask: Vec<f32> = present.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_slice(&mask).to_device(self.logits.device());
        let w = self.logits.softplus() * mask;
        let total = w.sum(Kind::Float);
        w / total
    }

    fn fused_kernel(&self, present: [bool; MODALITIES]) -> Tensor {
        let a = self.weights(present);
        let parts: Vec<Tensor> = self.kernels.iter().enumerate().map(|(m, k)| k * a.get(m as i64)).collect();
        Tensor::cat(&parts, 1)
    }

    /// Fused stem followed by BatchNorm and LeakyReLU.
    fn forward(&self, x: &Tensor, present: &[[bool; MODALITIES]], bn: &nn::BatchNorm, train: bool) -> Tensor {
        lrelu(self.forward_bn(x, present, bn, train))
    }

    fn forward_bn(&self, x: &Tensor, present: &[[bool; MODALITIES]], bn: &nn::BatchNorm, train: bool) -> Tensor {
        if train {
            return bn.forward_t(&self.forward_linear(x, present), true);
        }
        per_mask(x, present, |x, mask| conv_bn(x, &self.fused_kernel(mask), 1, bn, false))
    }

    /// The fused eq. (1) feature map, before normalisation.
    fn forward_linear(&self, x: &Tensor, present: &[[bool; MODALITIES]]) -> Tensor {
        per_mask(x, present, |x, mask| {
            x.conv3d::<Tensor>(&self.fused_kernel(mask), None, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1)
        })
    }
}

/// Applies `f` with each sample's modality mask: the whole batch at once when every sample has
/// the same mask, else sample by sample.
fn per_mask(x: &Tensor, present: &[[bool; MODALITIES]], f: impl Fn(&Tensor, [bool; MODALITIES]) -> Tensor) -> Tensor {
    if present.iter().all(|m| *m == present[0]) {
        f(x, present[0])
    } else {
        let outs: Vec<Tensor> = present.iter().enumerate().map(|(i, m)| f(&x.narrow(0, i as i64, 1), *m)).collect();
        Tensor::cat(&outs, 0)
    }
}

/// Residual encoder: fused stem, then three stride-2 downsamplings with channel doubling.
#[derive(Debug)]
struct Encoder {
    stem: ModalityStem,
    stem_bn: nn::BatchNorm,
    downs: Vec<nn::Conv3D>,
    blocks: Vec<Vec<ResBlock>>,
}

impl Encoder {
    fn new(p: nn::Path, channels: &[usize], blocks: &[usize]) -> Self {
        let stem = ModalityStem::new(&p / "stem", channels[0]);
        let stem_bn = bn(&p / "stem_bn", channels[0]);
        let downs = (1..channels.len())
            .map(|l| conv(&p / format!("down{l}"), channels[l - 1], channels[l], 3, 2, true))
            .collect();
        let blocks = channels
            .iter()
            .zip(blocks)
            .enumerate()
            .map(|(l, (&c, &n))| {
                (0..n).map(|b| ResBlock::new(&p / format!("level{l}") / format!("block{b}"), c)).collect()
            })
            .collect();
        Self { stem, stem_bn, downs, blocks }
    }

    /// Output of the fused stem (the encoder's first convolution) and the features of every
    /// level, finest first.
    fn forward(&self, x: &Tensor, present: &[[bool; MODALITIES]], train: bool) -> (Tensor, Vec<Tensor>) {
        let mut feats = Vec::with_capacity(self.blocks.len());
        let stem = self.stem.forward(x, present, &self.stem_bn, train);
        let mut h = stem.shallow_clone();
        for (l, blocks) in self.blocks.iter().enumerate() {
            if l > 0 {
                h = self.downs[l - 1].forward(&feats[l - 1]);
            }
            for b in blocks {
                h = b.forward(&h, train);
            }
            feats.push(h.shallow_clone());
        }
        (stem, feats)
    }
}

/// Pre-norm transformer layer: `x + MHSA(LN(x))`, then `x + MLP(LN(x))`.
#[derive(Debug)]
struct TransformerLayer {
    ln1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    ln2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: i64,
    dropout: f64,
}

impl TransformerLayer {
    fn new(p: nn::Path, e: usize, heads: usize, mlp_ratio: usize, dropout: f64) -> Self {
        let ln = |n: &str| nn::layer_norm(&p / n, vec![e as i64], Default::default());
        Self {
            ln1: ln("ln1"),
            // No bias on q/k/v: a key bias gets no gradient (softmax is shift invariant).
            qkv: linear(&p / "qkv", e, 3 * e, false),
            proj: linear(&p / "proj", e, e, true),
            ln2: ln("ln2"),
            fc1: linear(&p / "fc1", e, e * mlp_ratio, true),
            fc2: linear(&p / "fc2", e * mlp_ratio, e, true),
            heads: heads as i64,
            dropout,
        }
    }

    #[allow(
        clippy::expect_used,
        clippy::unwrap_used,
        reason = "the tokens tensor is built three-dimensional just above"
    )]
    fn forward(&self, x: &Tensor, drop: bool) -> Tensor {
        let (b, n, e) = x.size3().expect("tokens are [B, N, E]");
        let h = self.heads;
        let qkv = self.qkv.forward(&self.ln1.forward(x)).view([b, n, 3, h, e / h]).permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let att = Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, false, None, false);
        drop_all([q, k, v, qkv]);
        let att = att.transpose(1, 2).reshape([b, n, e]);
        let mut x = x + self.proj.forward(&att);
        let mut m = self.fc1.forward(&self.ln2.forward(&x)).gelu("none");
        m = dropout(&m, self.dropout, drop);
        m = dropout(&self.fc2.forward(&m), self.dropout, drop);
        x = add(x, &m);
        x
    }
}

fn drop_all<const N: usize>(_: [Tensor; N]) {}

/// Transformer bottleneck: 3x3x3 projection to the embedding width, learned positional
/// embedding (trilinearly resized when the token grid differs from the training one).
#[derive(Debug)]
struct Transformer {
    proj: nn::Conv3D,
    pos: Tensor,
    layers: Vec<TransformerLayer>,
    norm: nn::LayerNorm,
}

impl Transformer {
    fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        let e = cfg.embed_dim;
        let g = cfg.token_grid().map(|v| v as i64);
        Self {
            proj: conv(&p / "proj", cfg.channels[3], e, 3, 1, true),
            pos: p.var("pos_embed", &[1, e as i64, g[0], g[1], g[2]], nn::Init::Const(0.0)),
            layers: (0..cfg.layers)
                .map(|i| TransformerLayer::new(&p / format!("layer{i}"), e, cfg.heads, cfg.mlp_ratio, cfg.dropout))
                .collect(),
            norm: nn::layer_norm(&p / "norm", vec![e as i64], Default::default()),
        }
    }

    fn forward(&self, x: &Tensor, drop: bool) -> Tensor {
        let f = self.proj.forward(x);
        let [d, h, w] = spatial(&f);
        let b = f.size()[0];
        let e = f.size()[1];
        let pos = if spatial(&self.pos) == [d, h, w] {
            self.pos.shallow_clone()
        } else {
            self.pos.upsample_trilinear3d([d, h, w], false, None, None, None)
        };
        let mut t = add(f, &pos).flatten(2, 4).transpose(1, 2);
        for layer in &self.layers {
            t = layer.forward(&t, drop);
        }
        self.norm.forward(&t).transpose(1, 2).reshape([b, e, d, h, w])
    }
}

/// Bottleneck of the backbone: transformer, or one residual block for the ConvNet ablation.
#[derive(Debug)]
enum Bottleneck {
    Transformer(Box<Transformer>),
    Conv(Box<ResBlock>),
}

/// Channel-attention fusion of III-C.4: concatenate, GAP+GMP through a shared MLP, sigmoid
/// channel weights, then a 1x1x1 convolution back to the backbone width.
#[derive(Debug)]
struct ChannelAttentionFusion {
    fc1: nn::Linear,
    fc2: nn::Linear,
    out: nn::Conv3D,
    width: i64,
}

impl ChannelAttentionFusion {
    fn new(p: nn::Path, backbone: usize, global: usize) -> Self {
        let c = backbone + global;
        let hidden = (c / 4).max(4);
        Self {
            fc1: linear(&p / "fc1", c, hidden, true),
            fc2: linear(&p / "fc2", hidden, c, true),
            out: conv(&p / "out", c, backbone, 1, 1, true),
            width: c as i64,
        }
    }

    fn forward(&self, backbone: &Tensor, global: &Tensor) -> Tensor {
        self.forward_weights(backbone, global, None).0
    }

    /// [`ChannelAttentionFusion::forward`] that also returns the channel weights
    /// `[B, C, 1, 1, 1]`, or applies `weights` (from a pass over a larger region) instead of
    /// pooling over this one.
    fn forward_weights(&self, backbone: &Tensor, global: &Tensor, weights: Option<&Tensor>) -> (Tensor, Tensor) {
        let cat = Tensor::cat(&[backbone, global], 1);
        let att = match weights {
            Some(w) => w.shallow_clone(),
            None => {
                let b = cat.size()[0];
                let mlp = |v: &Tensor| self.fc2.forward(&self.fc1.forward(v).relu());
                let avg = cat.mean_dim(&[2i64, 3, 4][..], false, Kind::Float);
                let max = cat.amax(&[2i64, 3, 4][..], false);
                (mlp(&avg) + mlp(&max)).sigmoid().view([b, self.width, 1, 1, 1])
            }
        };
        (self.out.forward(&(cat * &att)), att)
    }
}

/// Features of the global branch for one or more whole volumes.
#[derive(Debug)]
pub struct GlobalFeatures {
    /// Bottleneck features `[Bg, global_channels[2], G/4..]`.
    pub bottleneck: Tensor,
    /// Last decoder features `[Bg, global_channels[0], G..]`.
    pub decoder: Tensor,
    /// Segmentation logits at the global resolution `[Bg, 4, G..]`.
    pub seg_logits: Tensor,
}

/// A small U-Net over the down-sampled whole volume (two downsamplings).
#[derive(Debug)]
struct GlobalUNet {
    stem: ModalityStem,
    stem_bn: nn::BatchNorm,
    enc: Vec<ResBlock>,
    downs: Vec<nn::Conv3D>,
    reduce: Vec<nn::Conv3D>,
    dec: Vec<ConvBnAct>,
    head: nn::Conv3D,
}

impl GlobalUNet {
    fn new(p: nn::Path, ch: [usize; 3]) -> Self {
        Self {
            stem: ModalityStem::new(&p / "stem", ch[0]),
            stem_bn: bn(&p / "stem_bn", ch[0]),
            enc: (0..3).map(|l| ResBlock::new(&p / format!("enc{l}"), ch[l])).collect(),
            downs: (1..3).map(|l| conv(&p / format!("down{l}"), ch[l - 1], ch[l], 3, 2, true)).collect(),
            reduce: (0..2).map(|l| conv(&p / format!("reduce{l}"), ch[l + 1], ch[l], 1, 1, true)).collect(),
            dec: (0..2).map(|l| ConvBnAct::new(&p / format!("dec{l}"), ch[l], ch[l])).collect(),
            head: conv(&p / "seg_head", ch[0], SEG_CLASSES, 1, 1, true),
        }
    }

    fn forward(&self, x: &Tensor, present: &[[bool; MODALITIES]], train: bool) -> GlobalFeatures {
        let mut h = self.stem.forward(x, present, &self.stem_bn, train);
        let mut skips = Vec::new();
        for l in 0..3 {
            if l > 0 {
                h = self.downs[l - 1].forward(&h);
            }
            h = self.enc[l].forward(&h, train);
            skips.push(h.shallow_clone());
        }
        let bottleneck = h.shallow_clone();
        for l in (0..2).rev() {
            h = self.reduce[l].forward(&h);
            h = h.upsample_trilinear3d(spatial(&skips[l]), false, None, None, None);
            h = add(h, &skips[l]);
            h = self.dec[l].forward(&h, train);
        }
        let seg_logits = self.head.forward(&h);
        GlobalFeatures { bottleneck, decoder: h, seg_logits }
    }
}

/// Resamples whole-volume features to the region `boxes` of each sample covers.
///
/// `boxes[i] = [z0, y0, x0, z1, y1, x1]` are fractions of the whole volume (a window that
/// runs past the volume edge has values above 1; the outside reads zeros).
fn crop_resample(feat: &Tensor, boxes: &[[f32; 6]], size: [i64; 3]) -> Tensor {
    let b = boxes.len() as i64;
    let mut theta = Vec::with_capacity(boxes.len() * 12);
    for bx in boxes {
        // Rows act on (x, y, z) output coordinates in [-1, 1] (align_corners = false).
        let (sz, sy, sx) = (bx[3] - bx[0], bx[4] - bx[1], bx[5] - bx[2]);
        let (tz, ty, tx) = (bx[0] + bx[3] - 1.0, bx[1] + bx[4] - 1.0, bx[2] + bx[5] - 1.0);
        theta.extend_from_slice(&[sx, 0.0, 0.0, tx, 0.0, sy, 0.0, ty, 0.0, 0.0, sz, tz]);
    }
    let theta = Tensor::from_slice(&theta).view([b, 3, 4]).to_device(feat.device());
    let c = feat.size()[1];
    let grid = Tensor::affine_grid_generator(&theta, [b, c, size[0], size[1], size[2]], false);
    let src = if feat.size()[0] == b { feat.shallow_clone() } else { feat.expand([b, -1, -1, -1, -1], false) };
    src.grid_sampler(&grid, 0, 0, false)
}

/// Segmentation decoder: per level a 1x1x1 reduction, trilinear upsampling, skip addition
/// and a 3x3x3 conv + BatchNorm + LeakyReLU; then 1x1x1 logits for the 4 classes.
#[derive(Debug)]
struct Decoder {
    reduce: Vec<nn::Conv3D>,
    convs: Vec<ConvBnAct>,
    head: nn::Conv3D,
}

impl Decoder {
    fn new(p: nn::Path, channels: &[usize; 4], bottleneck: usize) -> Self {
        let inputs = [channels[1], channels[2], bottleneck];
        Self {
            reduce: (0..3).map(|l| conv(&p / format!("reduce{l}"), inputs[l], channels[l], 1, 1, true)).collect(),
            convs: (0..3).map(|l| ConvBnAct::new(&p / format!("conv{l}"), channels[l], channels[l])).collect(),
            head: conv(&p / "seg_head", channels[0], SEG_CLASSES, 1, 1, true),
        }
    }
}

/// Multi-task classifier: GAP+GMP of the last encoder stage and of the bottleneck output,
/// one shared "Summarize" layer, then a separate two-layer branch per task (2 logits each).
#[derive(Debug)]
struct Classifier {
    summarize: nn::Linear,
    branches: Vec<(nn::Linear, nn::Linear)>,
    dropout: f64,
}

impl Classifier {
    fn new(p: nn::Path, input: usize, hidden: usize, dropout: f64) -> Self {
        let half = (hidden / 2).max(1);
        Self {
            summarize: linear(&p / "summarize", input, hidden, true),
            branches: TASK_NAMES
                .iter()
                .map(|t| {
                    let q = &p / *t;
                    (linear(&q / "fc1", hidden, half, true), linear(&q / "fc2", half, 2, true))
                })
                .collect(),
            dropout,
        }
    }

    fn forward(&self, encoder: &Tensor, bottleneck: &Tensor, drop: bool) -> Tensor {
        let feats = Tensor::cat(&[gap_gmp(encoder), gap_gmp(bottleneck)], 1);
        let s = dropout(&self.summarize.forward(&feats).leaky_relu(), self.dropout, drop);
        let logits: Vec<Tensor> = self
            .branches
            .iter()
            .map(|(fc1, fc2)| fc2.forward(&dropout(&fc1.forward(&s).leaky_relu(), self.dropout, drop)))
            .collect();
        Tensor::stack(&logits, 1)
    }
}

/// Outputs of one forward pass.
#[derive(Debug)]
pub struct NetOutput {
    /// Segmentation logits `[B, 4, D, H, W]` (background, NCR, ED, ET).
    pub seg: Tensor,
    /// Task logits `[B, 4, 2]` in the order of [`TASK_NAMES`]; index 1 is "positive".
    pub tasks: Tensor,
    /// Global-branch segmentation logits `[Bg, 4, G..]` when the branch is on.
    pub global_seg: Option<Tensor>,
}

/// Global context handed to [`Net::forward`]: whole-volume features and, per sample, the
/// region of the whole volume its input patch covers.
#[derive(Debug, Clone, Copy)]
pub struct GlobalContext<'a> {
    /// Features from [`Net::global_features`] (batch 1, or one per sample).
    pub features: &'a GlobalFeatures,
    /// Per sample `[z0, y0, x0, z1, y1, x1]` as fractions of the whole volume.
    pub boxes: &'a [[f32; 6]],
}

/// A box of a window, in full-resolution voxels `[z, y, x]` (start and size multiples of
/// [`BACKBONE_STRIDE`]), on which [`Net::head_crop`] runs the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderCrop {
    pub lo: [i64; 3],
    pub size: [i64; 3],
}

/// What a head pass needs beyond the features: an optional decoder crop with the decoder
/// fusion's channel weights to reuse, and where to put the taps.
#[derive(Default)]
struct HeadPlan<'a> {
    crop: Option<DecoderCrop>,
    fusion: Option<&'a Tensor>,
    decoder_first: Option<Tensor>,
    fusion_out: Option<Tensor>,
}

/// `[z0, y0, x0, z1, y1, x1]` (fractions of the volume) of `crop` inside a window of `window`
/// voxels whose own box is `b`.
fn sub_box(b: &[f32; 6], window: [i64; 3], crop: &DecoderCrop) -> [f32; 6] {
    let mut out = [0f32; 6];
    for a in 0..3 {
        let span = b[a + 3] - b[a];
        out[a] = b[a] + span * crop.lo[a] as f32 / window[a] as f32;
        out[a + 3] = b[a] + span * (crop.lo[a] + crop.size[a]) as f32 / window[a] as f32;
    }
    out
}

/// The `[.., z, y, x]` region of `t` starting at `lo` with `size` voxels.
fn narrow3(t: &Tensor, lo: [i64; 3], size: [i64; 3]) -> Tensor {
    t.narrow(2, lo[0], size[0]).narrow(3, lo[1], size[1]).narrow(4, lo[2], size[2])
}

/// The GMMAS network. Build it on a `VarStore` path; all sizes come from [`ModelConfig`].
#[derive(Debug)]
pub struct Net {
    cfg: ModelConfig,
    encoder: Encoder,
    bottleneck: Bottleneck,
    decoder: Decoder,
    classifier: Classifier,
    global: Option<GlobalUNet>,
    fuse_bottleneck: Option<ChannelAttentionFusion>,
    fuse_decoder: Option<ChannelAttentionFusion>,
}

impl Net {
    /// Creates the variables of the network under `p`.
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let ch = cfg.channels;
        let bw = cfg.bottleneck_width();
        let bottleneck = if cfg.transformer {
            Bottleneck::Transformer(Box::new(Transformer::new(p / "transformer", cfg)))
        } else {
            Bottleneck::Conv(Box::new(ResBlock::new(p / "conv_bottleneck", ch[3])))
        };
        let g = cfg.global_channels;
        let (global, fuse_bottleneck, fuse_decoder) = if cfg.global_branch {
            (
                Some(GlobalUNet::new(p / "global", g)),
                Some(ChannelAttentionFusion::new(p / "fuse_bottleneck", bw, g[2])),
                Some(ChannelAttentionFusion::new(p / "fuse_decoder", ch[1], g[0])),
            )
        } else {
            (None, None, None)
        };
        Ok(Self {
            cfg: cfg.clone(),
            encoder: Encoder::new(p / "encoder", &ch, &cfg.enc_blocks),
            bottleneck,
            decoder: Decoder::new(p / "decoder", &ch, bw),
            classifier: Classifier::new(p / "classifier", 2 * (ch[3] + bw), cfg.cls_hidden, cfg.dropout),
            global,
            fuse_bottleneck,
            fuse_decoder,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Changes the decoder dropout probability (it has no variables, so weights are
    /// unaffected): e.g. to draw MC-Dropout voxel uncertainty from a model trained without it.
    pub fn set_decoder_dropout(&mut self, p: f64) -> Result<(), ModelError> {
        let cfg = self.cfg.clone().with_decoder_dropout(p);
        cfg.validate()?;
        self.cfg = cfg;
        Ok(())
    }

    /// Normalized modality fusion weights of the backbone stem for a presence mask.
    pub fn modality_weights(&self, present: [bool; MODALITIES]) -> Vec<f32> {
        let w = tch::no_grad(|| self.encoder.stem.weights(present));
        Vec::<f32>::try_from(&w).unwrap_or_default()
    }

    /// Resizes whole volumes `[B, 4, D, H, W]` to the global-branch size (area interpolation).
    pub fn global_input(&self, volume: &Tensor) -> Tensor {
        let g = self.cfg.global_size.map(|v| v as i64);
        volume.adaptive_avg_pool3d(g)
    }

    /// Runs the global branch on down-sampled whole volumes `[Bg, 4, G..]` (None when off).
    pub fn global_features(
        &self,
        low: &Tensor,
        present: &[[bool; MODALITIES]],
        train: bool,
    ) -> Result<Option<GlobalFeatures>, ModelError> {
        let Some(global) = &self.global else {
            return Ok(None);
        };
        check_present(present, low.size()[0])?;
        let want: Vec<i64> = self.cfg.global_size.iter().map(|&v| v as i64).collect();
        let size = low.size();
        if size.len() != 5 || size[1] != MODALITIES as i64 || size[2..] != want[..] {
            return Err(ModelError::Input(format!("global input must be [B, 4, {want:?}], got {size:?}")));
        }
        Ok(Some(global.forward(low, present, train)))
    }

    /// Full forward pass on patches `[B, 4, D, H, W]` (spatial sizes multiples of 8).
    ///
    /// `present` has one mask per sample (or one for all). With the global branch on and
    /// `global` None, each patch is treated as its own whole volume.
    pub fn forward(
        &self,
        x: &Tensor,
        present: &[[bool; MODALITIES]],
        global: Option<GlobalContext<'_>>,
        train: bool,
        mc: bool,
    ) -> Result<NetOutput, ModelError> {
        let enc = self.encode(x, present, train)?;
        let own;
        let full = vec![[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]; enc.batch as usize];
        let ctx = match (&self.global, global) {
            (Some(_), None) => {
                own = self.global_features(&self.global_input(x), &enc.present, train)?;
                own.as_ref().map(|f| GlobalContext { features: f, boxes: &full })
            }
            (_, ctx) => ctx,
        };
        self.head(&enc, ctx, train, mc)
    }

    /// Encoder part of [`Net::forward`] (no dropout, so it is reused across MC passes).
    pub fn encode(&self, x: &Tensor, present: &[[bool; MODALITIES]], train: bool) -> Result<Encoded, ModelError> {
        let size = x.size();
        if size.len() != 5 || size[1] != MODALITIES as i64 {
            return Err(ModelError::Input(format!("input must be [B, 4, D, H, W], got {size:?}")));
        }
        if size[2..].iter().any(|&s| s <= 0 || s % BACKBONE_STRIDE as i64 != 0) {
            return Err(ModelError::Input(format!(
                "spatial size {:?} must be positive multiples of {BACKBONE_STRIDE}",
                &size[2..]
            )));
        }
        let b = size[0];
        check_present(present, b)?;
        let present: Vec<[bool; MODALITIES]> =
            if present.len() == 1 { vec![present[0]; b as usize] } else { present.to_vec() };
        let (stem, feats) = self.encoder.forward(x, &present, train);
        Ok(Encoded { stem, feats, present, batch: b })
    }

    /// Bottleneck, global fusion, classifier and decoder on encoder features. `global` is
    /// required when the global branch is on.
    pub fn head(
        &self,
        enc: &Encoded,
        global: Option<GlobalContext<'_>>,
        train: bool,
        mc: bool,
    ) -> Result<NetOutput, ModelError> {
        self.head_impl(enc, global, train, mc, &mut HeadPlan::default())
    }

    /// [`Net::head`] without training that also returns the decoder fusion's channel weights
    /// (`[B, C, 1, 1, 1]`; None without the global branch) for [`Net::head_crop`].
    pub fn head_with_fusion(
        &self,
        enc: &Encoded,
        global: Option<GlobalContext<'_>>,
        mc: bool,
    ) -> Result<(NetOutput, Option<Tensor>), ModelError> {
        let mut plan = HeadPlan::default();
        let out = self.head_impl(enc, global, false, mc, &mut plan)?;
        Ok((out, plan.fusion_out))
    }

    /// [`Net::head`] without training whose decoder covers only `crop` of the window: the
    /// bottleneck and the classifier still see the whole window, the decoder reads the crop of
    /// every skip level, and its global fusion applies `fusion` (weights of a whole-window pass
    /// of the same features) instead of pooling over the crop. Away from the crop's faces the
    /// segmentation logits equal those of the whole-window head.
    pub fn head_crop(
        &self,
        enc: &Encoded,
        global: Option<GlobalContext<'_>>,
        mc: bool,
        crop: DecoderCrop,
        fusion: Option<&Tensor>,
    ) -> Result<NetOutput, ModelError> {
        let window = spatial(&enc.feats[0]);
        let s = BACKBONE_STRIDE as i64;
        for a in 0..3 {
            let (lo, size) = (crop.lo[a], crop.size[a]);
            if lo < 0 || size <= 0 || lo % s != 0 || size % s != 0 || lo + size > window[a] {
                return Err(ModelError::Input(format!(
                    "decoder crop {crop:?} must lie in the window {window:?} on multiples of {s}"
                )));
            }
        }
        if self.fuse_decoder.is_some() && fusion.is_none() {
            return Err(ModelError::Input("a decoder crop needs the fusion weights of a whole-window pass".into()));
        }
        let mut plan = HeadPlan { crop: Some(crop), fusion, ..HeadPlan::default() };
        self.head_impl(enc, global, false, mc, &mut plan)
    }

    /// [`Net::forward`] that also returns the feature maps the adaptation module's
    /// self-distillation compares (see [`FeatureTaps`]).
    pub fn forward_tapped(
        &self,
        x: &Tensor,
        present: &[[bool; MODALITIES]],
        global: Option<GlobalContext<'_>>,
        train: bool,
    ) -> Result<(NetOutput, FeatureTaps), ModelError> {
        let enc = self.encode(x, present, train)?;
        let mut plan = HeadPlan::default();
        let out = self.head_impl(&enc, global, train, false, &mut plan)?;
        let decoder_first = plan
            .decoder_first
            .ok_or_else(|| ModelError::Internal("decoder produced no first-level features".into()))?;
        let taps = FeatureTaps {
            encoder_first: enc.stem.shallow_clone(),
            encoder_last: enc.feats[enc.feats.len() - 1].shallow_clone(),
            decoder_first,
        };
        Ok((out, taps))
    }

    /// Pooled features of the deepest encoder level, `[B, channels[3]]` (global average):
    /// what the contrastive stage of the adaptation module projects.
    pub fn encoder_embedding(&self, enc: &Encoded) -> Tensor {
        enc.feats[enc.feats.len() - 1].mean_dim(&[2i64, 3, 4][..], false, Kind::Float)
    }

    fn head_impl(
        &self,
        enc: &Encoded,
        global: Option<GlobalContext<'_>>,
        train: bool,
        mc: bool,
        plan: &mut HeadPlan<'_>,
    ) -> Result<NetOutput, ModelError> {
        let b = enc.batch;
        let ctx = match (&self.global, global) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(ModelError::Input("the global branch needs global features".into()));
            }
            (Some(_), Some(ctx)) => {
                if ctx.boxes.len() != b as usize {
                    return Err(ModelError::Input(format!("{} global boxes for a batch of {b}", ctx.boxes.len())));
                }
                Some(ctx)
            }
        };
        let drop = train || mc;
        let feats = &enc.feats;
        let mut h = match &self.bottleneck {
            Bottleneck::Transformer(t) => t.forward(&feats[3], drop),
            Bottleneck::Conv(block) => dropout(&block.forward(&feats[3], train), self.cfg.dropout, drop),
        };
        if let (Some(fuse), Some(ctx)) = (&self.fuse_bottleneck, ctx) {
            let g = crop_resample(&ctx.features.bottleneck, ctx.boxes, spatial(&h));
            h = fuse.forward(&h, &g);
        }
        let tasks = self.classifier.forward(&feats[3], &h, drop);

        // The decoder's inputs: the whole window, or the crop of every level and its box.
        let mut skips: Vec<Tensor> = feats[..3].iter().map(Tensor::shallow_clone).collect();
        let mut crop_boxes = None;
        if let Some(c) = plan.crop {
            let window = spatial(&feats[0]);
            let at = |l: u32| (c.lo.map(|v| v >> l), c.size.map(|v| v >> l));
            let (lo, size) = at(3);
            h = narrow3(&h, lo, size);
            for (l, skip) in skips.iter_mut().enumerate() {
                let (lo, size) = at(l as u32);
                *skip = narrow3(&feats[l], lo, size);
            }
            crop_boxes = ctx.map(|ctx| ctx.boxes.iter().map(|b| sub_box(b, window, &c)).collect::<Vec<_>>());
        }
        let dec = &self.decoder;
        for l in (0..3).rev() {
            let skip = &skips[l];
            h = dec.reduce[l].forward(&h);
            h = h.upsample_trilinear3d(spatial(skip), false, None, None, None);
            h = add(h, skip);
            h = dec.convs[l].forward(&h, train);
            if self.cfg.decoder_dropout > 0.0 {
                h = dropout(&h, self.cfg.decoder_dropout, drop);
            }
            if l == 2 {
                plan.decoder_first = Some(h.shallow_clone());
            }
            if let (1, Some(fuse), Some(ctx)) = (l, &self.fuse_decoder, ctx) {
                let boxes = crop_boxes.as_deref().unwrap_or(ctx.boxes);
                let g = crop_resample(&ctx.features.decoder, boxes, spatial(&h));
                let (fused, weights) = fuse.forward_weights(&h, &g, plan.fusion);
                h = fused;
                plan.fusion_out = Some(weights);
            }
        }
        let seg = dec.head.forward(&h);
        let global_seg = ctx.map(|c| c.features.seg_logits.shallow_clone());
        Ok(NetOutput { seg, tasks, global_seg })
    }
}

/// Feature maps compared by the self-distillation stage (deep supervision at the encoder's
/// first and last convolutions and the decoder's first convolution).
#[derive(Debug)]
pub struct FeatureTaps {
    /// Output of the fused modality stem, full resolution.
    pub encoder_first: Tensor,
    /// Deepest encoder level (stride 8), before the bottleneck.
    pub encoder_last: Tensor,
    /// First decoder convolution (stride 4).
    pub decoder_first: Tensor,
}

impl FeatureTaps {
    /// The three maps, shallow copies, in the order above.
    pub fn all(&self) -> [Tensor; 3] {
        [self.encoder_first.shallow_clone(), self.encoder_last.shallow_clone(), self.decoder_first.shallow_clone()]
    }
}

/// Encoder features of a batch (finest level first), from [`Net::encode`].
#[derive(Debug)]
pub struct Encoded {
    stem: Tensor,
    feats: Vec<Tensor>,
    present: Vec<[bool; MODALITIES]>,
    batch: i64,
}

impl Encoded {
    /// Samples in the batch.
    pub fn batch(&self) -> i64 {
        self.batch
    }

    /// Frees the stem's feature map (full resolution; only the adaptation module's taps read
    /// it), which inference does not need while the head runs.
    pub fn drop_stem(&mut self) {
        self.stem = Tensor::new();
    }

    /// Sample `i` of the batch alone (views, no copy).
    pub fn sample(&self, i: i64) -> Encoded {
        let one = |t: &Tensor| t.narrow(0, i, 1);
        Encoded {
            stem: if self.stem.defined() { one(&self.stem) } else { Tensor::new() },
            feats: self.feats.iter().map(one).collect(),
            present: vec![self.present[i as usize]],
            batch: 1,
        }
    }

    /// `n` copies of a one-sample batch for independent dropout passes through the head:
    /// only the deepest level is repeated; the skips keep batch 1 and broadcast in the
    /// decoder.
    pub fn copies(&self, n: i64) -> Result<Encoded, ModelError> {
        if self.batch != 1 || n < 1 {
            return Err(ModelError::Input(format!("{n} copies of a batch of {} (needs one sample)", self.batch)));
        }
        let mut feats: Vec<Tensor> = self.feats.iter().map(Tensor::shallow_clone).collect();
        let last = feats.len() - 1;
        feats[last] = feats[last].repeat([n, 1, 1, 1, 1]);
        Ok(Encoded { stem: self.stem.shallow_clone(), feats, present: vec![self.present[0]; n as usize], batch: n })
    }

    /// Width of the deepest encoder level (what [`Encoded::with_channel_mask`] masks).
    pub fn deepest_channels(&self) -> i64 {
        self.feats[self.feats.len() - 1].size()[1]
    }

    /// The same features with the deepest level multiplied channel-wise by `mask`
    /// (`[B, C]` or `[C]`, values typically 0 / 2 for a 50 % channel dropout with the
    /// kept channels rescaled). Shallower levels (skips) are shared, not copied. Used by the
    /// complementary feature dropout of [`crate::ssl::consistency`].
    pub fn with_channel_mask(&self, mask: &Tensor) -> Encoded {
        let last = &self.feats[self.feats.len() - 1];
        let c = last.size()[1];
        let m = if mask.dim() == 1 { mask.view([1, c, 1, 1, 1]) } else { mask.view([-1, c, 1, 1, 1]) };
        let mut feats: Vec<Tensor> = self.feats.iter().map(Tensor::shallow_clone).collect();
        let n = feats.len();
        feats[n - 1] = last * m.to_kind(last.kind()).to_device(last.device());
        Encoded { stem: self.stem.shallow_clone(), feats, present: self.present.clone(), batch: self.batch }
    }
}

fn check_present(present: &[[bool; MODALITIES]], batch: i64) -> Result<(), ModelError> {
    if present.len() != 1 && present.len() as i64 != batch {
        return Err(ModelError::Input(format!("{} presence masks for a batch of {batch}", present.len())));
    }
    if let Some(i) = present.iter().position(|m| !m.iter().any(|&p| p)) {
        return Err(ModelError::Input(format!("sample {i} has no modality present")));
    }
    Ok(())
}

/// Number of scalar parameters (trainable variables) of a var store.
pub fn parameter_count(vs: &nn::VarStore) -> usize {
    vs.trainable_variables().iter().map(|t| t.numel()).sum()
}

/// Builds a network of `cfg` in a fresh var store on `device`, initialised from `seed`.
pub fn build(cfg: &ModelConfig, device: tch::Device, seed: Option<u64>) -> Result<(nn::VarStore, Net), ModelError> {
    let vs = nn::VarStore::new(device);
    let net = Net::new(&vs.root(), cfg)?;
    if let Some(seed) = seed {
        crate::weights::init_seeded(&vs, seed)?;
    }
    Ok((vs, net))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn subsets() -> Vec<[bool; MODALITIES]> {
        (1..16u8).map(|m| std::array::from_fn(|i| m & (1 << i) != 0)).collect()
    }

    #[test]
    fn decoder_crop_matches_the_whole_window_away_from_its_faces() {
        let cfg = ModelConfig::tiny();
        let (_vs, net) = build(&cfg, Device::Cpu, Some(3)).unwrap();
        let x = Tensor::randn([1, 4, 80, 64, 48], (Kind::Float, Device::Cpu));
        tch::no_grad(|| {
            let enc = net.encode(&x, &[[true; MODALITIES]], false).unwrap();
            let gf = net.global_features(&net.global_input(&x), &[[true; MODALITIES]], false).unwrap().unwrap();
            let boxes = [[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]];
            let ctx = Some(GlobalContext { features: &gf, boxes: &boxes });
            let (full, fusion) = net.head_with_fusion(&enc, ctx, false).unwrap();
            let fusion = fusion.unwrap();
            let crop = DecoderCrop { lo: [16, 8, 0], size: [48, 48, 48] };
            let part = net.head_crop(&enc, ctx, false, crop, Some(&fusion)).unwrap();
            assert_eq!(part.seg.size(), [1, 4, 48, 48, 48]);
            assert!(part.tasks.allclose(&full.tasks, 1e-6, 1e-6, false), "the classifier sees the whole window");
            let want = narrow3(&full.seg, crop.lo, crop.size);
            // Where the crop touches the window's faces (x here) nothing differs; 16 voxels
            // inside its other faces the decoder's border effects no longer reach.
            let inner = |t: &Tensor| t.narrow(2, 16, 16).narrow(3, 16, 16);
            let diff = (inner(&part.seg) - inner(&want)).abs().max().double_value(&[]);
            let scale = want.abs().max().double_value(&[]);
            assert!(diff < 1e-4 * scale.max(1.0), "inside the crop: {diff} (logits up to {scale})");
            let edge = (part.seg.narrow(2, 0, 1) - want.narrow(2, 0, 1)).abs().max().double_value(&[]);
            assert!(edge > 0.0, "the crop's own face sees zero padding, so it must differ there");
            // Copies: independent dropout masks, the same shapes, the classifier per copy.
            let three = enc.copies(3).unwrap();
            let boxes3 = [boxes[0]; 3];
            let ctx3 = Some(GlobalContext { features: &gf, boxes: &boxes3 });
            let mc = net.head_crop(&three, ctx3, true, crop, Some(&fusion)).unwrap();
            assert_eq!(mc.seg.size(), [3, 4, 48, 48, 48]);
            assert_eq!(mc.tasks.size(), [3, 4, 2]);
            assert!(!mc.seg.get(0).allclose(&mc.seg.get(1), 1e-6, 1e-6, false), "each copy draws its own dropout");
            // Misaligned or outside crops are refused by name.
            let bad = DecoderCrop { lo: [4, 0, 0], size: [16, 16, 16] };
            let e = net.head_crop(&enc, ctx, false, bad, Some(&fusion)).unwrap_err().to_string();
            assert!(e.contains("multiples of 8"), "{e}");
            let out = DecoderCrop { lo: [40, 56, 0], size: [16, 16, 16] };
            assert!(net.head_crop(&enc, ctx, false, out, Some(&fusion)).is_err());
            assert!(net.head_crop(&enc, ctx, false, crop, None).is_err());
        });
    }

    #[test]
    fn case_norm_uses_the_batch_statistics_and_leaves_the_running_ones_alone() {
        let cfg = ModelConfig::tiny().with_dropout(0.0).with_decoder_dropout(0.0);
        let (_vs, net) = build(&cfg, Device::Cpu, Some(5)).unwrap();
        let x = Tensor::randn([1, 4, 32, 32, 32], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
        let present = [[true, true, false, true]];
        tch::no_grad(|| {
            let running = net.forward(&x, &present, None, false, false).unwrap();
            let case = with_case_norm(true, || net.forward(&x, &present, None, false, false).unwrap());
            let again = net.forward(&x, &present, None, false, false).unwrap();
            assert!(again.seg.equal(&running.seg), "case statistics must not touch the running averages");
            let off = with_case_norm(false, || net.forward(&x, &present, None, false, false).unwrap());
            assert!(off.seg.equal(&running.seg), "with_case_norm(false) changes nothing");
            let diff = (&case.seg - &running.seg).abs().max().double_value(&[]);
            assert!(diff > 1e-3, "this input's statistics are far from the initial running ones: {diff}");
            // Training mode normalises by the same batch statistics (no dropout in this config).
            let train = net.forward(&x, &present, None, true, false).unwrap();
            let d = (&case.seg - &train.seg).abs().max().double_value(&[]);
            assert!(d < 1e-3, "case statistics = training-mode BatchNorm: {d}");
            let dt = (&case.tasks - &train.tasks).abs().max().double_value(&[]);
            assert!(dt < 1e-3, "tasks: {dt}");
        });
    }

    #[test]
    fn output_shapes_for_every_subset_and_variant() {
        let x = Tensor::randn([1, 4, 32, 32, 32], (Kind::Float, Device::Cpu));
        for transformer in [true, false] {
            for global in [true, false] {
                let cfg = ModelConfig::tiny().with_transformer(transformer).with_global_branch(global);
                let (_vs, net) = build(&cfg, Device::Cpu, Some(1)).unwrap();
                for present in subsets() {
                    let masked = x.shallow_clone();
                    let out = tch::no_grad(|| net.forward(&masked, &[present], None, false, false)).unwrap();
                    assert_eq!(out.seg.size(), [1, 4, 32, 32, 32]);
                    assert_eq!(out.tasks.size(), [1, 4, 2]);
                    assert_eq!(out.global_seg.is_some(), global);
                    if let Some(g) = out.global_seg {
                        assert_eq!(g.size(), [1, 4, 16, 16, 16]);
                    }
                    let finite = out.seg.isfinite().all().int64_value(&[]) == 1;
                    assert!(finite, "non-finite logits for {present:?}");
                    let w = net.modality_weights(present);
                    let sum: f32 = w.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-5);
                    for (wi, p) in w.iter().zip(present) {
                        assert_eq!(*wi > 0.0, p, "{w:?} for {present:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn non_cubic_and_batched_inputs_with_mixed_masks() {
        let cfg = ModelConfig::tiny();
        let (_vs, net) = build(&cfg, Device::Cpu, Some(2)).unwrap();
        let x = Tensor::randn([2, 4, 40, 32, 24], (Kind::Float, Device::Cpu));
        let masks = [[true, true, false, true], [false, false, true, false]];
        let out = tch::no_grad(|| net.forward(&x, &masks, None, false, false)).unwrap();
        assert_eq!(out.seg.size(), [2, 4, 40, 32, 24]);
        // Sample 1 alone gives the same result as inside the mixed batch (eval mode).
        let one = tch::no_grad(|| net.forward(&x.narrow(0, 1, 1), &masks[1..], None, false, false)).unwrap();
        let diff = (one.seg - out.seg.narrow(0, 1, 1)).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
        assert!(net.forward(&x.narrow(2, 0, 36), &masks, None, false, false).is_err());
        assert!(net.forward(&x, &[[false; 4]], None, false, false).is_err());
    }

    #[test]
    fn stem_fusion_equals_weighted_average_of_per_modality_convs() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut stem = ModalityStem::new(vs.root(), 3);
        crate::weights::init_seeded(&vs, 3).unwrap();
        tch::no_grad(|| {
            stem.logits.copy_(&Tensor::from_slice(&[0.1f32, -0.5, 1.0, 2.0]));
        });
        let x = Tensor::randn([1, 4, 8, 8, 8], (Kind::Float, Device::Cpu));
        let present = [true, false, true, true];
        let fused = tch::no_grad(|| stem.forward_linear(&x, &[present]));
        let w: Vec<f32> = [0.1f32, -0.5, 1.0, 2.0].iter().map(|v| (1.0 + v.exp()).ln()).collect();
        let total: f32 = w.iter().zip(present).filter(|(_, p)| *p).map(|(w, _)| w).sum();
        let mut manual = Tensor::zeros([1, 3, 8, 8, 8], (Kind::Float, Device::Cpu));
        for m in 0..4 {
            if present[m] {
                let f = x.narrow(1, m as i64, 1).conv3d::<Tensor>(&stem.kernels[m], None, [1; 3], [1; 3], [1; 3], 1);
                manual += f * (w[m] / total) as f64;
            }
        }
        let diff = (fused - manual).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn crop_resample_selects_the_box() {
        let feat = Tensor::randn([1, 3, 4, 6, 8], (Kind::Float, Device::Cpu));
        let same = crop_resample(&feat, &[[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]], [4, 6, 8]);
        assert!((same - &feat).abs().max().double_value(&[]) < 1e-5);
        // First half along z, last half along x, for two samples from one feature map.
        let boxes = [[0.0, 0.0, 0.5, 0.5, 1.0, 1.0]; 2];
        let part = crop_resample(&feat, &boxes, [2, 6, 4]);
        assert_eq!(part.size(), [2, 3, 2, 6, 4]);
        let want = feat.narrow(2, 0, 2).narrow(4, 4, 4);
        assert!((part.get(1) - want.get(0)).abs().max().double_value(&[]) < 1e-5);
        // Outside the volume reads zeros.
        let out = crop_resample(&feat, &[[1.0, 0.0, 0.0, 2.0, 1.0, 1.0]], [4, 6, 8]);
        assert!(out.abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn seeded_dropout_is_reproducible_and_has_the_right_rate() {
        let x = Tensor::ones([4, 8, 16, 16, 16], (Kind::Float, Device::Cpu));
        let a = with_seeded_dropout(3, || (dropout(&x, 0.3, true), dropout(&x, 0.3, true)));
        // Another thread draws from libtorch's generator meanwhile: no effect.
        let noise = std::thread::spawn(|| Tensor::rand([1000], (Kind::Float, Device::Cpu)).sum(Kind::Float));
        let b = with_seeded_dropout(3, || (dropout(&x, 0.3, true), dropout(&x, 0.3, true)));
        let _ = noise.join();
        assert!(a.0.equal(&b.0) && a.1.equal(&b.1));
        assert!(!a.0.equal(&a.1), "two calls must get different masks");
        let c = with_seeded_dropout(4, || dropout(&x, 0.3, true));
        assert!(!c.equal(&a.0));
        let kept = a.0.gt(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        assert!((kept - 0.7).abs() < 0.01, "{kept}");
        let scale = a.0.max().double_value(&[]);
        assert!((scale - 1.0 / 0.7).abs() < 1e-5);
        // Off, or p = 0: the input unchanged.
        assert!(with_seeded_dropout(3, || dropout(&x, 0.3, false)).equal(&x));
        // Uniform values: mean ~1/2, every decile populated.
        let u = hashed_uniform(&[100_000], 12345, Device::Cpu);
        let m = u.mean(Kind::Float).double_value(&[]);
        assert!((m - 0.5).abs() < 0.01, "{m}");
        for d in 0..10 {
            let lo = d as f64 / 10.0;
            let frac = u.ge(lo).logical_and(&u.lt(lo + 0.1)).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
            assert!((frac - 0.1).abs() < 0.01, "decile {d}: {frac}");
        }
    }

    #[test]
    fn seeded_build_is_deterministic() {
        let cfg = ModelConfig::tiny();
        let (a, _) = build(&cfg, Device::Cpu, Some(5)).unwrap();
        let (b, _) = build(&cfg, Device::Cpu, Some(5)).unwrap();
        let (c, _) = build(&cfg, Device::Cpu, Some(6)).unwrap();
        let meta = Default::default();
        let (ba, bb, bc) = (
            crate::weights::to_safetensors(&a, &meta).unwrap(),
            crate::weights::to_safetensors(&b, &meta).unwrap(),
            crate::weights::to_safetensors(&c, &meta).unwrap(),
        );
        assert_eq!(ba, bb);
        assert_ne!(ba, bc);
    }
}
