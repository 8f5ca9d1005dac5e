//! Shared helpers of the integration tests: fixture paths, engines, golden cases.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

use dllm::backend::cpu::Cpu;
use dllm::backend::{Backend, Step, Window};
use dllm::cache::CacheMode;
use dllm::cache::KvCache;
use dllm::decode::Rule;
use dllm::decode::{DecodeOptions, Engine};
use dllm::model::ModelFiles;
use dllm::transformer::{self, Workspace};

/// A file under tests/fixtures. Test binaries staged onto another machine (the GPU check) run
/// from the repository root there, where the build machine's path does not exist.
pub fn fixture(rel: &str) -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let root = if built.is_dir() { built } else { PathBuf::from("tests/fixtures") };
    root.join(rel)
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn cpu_engine(dir: &Path) -> (ModelFiles, Engine<Cpu>) {
    let files = ModelFiles::open(dir).unwrap_or_else(|e| panic!("{e}"));
    let engine = Engine::new(Cpu::new(files.dtype, None), &files).unwrap();
    (files, engine)
}

/// One golden case (the official file and ours share these fields).
pub struct Case {
    pub name: String,
    pub prompt: Vec<u32>,
    pub opts: DecodeOptions,
    pub tokens: Vec<u32>,
    pub nfe: usize,
    pub kinds: String,
    pub commits: Vec<u32>,
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Cases of a goldens file; `nfe_field` names the NFE to expect.
pub fn cases(file: &Path, nfe_field: &str) -> Vec<Case> {
    let doc = read_json(file);
    let prompts: std::collections::HashMap<String, Vec<u32>> = doc["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_string(), ids(&p["ids"])))
        .collect();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let rule = if let Some(t) = c["threshold"].as_f64() {
                Rule::Threshold(t)
            } else if let Some(f) = c["factor"].as_f64() {
                Rule::Factor(f)
            } else {
                Rule::Quota
            };
            let cache = match c["cache"].as_str().unwrap() {
                "none" => CacheMode::None,
                "prefix" => CacheMode::Prefix,
                "dual" => CacheMode::Dual,
                other => panic!("unknown cache {other}"),
            };
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                prompt: prompts[c["prompt"].as_str().unwrap()].clone(),
                opts: DecodeOptions {
                    gen_length: c["gen_length"].as_u64().unwrap() as usize,
                    block_length: c["block_length"].as_u64().unwrap() as usize,
                    steps: c["steps"].as_u64().unwrap() as usize,
                    cache,
                    rule,
                    temperature: 0.0,
                    seed: 0,
                    early_exit: false,
                },
                tokens: ids(&c["tokens"]),
                nfe: c[nfe_field].as_u64().unwrap() as usize,
                kinds: c["forward_kinds"].as_str().unwrap().to_string(),
                commits: ids(&c["commits_per_forward"])
                    .into_iter()
                    // The official prefix/dual loops spend one forward (committing nothing) on
                    // a block their block-start forward finished; an engine that checks first
                    // (spec §8) does not, so those zero entries are not expected.
                    .filter(|&n| n > 0 || c["nfe"] == c[nfe_field])
                    .collect(),
            }
        })
        .collect()
}

/// Run every case on `engine`; return the names of those that differ, with what differed.
pub fn mismatches(engine: &Engine<Cpu>, cases: &[Case]) -> Vec<String> {
    let mut bad = vec![];
    for c in cases {
        let out = engine.generate(std::slice::from_ref(&c.prompt), &c.opts).unwrap();
        let r = &out.rows[0];
        if r.tokens != c.tokens {
            let first = r.tokens.iter().zip(&c.tokens).position(|(a, b)| a != b);
            bad.push(format!("{}: tokens differ (first at generated position {first:?})", c.name));
        } else if r.nfe != c.nfe {
            bad.push(format!("{}: nfe {} expected {}", c.name, r.nfe, c.nfe));
        } else if r.commits != c.commits {
            bad.push(format!("{}: commits {:?} expected {:?}", c.name, r.commits, c.commits));
        }
    }
    bad
}

/// Decode the three prompts of every mode (cases named `p0/…`, `p1/…`, `p2/…`) as one batch and
/// check each row against its case (= the row alone): tokens, NFE, commits. Returns the number
/// of modes checked.
pub fn assert_batches_equal_alone(engine: &Engine<Cpu>, cases: &[Case], label: &str) -> usize {
    let mut groups = 0;
    for p0 in cases.iter().filter(|c| c.name.starts_with("p0/")) {
        let mode = &p0.name[3..];
        let group: Vec<&Case> = cases.iter().filter(|c| &c.name[3..] == mode).collect();
        assert_eq!(group.len(), 3, "{label} {mode}");
        let lens: Vec<usize> = group.iter().map(|c| c.prompt.len()).collect();
        assert!(lens[0] != lens[1] && lens[1] != lens[2], "{label}: prompt lengths {lens:?}");
        let prompts: Vec<Vec<u32>> = group.iter().map(|c| c.prompt.clone()).collect();
        let out = engine.generate(&prompts, &p0.opts).unwrap();
        for (row, c) in out.rows.iter().zip(&group) {
            assert_eq!(row.tokens, c.tokens, "{label} batch row {}", c.name);
            assert_eq!(row.nfe, c.nfe, "{label} batch row {}", c.name);
            assert_eq!(row.commits, c.commits, "{label} batch row {}", c.name);
        }
        groups += 1;
    }
    groups
}

/// A fresh copy of a fixture checkpoint in a temporary directory, for tests that damage or
/// change it.
pub fn temp_copy(src: &Path, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("dllm-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    dst
}

/// A copy of the tiny-mha checkpoint whose final norm is NaN: a broken model whose logits are
/// all NaN.
pub fn nan_checkpoint(tag: &str) -> PathBuf {
    let dir = temp_copy(&fixture("tiny-mha").join("checkpoint"), tag);
    let f = dir.join("model.safetensors");
    let mut t = read_tensors(&f);
    let name = "model.transformer.ln_f.weight".to_string();
    let n = f32s(&t[&name]).len();
    t.insert(name, from_f32s(&[n], &vec![f32::NAN; n]));
    write_tensors(&f, &t);
    dir
}

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

/// Every prompt of a goldens document (`prompts`: id, text, chat, ids) tokenizes to its ids.
pub fn assert_prompts_tokenize(doc: &Value, tok: &dllm::model::Tokenizer, label: &str) {
    for p in doc["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let want: Vec<u32> =
            p["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let got =
            if p["chat"].as_bool().unwrap() { tok.encode_chat(text) } else { tok.encode(text) }.unwrap();
        assert_eq!(got, want, "{label} prompt {}", p["id"]);
    }
}
