//! Seeded initialisation of a `VarStore`, its byte-stable safetensors writer (names sorted: equal
//! weights give equal bytes and sha) and loading through the `safetensors` crate.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor, nn};

use crate::ModelError;

/// Re-initialises every variable of `vs` from a ChaCha stream seeded with `seed`, visiting
/// variables in name order so the result does not depend on the global torch RNG.
///
/// Convolution kernels: He-uniform (`sqrt(6 / fan_in)`), segmentation heads and linear
/// layers: `1 / sqrt(fan_in)`, norms: weight 1 / bias 0, positional embedding: uniform with
/// std 0.02, modality logits: `ln(e - 1)` (softplus = 1, i.e. equal modality weights).
pub fn init_seeded(vs: &nn::VarStore, seed: u64) -> Result<(), ModelError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    tch::no_grad(|| -> Result<(), ModelError> {
        for (name, mut var) in vars {
            let shape = var.size();
            let n = var.numel();
            let fan_in: i64 = shape.iter().skip(1).product::<i64>().max(1);
            let leaf = name.rsplit('.').next().unwrap_or("");
            let values: Vec<f32> = if leaf == "running_mean" || leaf == "bias" {
                vec![0.0; n]
            } else if leaf == "running_var" || (leaf == "weight" && shape.len() == 1) {
                vec![1.0; n]
            } else if leaf == "modality_logits" {
                vec![(std::f32::consts::E - 1.0).ln(); n]
            } else if leaf == "pos_embed" {
                uniform(&mut rng, n, 0.02 * 3f32.sqrt())
            } else if shape.len() == 5 && !name.contains("seg_head") {
                uniform(&mut rng, n, (6.0 / fan_in as f32).sqrt())
            } else {
                uniform(&mut rng, n, (1.0 / fan_in as f32).sqrt())
            };
            let src = Tensor::from_slice(&values).view(shape.as_slice()).to_device(var.device());
            var.f_copy_(&src)?;
        }
        Ok(())
    })
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, bound: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-bound..bound)).collect()
}

/// One entry of a safetensors header. Its fields are declared in the order the bytes carry
/// them (alphabetical), so the header does not depend on whether serde_json keeps insertion
/// order (its `preserve_order` feature, turned on by other crates in a workspace build).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum HeaderEntry<'a> {
    Metadata(&'a BTreeMap<String, String>),
    Tensor { data_offsets: [usize; 2], dtype: &'static str, shape: Vec<i64> },
}

/// Serialises all variables of `vs` as safetensors bytes (F32, names sorted, header keys
/// sorted at every level: equal weights always give equal bytes and sha256).
pub fn to_safetensors(vs: &nn::VarStore, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>, ModelError> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut header: BTreeMap<String, HeaderEntry> = BTreeMap::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), HeaderEntry::Metadata(metadata));
    }
    let mut blobs = Vec::with_capacity(vars.len());
    let mut offset = 0usize;
    for (name, t) in &vars {
        let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let data = Vec::<f32>::try_from(&t.flatten(0, -1))?;
        let len = data.len() * 4;
        header.insert(
            name.clone(),
            HeaderEntry::Tensor { data_offsets: [offset, offset + len], dtype: "F32", shape: t.size() },
        );
        offset += len;
        blobs.push(data);
    }
    let mut head = serde_json::to_vec(&header).map_err(|e| ModelError::Internal(e.to_string()))?;
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for data in blobs {
        for v in data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(out)
}

/// First 12 hex digits of the sha256 of `bytes`.
pub fn short_sha(bytes: &[u8]) -> String {
    let digest = sha256_hex(bytes);
    digest[..12].to_string()
}

pub use gmmas_contracts::sha256_hex;

/// A parse failure in words: too short to be safetensors at all, or a damaged file.
fn parse_error(bytes: &[u8], e: &safetensors::SafeTensorError) -> String {
    if bytes.len() < 8 {
        format!("not a safetensors file: {} bytes", bytes.len())
    } else {
        format!("corrupt safetensors file: {e}")
    }
}

/// The `__metadata__` map of safetensors `bytes` (empty when absent). The error text does not
/// include the file name (the caller adds it).
pub fn read_metadata(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| parse_error(bytes, &e))?;
    Ok(meta.metadata().clone().unwrap_or_default().into_iter().collect())
}

/// Each tensor's header entry as comparable text, and the metadata map, of a parsed header.
fn header_entries(bytes: &[u8]) -> Result<(usize, BTreeMap<String, String>), String> {
    let (n, meta) = SafeTensors::read_metadata(bytes).map_err(|e| parse_error(bytes, &e))?;
    let mut entries: BTreeMap<String, String> =
        meta.tensors().into_iter().map(|(name, info)| (name, format!("{info:?}"))).collect();
    let metadata: BTreeMap<&String, &String> = meta.metadata().iter().flatten().collect();
    entries.insert("__metadata__".into(), format!("{metadata:?}"));
    Ok((n, entries))
}

/// Where two safetensors files first differ, for error messages: the header, or the first
/// tensor (by name) whose values differ, with its first differing element and how many differ.
pub fn describe_difference(a: &[u8], b: &[u8]) -> String {
    let (na, ha) = match header_entries(a) {
        Ok(h) => h,
        Err(e) => return format!("first file: {e}"),
    };
    let (nb, hb) = match header_entries(b) {
        Ok(h) => h,
        Err(e) => return format!("second file: {e}"),
    };
    if ha != hb || a[..8 + na] != b[..8 + nb] {
        let keys: Vec<&String> = ha.keys().chain(hb.keys()).filter(|k| ha.get(*k) != hb.get(*k)).take(3).collect();
        return format!("headers differ (first entries: {keys:?})");
    }
    let (Ok(ta), Ok(tb)) = (SafeTensors::deserialize(a), SafeTensors::deserialize(b)) else {
        return "a file's tensors do not fit its header".into();
    };
    if a.len() != b.len() {
        return format!("data lengths differ: {} vs {}", a.len() - 8 - na, b.len() - 8 - nb);
    }
    let mut differing = Vec::new();
    let views: BTreeMap<String, _> = ta.tensors().into_iter().collect();
    for (name, va) in &views {
        let Ok(vb) = tb.tensor(name) else { continue };
        let (da, db) = (va.data(), vb.data());
        if da == db {
            continue;
        }
        let f = |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let pairs: Vec<(f32, f32)> = da.chunks_exact(4).zip(db.chunks_exact(4)).map(|(x, y)| (f(x), f(y))).collect();
        let n = pairs.iter().filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        let (i, (x, y)) = pairs
            .iter()
            .enumerate()
            .find(|(_, (x, y))| x.to_bits() != y.to_bits())
            .map_or((0, (0.0, 0.0)), |(i, p)| (i, *p));
        differing.push(format!("{name}: {n}/{} values differ, first at {i}: {x:e} vs {y:e}", pairs.len()));
    }
    if differing.is_empty() {
        "no tensor differs (bytes outside any tensor differ)".into()
    } else {
        format!("{} tensors differ; {}", differing.len(), differing.into_iter().take(5).collect::<Vec<_>>().join("; "))
    }
}

/// Copies the tensors of safetensors `bytes` into the variables of `vs`. Every variable must
/// be present with the same shape and no extra tensors may exist; errors name the offender.
/// The returned error text does not include the file name (the caller adds it).
pub fn load_safetensors(vs: &nn::VarStore, bytes: &[u8]) -> Result<(), String> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| parse_error(bytes, &e))?;
    let mut entries = BTreeMap::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(format!("tensor {name}: dtype {:?}, expected F32", view.dtype()));
        }
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        entries.insert(name, (shape, view));
    }
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    if let Some(extra) = entries.keys().find(|k| !vars.contains_key(*k)) {
        return Err(format!("unexpected tensor {extra} (not a variable of this model config)"));
    }
    for (name, var) in &vars {
        let Some((shape, _)) = entries.get(name) else {
            return Err(format!("missing tensor {name}"));
        };
        if *shape != var.size() {
            return Err(format!("wrong shape for var {name}: file has {shape:?}, model expects {:?}", var.size()));
        }
    }
    tch::no_grad(|| {
        for (name, var) in vars {
            let (shape, view) = &entries[&name];
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let src = Tensor::from_slice(&values).view(shape.as_slice()).to_device(var.device());
            let mut var = var;
            var.f_copy_(&src).map_err(|err| format!("tensor {name}: {err}"))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header keys are sorted at every level whatever serde_json's map order is (a workspace
    /// build turns its `preserve_order` on), so a save never changes a model's sha256.
    #[test]
    fn header_keys_are_sorted_at_every_level() {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let _b = root.zeros("b_bias", &[2]);
        let _a = root.zeros("a_weight", &[3, 1]);
        let meta = BTreeMap::from([("format".to_string(), "x".to_string()), ("alpha".to_string(), "y".to_string())]);
        let bytes = to_safetensors(&vs, &meta).unwrap();
        let start = 8 + SafeTensors::read_metadata(&bytes).unwrap().0;
        let head = String::from_utf8(bytes[8..start].to_vec()).unwrap();
        assert_eq!(
            head.trim_end(),
            r#"{"__metadata__":{"alpha":"y","format":"x"},"a_weight":{"data_offsets":[0,12],"dtype":"F32","shape":[3,1]},"b_bias":{"data_offsets":[12,20],"dtype":"F32","shape":[2]}}"#
        );
    }

    #[test]
    fn written_weights_load_back_and_damage_is_named() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().randn("w", &[2, 3], 0.0, 1.0);
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let bytes = to_safetensors(&vs, &meta).unwrap();
        assert_eq!(read_metadata(&bytes).unwrap(), meta);
        let other = nn::VarStore::new(Device::Cpu);
        let w2 = other.root().zeros("w", &[2, 3]);
        load_safetensors(&other, &bytes).unwrap();
        assert!(w.equal(&w2));
        let wrong = nn::VarStore::new(Device::Cpu);
        let _ = wrong.root().zeros("w", &[3, 2]);
        let e = load_safetensors(&wrong, &bytes).unwrap_err();
        assert!(e.contains("wrong shape for var w"), "{e}");
        let e = load_safetensors(&other, &bytes[..bytes.len() - 4]).unwrap_err();
        assert!(e.contains("corrupt safetensors file"), "{e}");
        let mut changed = bytes.clone();
        let last = changed.len() - 1;
        changed[last] ^= 0x40;
        assert!(
            describe_difference(&bytes, &changed).starts_with("1 tensors differ; w: 1/6 values differ, first at 5")
        );
    }
}
