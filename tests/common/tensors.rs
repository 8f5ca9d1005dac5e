//! Safetensors files as raw tensors (to damage or convert checkpoints), logits of a forward, and
//! the numeric helpers the tolerance checks use.

use std::path::Path;

use dllm::backend::{Backend, Step, Window};
use dllm::cache::KvCache;
use dllm::decode::Engine;
use dllm::transformer::{self, Workspace};

/// A tensor as raw little-endian bytes.
#[derive(Clone)]
pub struct RawTensor {
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl safetensors::View for &RawTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data[..]).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

pub fn read_tensors(file: &Path) -> std::collections::BTreeMap<String, RawTensor> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, RawTensor { dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() }))
        .collect()
}

pub fn write_tensors(file: &Path, tensors: &std::collections::BTreeMap<String, RawTensor>) {
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.clone(), t)), None).unwrap();
    std::fs::write(file, bytes).unwrap();
}

pub fn f32s(t: &RawTensor) -> Vec<f32> {
    assert_eq!(t.dtype, safetensors::Dtype::F32);
    t.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub fn from_f32s(shape: &[usize], v: &[f32]) -> RawTensor {
    RawTensor {
        dtype: safetensors::Dtype::F32,
        shape: shape.to_vec(),
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Round every F32 tensor of a checkpoint to BF16 (the layout of a real LLaDA checkpoint).
pub fn to_bf16(file: &Path) {
    let mut t = read_tensors(file);
    for v in t.values_mut() {
        let bits: Vec<u8> =
            f32s(v).iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect();
        *v = RawTensor { dtype: safetensors::Dtype::BF16, shape: v.shape.clone(), data: bits };
    }
    write_tensors(file, &t);
}

/// Logits of the first block (32 rows per prompt) after one full forward over `prompts` followed
/// by 64 masks, on any backend, in host memory.
pub fn block_logits<B: Backend>(engine: &Engine<B>, prompts: &[Vec<u32>]) -> Vec<f32> {
    let be = &engine.backend;
    let cfg = &engine.config;
    let batch = prompts.len();
    let p_max = prompts.iter().map(Vec::len).max().unwrap();
    let canvas_len = p_max + 64;
    let mut host = vec![];
    let mut pads = vec![];
    for p in prompts {
        pads.push((p_max - p.len()) as u32);
        host.extend(std::iter::repeat_n(engine.special.pad, p_max - p.len()));
        host.extend_from_slice(p);
        host.extend(std::iter::repeat_n(engine.special.mask, 64));
    }
    let mut ids = be.ids(host.len()).unwrap();
    be.write_ids(&mut ids, &host).unwrap();
    pads.extend(std::iter::repeat_n(canvas_len as u32, batch)); // row ends: the whole canvas
    let mut pad_ids = be.ids(2 * batch).unwrap();
    be.write_ids(&mut pad_ids, &pads).unwrap();
    let mut ws = Workspace::new(be, cfg, batch, canvas_len, 32).unwrap();
    let mut cache = KvCache::new(be, cfg, batch, canvas_len).unwrap();
    let step = Step { batch, canvas: canvas_len, win: Window { start: 0, len: canvas_len } };
    transformer::forward(be, cfg, &engine.weights, &mut ws, &mut cache, &ids, &pad_ids, step, None).unwrap();
    transformer::block_logits(
        be,
        cfg,
        &engine.weights,
        &mut ws,
        step,
        Window { start: p_max, len: 32 },
        None,
    )
    .unwrap();
    be.to_host(&ws.logits, batch * 32).unwrap()
}

pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().max(1e-30);
    (num / den).sqrt()
}

/// Deterministic pseudo-random values, uniform in [-scale, scale] (xorshift64).
pub fn rand_uniform(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            ((z >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}
