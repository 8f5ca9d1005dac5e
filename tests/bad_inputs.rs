//! Bad input gets an error that names the problem (file, tensor, field, option), never a panic.

mod common;
use common::*;

use dllm::cache::CacheMode;
use dllm::decode::DecodeOptions;
use dllm::decode::Rule;
use dllm::model::ModelFiles;

fn open_err(dir: &std::path::Path) -> String {
    match ModelFiles::open(dir) {
        Ok(_) => panic!("{} opened although it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn mha() -> std::path::PathBuf {
    fixture("tiny-mha").join("checkpoint")
}

const P: &str = "model.transformer.";

#[test]
fn truncated_safetensors_names_the_file() {
    let dir = temp_copy(&mha(), "truncated");
    let f = dir.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors file"), "{e}");
    // a header cut in the middle
    std::fs::write(&f, &bytes[..50]).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors file"), "{e}");
    // an empty file
    std::fs::write(&f, b"").unwrap();
    assert!(open_err(&dir).contains("not a valid safetensors file"));
}

#[test]
fn missing_tensor_is_named() {
    let dir = temp_copy(&mha(), "missing");
    let f = dir.join("model.safetensors");
    let mut t = read_tensors(&f);
    t.remove(&format!("{P}blocks.1.up_proj.weight")).unwrap();
    write_tensors(&f, &t);
    let e = open_err(&dir);
    assert!(e.contains("`model.transformer.blocks.1.up_proj.weight`") && e.contains("missing"), "{e}");
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let dir = temp_copy(&mha(), "shape");
    let f = dir.join("model.safetensors");
    let mut t = read_tensors(&f);
    let name = format!("{P}blocks.0.k_proj.weight");
    let v = f32s(&t[&name]);
    t.insert(name.clone(), from_f32s(&[32, 128], &v));
    write_tensors(&f, &t);
    let e = open_err(&dir);
    assert!(e.contains(&format!("`{name}`")) && e.contains("[32, 128]") && e.contains("[64, 64]"), "{e}");
}

#[test]
fn wrong_dtypes_are_named() {
    let dir = temp_copy(&mha(), "dtype");
    let f = dir.join("model.safetensors");
    let orig = read_tensors(&f);
    // an unsupported dtype
    let mut t = orig.clone();
    let name = format!("{P}ln_f.weight");
    t.get_mut(&name).unwrap().dtype = safetensors::Dtype::I32;
    write_tensors(&f, &t);
    let e = open_err(&dir);
    assert!(e.contains(&format!("`{name}`")) && e.contains("I32") && e.contains("not supported"), "{e}");
    // one tensor in another dtype than the rest
    let mut t = orig.clone();
    let v = f32s(&t[&name]);
    t.insert(
        name.clone(),
        RawTensor {
            dtype: safetensors::Dtype::F16,
            shape: vec![v.len()],
            data: v.iter().flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes()).collect(),
        },
    );
    write_tensors(&f, &t);
    let e = open_err(&dir);
    assert!(e.contains(&format!("`{name}`")) && e.contains("mixed dtypes"), "{e}");
}

#[test]
fn unexpected_tensor_is_named() {
    let dir = temp_copy(&mha(), "extra");
    let f = dir.join("model.safetensors");
    let mut t = read_tensors(&f);
    t.insert(format!("{P}blocks.0.q_proj.bias"), from_f32s(&[64], &[0.0; 64]));
    write_tensors(&f, &t);
    let e = open_err(&dir);
    assert!(e.contains("blocks.0.q_proj.bias") && e.contains("unexpected"), "{e}");
}

#[test]
fn malformed_or_unsupported_config_names_the_field() {
    let dir = temp_copy(&mha(), "config");
    let cfg = dir.join("config.json");
    let orig = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, &orig[..orig.len() / 2]).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("config.json") && e.contains("not valid JSON"), "{e}");
    for (field, value, expect) in [
        ("alibi", "true", "`alibi`"),
        ("include_bias", "true", "`include_bias`"),
        ("activation_type", "\"gelu\"", "`activation_type`"),
        ("d_model", "-3", "`d_model`"),
        ("n_heads", "5", "`n_heads`"),
        ("model_type", "\"bert\"", "`model_type`"),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&orig).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        std::fs::write(&cfg, v.to_string()).unwrap();
        let e = open_err(&dir);
        assert!(e.contains(expect), "{field}: {e}");
    }
    std::fs::remove_file(&cfg).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn missing_files_are_named() {
    let dir = temp_copy(&mha(), "nofiles");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert!(open_err(&dir).contains("tokenizer.json"));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(open_err(&dir).contains("no model.safetensors or model.safetensors.index.json"));
    assert!(open_err(&dir.join("nope")).contains("nope"));
}

/// A sharded checkpoint (index + two shards, as HF ships big models) loads and decodes exactly
/// like the single file; a shard the index names but that is missing is an error naming it.
#[test]
fn sharded_checkpoint_loads_and_broken_index_is_named() {
    let src = mha();
    let dir = temp_copy(&src, "shards");
    let all = read_tensors(&dir.join("model.safetensors"));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (mut a, mut b) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
    let mut map = serde_json::Map::new();
    for (i, (n, t)) in all.into_iter().enumerate() {
        let file =
            if i % 2 == 0 { "model-00001-of-00002.safetensors" } else { "model-00002-of-00002.safetensors" };
        map.insert(n.clone(), file.into());
        if i % 2 == 0 {
            a.insert(n, t)
        } else {
            b.insert(n, t)
        };
    }
    write_tensors(&dir.join("model-00001-of-00002.safetensors"), &a);
    write_tensors(&dir.join("model-00002-of-00002.safetensors"), &b);
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let (_, sharded) = cpu_engine(&dir);
    let (_, single) = cpu_engine(&src);
    let prompt = vec![72, 105, 33];
    let opts = DecodeOptions { gen_length: 64, steps: 64, ..DecodeOptions::default() };
    assert_eq!(
        sharded.generate(std::slice::from_ref(&prompt), &opts).unwrap().rows,
        single.generate(&[prompt], &opts).unwrap().rows
    );

    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    std::fs::write(dir.join("model.safetensors.index.json"), "{\"weight_map\": 3}").unwrap();
    assert!(open_err(&dir).contains("weight_map"));
}

#[test]
fn impossible_decoding_options_are_refused_by_name() {
    let (_, engine) = cpu_engine(&mha());
    let prompt = vec![vec![72u32, 105]];
    let base = DecodeOptions { gen_length: 96, steps: 96, ..DecodeOptions::default() };
    let err = |o: DecodeOptions, p: &[Vec<u32>]| engine.generate(p, &o).unwrap_err().to_string();
    let e = err(DecodeOptions { gen_length: 100, ..base.clone() }, &prompt);
    assert!(e.contains("gen_length 100 is not a multiple of block_length 32"), "{e}");
    let e = err(DecodeOptions { steps: 50, ..base.clone() }, &prompt);
    assert!(e.contains("steps 50") && e.contains("number of blocks 3"), "{e}");
    for t in [0.0, -0.5, 1.5, f64::NAN] {
        let e = err(DecodeOptions { rule: Rule::Threshold(t), ..base.clone() }, &prompt);
        assert!(e.contains("threshold") && e.contains("(0, 1]"), "{e}");
    }
    for f in [0.0, -1.0, f64::INFINITY] {
        let e = err(DecodeOptions { rule: Rule::Factor(f), ..base.clone() }, &prompt);
        assert!(e.contains("factor"), "{e}");
    }
    let e = err(DecodeOptions { temperature: -1.0, ..base.clone() }, &prompt);
    assert!(e.contains("temperature"), "{e}");
    let long = vec![vec![65u32; 450]];
    let e = err(base.clone(), &long);
    assert!(e.contains("450 tokens") && e.contains("max_sequence_length 512"), "{e}");
    let e = err(base.clone(), &[vec![]]);
    assert!(e.contains("prompt 0 is empty"), "{e}");
    let e = err(base.clone(), &[vec![9999]]);
    assert!(e.contains("9999") && e.contains("vocabulary"), "{e}");
    // threshold 1.0 is allowed (a boundary of (0, 1])
    let ok = DecodeOptions { rule: Rule::Threshold(1.0), cache: CacheMode::Prefix, ..base };
    assert!(engine.generate(&prompt, &ok).is_ok());
}

/// Non-finite logits (a broken checkpoint) end the request with an error naming them, instead of
/// decoding NaN into token 0.
#[test]
fn non_finite_logits_are_an_error_not_garbage() {
    let (_, engine) = cpu_engine(&nan_checkpoint("nan-lib"));
    for cache in [CacheMode::None, CacheMode::Dual] {
        let opts = DecodeOptions { gen_length: 64, steps: 64, cache, ..DecodeOptions::default() };
        let e = engine.generate(&[vec![72, 105], vec![33]], &opts).unwrap_err().to_string();
        assert!(e.contains("non-finite logits") && e.contains("prompt 0"), "{e}");
    }
}

/// Special ids in every form Hugging Face allows, in every file that may carry them: config.json
/// and generation_config.json `eos_token_id` as an id or a list (every one ends an answer);
/// tokenizer_config.json and special_tokens_map.json tokens as strings or AddedToken objects.
/// Malformed forms are named.
#[test]
fn special_ids_in_every_hugging_face_form() {
    let dir = temp_copy(&mha(), "eos-forms");
    let patch = |file: &str, k: &str, v: serde_json::Value| {
        let path = dir.join(file);
        let mut j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or("{}".into())).unwrap();
        j[k] = v;
        std::fs::write(&path, j.to_string()).unwrap();
    };
    patch("config.json", "eos_token_id", serde_json::json!([257, 270]));
    patch("generation_config.json", "eos_token_id", serde_json::json!([257, 271]));
    let eos = serde_json::json!({"content": "<|endoftext|>", "lstrip": false, "special": true, "__type": "AddedToken"});
    patch("tokenizer_config.json", "eos_token", eos.clone());
    patch("special_tokens_map.json", "eos_token", eos);
    let files = ModelFiles::open(&dir).unwrap();
    let sp = &files.tokenizer.special;
    assert_eq!(sp.eos, 257);
    for id in [257, 270, 271, 283] {
        assert!(sp.stop.contains(&id), "{id} ends an answer: {:?}", sp.stop);
    }
    patch("tokenizer_config.json", "eos_token", serde_json::json!(5));
    assert!(open_err(&dir).contains("`eos_token`"), "{}", open_err(&dir));
    patch("tokenizer_config.json", "eos_token", serde_json::json!("<|endoftext|>"));
    patch("generation_config.json", "eos_token_id", serde_json::json!(["</s>"]));
    let e = open_err(&dir);
    assert!(e.contains("generation_config.json") && e.contains("`eos_token_id`"), "{e}");
    patch("generation_config.json", "eos_token_id", serde_json::json!(257));
    patch("config.json", "eos_token_id", serde_json::json!({"id": 257}));
    let e = open_err(&dir);
    assert!(e.contains("config.json") && e.contains("`eos_token_id`"), "{e}");
}
