//! FP8 checkpoints (issue 17): `dllm quantize --fp8` round-trips, a checkpoint laid out the way
//! llm-compressor writes one (made in Python without dllm) loads, and broken scales or
//! quantization configs dllm does not run are refused naming the tensor or field.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dllm::backend::cpu::Cpu;
use dllm::backend::Backend;
use dllm::decode::{DecodeOptions, Engine};
use dllm::model::quantize::{quantize_fp8, quantize_fp8_sharded};
use dllm::model::ModelFiles;
use dllm::transformer::{WeightFormat, Weights};

const LM_HEAD: &str = "model.transformer.ff_out.weight";
const Q0: &str = "model.transformer.blocks.0.q_proj.weight";

fn dense_dir() -> PathBuf {
    fixture("tiny-gqa").join("checkpoint")
}

/// The dense fixture with every linear quantized at load (`--weights fp8`).
fn fp8_at_load() -> Engine<Cpu> {
    let files = ModelFiles::open(&dense_dir()).unwrap();
    Engine::load_with_progress(Cpu::new(files.dtype, None), &files, WeightFormat::Fp8, &mut |_, _| {})
        .unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    vec![vec![5, 9, 14, 3, 22, 7], vec![11, 4, 8]]
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn dllm_quantize_round_trips_to_the_weights_quantized_at_load() {
    let out = std::env::temp_dir().join(format!("dllm-test-{}-quantized", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let sum = quantize_fp8(&dense_dir(), &out, &mut |_| {}).unwrap();
    let layers = ModelFiles::open(&dense_dir()).unwrap().config.n_layers;
    assert_eq!(
        (sum.quantized, sum.shards),
        (7 * layers + 1, 1),
        "q, k, v, o, gate, up, down, LM head: {sum:?}"
    );
    let t = read_tensors(&out.join("model.safetensors"));
    assert_eq!(t[Q0].dtype, safetensors::Dtype::F8_E4M3);
    assert_eq!(t[&format!("{Q0}_scale")].shape, vec![t[Q0].shape[0], 1]);
    assert_eq!(t["model.transformer.ln_f.weight"].dtype, safetensors::Dtype::F32, "norms stay as stored");
    let (files, stored) = cpu_engine(&out);
    assert!(files.config.quantization.is_some());
    let at_load = fp8_at_load();
    let p = prompts();
    let a = block_logits(&stored, &p);
    assert!(
        same_bits(&a, &block_logits(&at_load, &p)),
        "the written codes and scales are the ones used at load"
    );
    let (_, dense) = cpu_engine(&dense_dir());
    assert!(!same_bits(&a, &block_logits(&dense, &p)), "FP8 changes the logits (it did quantize)");
    let opts = DecodeOptions { gen_length: 32, ..DecodeOptions::default() };
    let tokens = |e: &Engine<Cpu>| {
        e.generate(&p, &opts).unwrap().rows.into_iter().map(|r| r.tokens).collect::<Vec<_>>()
    };
    assert_eq!(tokens(&stored), tokens(&at_load));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_sharded_quantized_checkpoint_loads_through_its_index() {
    let out = std::env::temp_dir().join(format!("dllm-test-{}-sharded", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut written = vec![];
    let sum =
        quantize_fp8_sharded(&dense_dir(), &out, 64 << 10, &mut |s| written.push(s.to_string())).unwrap();
    assert!(sum.shards > 2, "{sum:?}");
    let index = read_json(&out.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map[&format!("{Q0}_scale")], map[Q0], "a scale lies beside its weight");
    let last = format!("model-{n:05}-of-{n:05}.safetensors", n = sum.shards);
    assert!(out.join(last).is_file());
    let (_, sharded) = cpu_engine(&out);
    let p = prompts();
    assert!(same_bits(&block_logits(&sharded, &p), &block_logits(&fp8_at_load(), &p)));
    std::fs::remove_dir_all(&out).unwrap();
}

/// tests/fixtures/tiny-gqa-fp8 is tools/make_fp8_checkpoint.py's output: llm-compressor's layout
/// and quantization_config, its LM head left dense (`ignore: ["lm_head"]`).
#[test]
fn an_llm_compressor_style_checkpoint_loads_as_it_ships() {
    let (files, python) = cpu_engine(&fixture("tiny-gqa-fp8"));
    assert_eq!(files.config.quantization.as_ref().unwrap().ignore, vec!["lm_head".to_string()]);
    // the same codes and scales as dllm's quantization, the LM head dense
    let dense = ModelFiles::open(&dense_dir()).unwrap();
    let cpu = Cpu::new(dense.dtype, None);
    let mut w =
        Weights::load(&cpu, &dense.checkpoint, &dense.config, WeightFormat::Fp8, &mut |_, _| {}).unwrap();
    let (v, d) = (dense.config.n_logits, dense.config.d_model);
    w.lm_head = cpu.upload(&[dense.checkpoint.get(LM_HEAD).unwrap()], v, d).unwrap();
    assert_eq!(cpu.stored_dtype(&w.lm_head), dllm::dtype::DType::F32);
    let ours = Engine::from_parts(cpu, files.config.clone(), python.special.clone(), w);
    let p = prompts();
    assert!(same_bits(&block_logits(&python, &p), &block_logits(&ours, &p)));
}

/// A copy of the Python-made FP8 fixture with one tensor replaced.
fn with_tensor(tag: &str, name: &str, t: Option<RawTensor>) -> PathBuf {
    let dir = temp_copy(&fixture("tiny-gqa-fp8"), tag);
    let f = dir.join("model.safetensors");
    let mut all = read_tensors(&f);
    match t {
        Some(t) => all.insert(name.to_string(), t),
        None => all.remove(name),
    };
    write_tensors(&f, &all);
    dir
}

fn open_err(dir: &Path) -> String {
    let e = ModelFiles::open(dir).err().map(|e| e.to_string()).unwrap_or_default();
    std::fs::remove_dir_all(dir).unwrap();
    e
}

#[test]
fn bad_scales_are_refused_naming_the_tensor() {
    let scale = format!("{Q0}_scale");
    let rows = read_tensors(&fixture("tiny-gqa-fp8").join("model.safetensors"))[Q0].shape[0];
    let good = vec![0.01f32; rows];
    let mut nan = good.clone();
    nan[3] = f32::NAN;
    let mut zero = good.clone();
    zero[0] = 0.0;
    let cases = [
        ("shape", Some(from_f32s(&[rows, 2], &[good.clone(), good.clone()].concat())), "expected ["),
        ("nan", Some(from_f32s(&[rows, 1], &nan)), "row 3 has scale NaN"),
        ("zero", Some(from_f32s(&[rows, 1], &zero)), "row 0 has scale 0"),
        ("missing", None, "missing from the checkpoint"),
    ];
    for (tag, t, why) in cases {
        let e = open_err(&with_tensor(tag, &scale, t));
        assert!(e.contains(&scale) && e.contains(why), "{tag}: {e}");
    }
}

#[test]
fn fp8_is_refused_outside_the_linears_and_without_a_quantization_config() {
    let emb = "model.transformer.wte.weight";
    let t = read_tensors(&fixture("tiny-gqa-fp8").join("model.safetensors"));
    let as_fp8 = RawTensor {
        dtype: safetensors::Dtype::F8_E4M3,
        shape: t[emb].shape.clone(),
        data: vec![0x38; t[emb].shape.iter().product()],
    };
    let e = open_err(&with_tensor("emb", emb, Some(as_fp8)));
    assert!(e.contains(emb) && e.contains("only the linear weights"), "{e}");
    let dir = temp_copy(&fixture("tiny-gqa-fp8"), "noconfig");
    edit_config(&dir, |c| {
        c.as_object_mut().unwrap().remove("quantization_config");
    });
    let e = open_err(&dir);
    assert!(e.contains(Q0) && e.contains("F8_E4M3"), "{e}");
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut c = read_json(&p);
    f(&mut c);
    std::fs::write(&p, serde_json::to_string(&c).unwrap()).unwrap();
}

#[test]
fn quantization_configs_dllm_does_not_run_are_refused_naming_the_field() {
    let g = "/quantization_config/config_groups/group_0";
    let cases: [(&str, &str, serde_json::Value, &str); 6] = [
        ("method", "/quantization_config/quant_method", "gptq".into(), "quantization_config.quant_method"),
        ("static", &format!("{g}/input_activations/dynamic"), false.into(), "input_activations.dynamic"),
        ("block", &format!("{g}/weights/strategy"), "block".into(), "weights.strategy"),
        ("bits", &format!("{g}/weights/num_bits"), 4.into(), "weights.num_bits"),
        ("int", &format!("{g}/weights/type"), "int".into(), "weights.type"),
        ("weight-only", &format!("{g}/input_activations"), serde_json::Value::Null, "weight-only"),
    ];
    for (tag, pointer, value, want) in cases {
        let dir = temp_copy(&fixture("tiny-gqa-fp8"), tag);
        edit_config(&dir, |c| *c.pointer_mut(pointer).unwrap() = value);
        let e = open_err(&dir);
        assert!(e.contains(want) && e.contains("config.json"), "{tag}: {e}");
    }
}
