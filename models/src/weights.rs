//! Deterministic seeded initialisation and a byte-stable safetensors reader/writer for the
//! variables of a `VarStore` (names sorted, so equal weights always give equal bytes and sha).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
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
    let digest = hex::encode(Sha256::digest(bytes));
    digest[..12].to_string()
}

/// Full hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The `__metadata__` map of safetensors `bytes` (empty when absent). The error text does not
/// include the file name (the caller adds it).
pub fn read_metadata(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let header = read_header(bytes)?.0;
    match header.get("__metadata__") {
        None => Ok(BTreeMap::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("corrupt safetensors metadata: {e}")),
    }
}

/// Where two safetensors files first differ, for error messages: the header, or the first
/// tensor (by name) whose values differ, with its first differing element and how many differ.
pub fn describe_difference(a: &[u8], b: &[u8]) -> String {
    let (ha, sa) = match read_header(a) {
        Ok(h) => h,
        Err(e) => return format!("first file: {e}"),
    };
    let (hb, sb) = match read_header(b) {
        Ok(h) => h,
        Err(e) => return format!("second file: {e}"),
    };
    if ha != hb {
        let keys: Vec<&String> = ha.keys().chain(hb.keys()).filter(|k| ha.get(*k) != hb.get(*k)).take(3).collect();
        return format!("headers differ (first entries: {keys:?})");
    }
    let (da, db) = (&a[sa..], &b[sb..]);
    if da.len() != db.len() {
        return format!("data lengths differ: {} vs {}", da.len(), db.len());
    }
    let mut differing = Vec::new();
    for (name, v) in &ha {
        let Some(offs) = v.get("data_offsets").and_then(Value::as_array) else { continue };
        let (Some(s), Some(e)) = (offs.first().and_then(Value::as_u64), offs.get(1).and_then(Value::as_u64)) else {
            continue;
        };
        let (s, e) = (s as usize, (e as usize).min(da.len()));
        if s >= e || da[s..e] == db[s..e] {
            continue;
        }
        let f = |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let pairs: Vec<(f32, f32)> =
            da[s..e].chunks_exact(4).zip(db[s..e].chunks_exact(4)).map(|(x, y)| (f(x), f(y))).collect();
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

/// The parsed JSON header of safetensors `bytes` and the offset where the data starts.
fn read_header(bytes: &[u8]) -> Result<(Map<String, Value>, usize), String> {
    if bytes.len() < 8 {
        return Err(format!("not a safetensors file: {} bytes", bytes.len()));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(n);
    if n > (bytes.len() - 8) as u64 {
        return Err(format!("corrupt safetensors header: length {n} exceeds file size {}", bytes.len()));
    }
    let n = n as usize;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| format!("corrupt safetensors header: {e}"))?;
    Ok((header, 8 + n))
}

/// One tensor entry of a parsed safetensors file.
#[derive(Debug)]
struct Entry {
    shape: Vec<i64>,
    start: usize,
    end: usize,
}

/// Copies the tensors of safetensors `bytes` into the variables of `vs`. Every variable must
/// be present with the same shape and no extra tensors may exist; errors name the offender.
/// The returned error text does not include the file name (the caller adds it).
pub fn load_safetensors(vs: &nn::VarStore, bytes: &[u8]) -> Result<(), String> {
    let (header, start) = read_header(bytes)?;
    let data = &bytes[start..];
    let mut entries = BTreeMap::new();
    for (name, v) in &header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v.get("dtype").and_then(Value::as_str).unwrap_or("?");
        if dtype != "F32" {
            return Err(format!("tensor {name}: dtype {dtype}, expected F32"));
        }
        let shape: Option<Vec<i64>> =
            v.get("shape").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_i64).collect());
        let offs: Option<Vec<u64>> =
            v.get("data_offsets").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_u64).collect());
        let (Some(shape), Some(offs)) = (shape, offs) else {
            return Err(format!("tensor {name}: malformed header entry"));
        };
        let numel: i64 = shape.iter().product();
        if offs.len() != 2
            || offs[0] > offs[1]
            || offs[1] > data.len() as u64
            || shape.iter().any(|&d| d < 0)
            || (offs[1] - offs[0]) != numel as u64 * 4
        {
            return Err(format!("tensor {name}: data offsets {offs:?} do not fit shape {shape:?} in the file"));
        }
        entries.insert(name.clone(), Entry { shape, start: offs[0] as usize, end: offs[1] as usize });
    }
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    if let Some(extra) = entries.keys().find(|k| !vars.contains_key(*k)) {
        return Err(format!("unexpected tensor {extra} (not a variable of this model config)"));
    }
    for (name, var) in &vars {
        let Some(e) = entries.get(name) else {
            return Err(format!("missing tensor {name}"));
        };
        if e.shape != var.size() {
            return Err(format!("wrong shape for var {name}: file has {:?}, model expects {:?}", e.shape, var.size()));
        }
    }
    tch::no_grad(|| {
        for (name, var) in vars {
            let e = &entries[&name];
            let values: Vec<f32> =
                data[e.start..e.end].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let src = Tensor::from_slice(&values).view(e.shape.as_slice()).to_device(var.device());
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
        let (_, start) = read_header(&bytes).unwrap();
        let head = String::from_utf8(bytes[8..start].to_vec()).unwrap();
        assert_eq!(
            head.trim_end(),
            r#"{"__metadata__":{"alpha":"y","format":"x"},"a_weight":{"data_offsets":[0,12],"dtype":"F32","shape":[3,1]},"b_bias":{"data_offsets":[12,20],"dtype":"F32","shape":[2]}}"#
        );
    }
}
