//! `config.json` of a Hugging Face checkpoint → [`ModelConfig`] (spec §2).
//!
//! Only what the forward needs is kept. Fields that would change the architecture into something
//! we do not implement (ALiBi, biases, other norms or activations, tied or scaled logits, …) are
//! rejected with an error naming the field, so an unsupported checkpoint never runs silently wrong.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The model families dllm knows. Chosen from `model_type`, never from a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// LLaDA-8B (spec §2): no biases, full-precision RoPE, untied LM head.
    Llada,
    /// Dream-v0-7B (spec §3): the Qwen2.5 layout run bidirectionally; q/k/v biases, GQA, bf16
    /// RoPE tables, logits shifted by one position, its own decoding rules.
    Dream,
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::Llada => "LLaDA",
            Arch::Dream => "Dream",
        })
    }
}

pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llada", "Dream"];

/// Fields only a LLaDA (OLMo-style) config has, and fields only a Dream (Qwen2-style) config has:
/// a config holding fields of the other family is refused (which family is it really?).
const LLADA_ONLY: &[&str] = &[
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "mlp_hidden_size",
    "mlp_ratio",
    "block_type",
    "include_bias",
    "alibi",
];
const DREAM_ONLY: &[&str] =
    &["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size"];

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub mlp_hidden: usize,
    /// Rows of the embedding table and of the LM head (`embedding_size`, ≥ `vocab_size`): the
    /// argmax runs over all of them, as the reference's does (spec §4.1).
    pub n_logits: usize,
    pub vocab_size: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub max_seq_len: usize,
    pub mask_token_id: Option<u32>,
    /// `eos_token_id` as Hugging Face allows it: one id or a list (every one ends an answer; the
    /// first is the EOS that fills a canvas after early exit). Empty when absent.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// `quantization_config`: FP8 linears stored in the checkpoint (compressed-tensors, issue 17).
    pub quantization: Option<crate::model::quant::Fp8Scheme>,
}

/// A JSON token id: a non-negative integer that fits u32.
pub fn token_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// A token id, a list of token ids, or nothing (absent or null): every form Hugging Face allows
/// for `eos_token_id` (config.json and generation_config.json). Err: the offending value.
pub fn token_ids(v: Option<&Value>) -> std::result::Result<Vec<u32>, &Value> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(list)) => list.iter().map(|x| token_id(x).ok_or(x)).collect(),
        Some(x) => token_id(x).map(|id| vec![id]).ok_or(x),
    }
}

/// Typed field access that names the field in every error.
struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn err(&self, field: &str, msg: impl Into<String>) -> Error {
        Error::config(self.path, field, msg)
    }
    fn get(&self, field: &str) -> Option<&Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }
    fn usize(&self, field: &str) -> Result<usize> {
        match self.get(field) {
            None => Err(self.err(field, "missing")),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| self.err(field, format!("expected a positive integer, got {v}"))),
        }
    }
    fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(_) => self.usize(field).map(Some),
        }
    }
    fn opt_id(&self, field: &str) -> Result<Option<u32>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => {
                token_id(v).map(Some).ok_or_else(|| self.err(field, format!("expected a token id, got {v}")))
            }
        }
    }
    /// A token id or a list of them (Hugging Face's form of `eos_token_id`).
    fn ids(&self, field: &str) -> Result<Vec<u32>> {
        token_ids(self.get(field))
            .map_err(|v| self.err(field, format!("expected a token id or a list of them, got {v}")))
    }
    fn f32(&self, field: &str) -> Result<f32> {
        match self.get(field) {
            None => Err(self.err(field, "missing")),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .map(|x| x as f32)
                .ok_or_else(|| self.err(field, format!("expected a positive number, got {v}"))),
        }
    }
    fn str(&self, field: &str) -> Result<Option<&str>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(field, format!("expected a string, got {v}"))),
        }
    }
    fn flag(&self, field: &str) -> Result<bool> {
        match self.get(field) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(field, format!("expected true or false, got {v}"))),
        }
    }
    /// The head geometry both families share (spec §2, §3), named by the family's fields
    /// `[width, heads, kv heads]`: the heads divide the width, the KV heads the heads, and
    /// head_dim is even (RoPE rotates halves). Returns head_dim.
    fn check_heads(&self, [width, heads, kv]: [&str; 3], d: usize, n: usize, n_kv: usize) -> Result<usize> {
        if d % n != 0 {
            return Err(self.err(heads, format!("{n} does not divide {width} {d}")));
        }
        if n_kv > n || n % n_kv != 0 {
            return Err(self.err(kv, format!("{n_kv} must divide {heads} {n}")));
        }
        let head_dim = d / n;
        if head_dim % 2 != 0 {
            return Err(self.err(heads, format!("head_dim {head_dim} must be even for RoPE")));
        }
        Ok(head_dim)
    }
    /// A boolean that must be false (an architecture feature we do not implement).
    fn must_be_off(&self, field: &str, why: &str) -> Result<()> {
        if self.flag(field)? {
            return Err(self.err(field, format!("true is not supported: {why}")));
        }
        Ok(())
    }
    /// A string field that, when present, must be one of `allowed`.
    fn one_of(&self, field: &str, allowed: &[&str]) -> Result<()> {
        if let Some(s) = self.str(field)? {
            if !allowed.contains(&s) {
                return Err(self.err(field, format!("`{s}` is not supported (supported: {allowed:?})")));
            }
        }
        Ok(())
    }
}

impl ModelConfig {
    /// Read `config.json` of a checkpoint directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::parse(&path, &text)
    }

    /// Parse the text of a `config.json`; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(path, "(json)", format!("not valid JSON: {e}")))?;
        let Value::Object(map) = &value else {
            return Err(Error::config(path, "(json)", "expected a JSON object"));
        };
        let f = Fields { path, map };
        let model_type = f
            .str("model_type")?
            .ok_or_else(|| f.err("model_type", format!("missing (supported: {SUPPORTED_MODEL_TYPES:?})")))?;
        let (own, other, theirs) = match model_type {
            "llada" => (Arch::Llada, Arch::Dream, DREAM_ONLY),
            "Dream" | "dream" => (Arch::Dream, Arch::Llada, LLADA_ONLY),
            other => {
                return Err(f.err(
                    "model_type",
                    format!("`{other}` is not supported (supported: {SUPPORTED_MODEL_TYPES:?})"),
                ))
            }
        };
        if let Some(field) = theirs.iter().find(|k| f.get(k).is_some()) {
            return Err(f.err(
                field,
                format!(
                    "is a {other} config field, but model_type `{model_type}` says {own}: the config \
                     mixes the two families"
                ),
            ));
        }
        let mut cfg = match own {
            Arch::Llada => Self::llada(&f)?,
            Arch::Dream => Self::dream(&f)?,
        };
        cfg.quantization = crate::model::quant::parse(path, map)?;
        Ok(cfg)
    }

    /// Dream's Qwen2-style config (spec §3).
    fn dream(f: &Fields) -> Result<Self> {
        f.must_be_off("tie_word_embeddings", "Dream's lm_head is separate from embed_tokens (spec §3)")?;
        f.must_be_off("use_sliding_window", "Dream attends bidirectionally over the whole canvas")?;
        f.one_of("hidden_act", &["silu"])?;
        if f.get("rope_scaling").is_some() {
            return Err(
                f.err("rope_scaling", "RoPE scaling is not supported (Dream uses plain RoPE, spec §3)")
            );
        }
        if let Some(a) = f.get("architectures") {
            let ok = a.as_array().is_some_and(|v| v.iter().all(|x| x.as_str() == Some("DreamModel")));
            if !ok {
                return Err(f.err("architectures", format!("{a} is not [\"DreamModel\"]")));
            }
        }
        let d_model = f.usize("hidden_size")?;
        let n_layers = f.usize("num_hidden_layers")?;
        let n_heads = f.usize("num_attention_heads")?;
        let n_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
        let names = ["hidden_size", "num_attention_heads", "num_key_value_heads"];
        let head_dim = f.check_heads(names, d_model, n_heads, n_kv_heads)?;
        if let Some(h) = f.opt_usize("head_dim")? {
            if h != head_dim {
                return Err(f.err(
                    "head_dim",
                    format!("{h} differs from hidden_size / num_attention_heads = {head_dim}"),
                ));
            }
        }
        let vocab_size = f.usize("vocab_size")?;
        let cfg = ModelConfig {
            arch: Arch::Dream,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            mlp_hidden: f.usize("intermediate_size")?,
            n_logits: vocab_size,
            vocab_size,
            rms_eps: f.f32("rms_norm_eps")?,
            rope_theta: f.f32("rope_theta")?,
            max_seq_len: f.usize("max_position_embeddings")?,
            mask_token_id: f.opt_id("mask_token_id")?,
            eos_token_ids: f.ids("eos_token_id")?,
            pad_token_id: f.opt_id("pad_token_id")?,
            quantization: None,
        };
        cfg.check_ids(f)?;
        Ok(cfg)
    }

    fn check_ids(&self, f: &Fields) -> Result<()> {
        let ids = [("mask_token_id", self.mask_token_id), ("pad_token_id", self.pad_token_id)];
        let eos = self.eos_token_ids.iter().map(|&id| ("eos_token_id", Some(id)));
        for (field, id) in ids.into_iter().chain(eos) {
            if let Some(id) = id {
                if id as usize >= self.n_logits {
                    return Err(f.err(field, format!("{id} is outside the vocabulary ({})", self.n_logits)));
                }
            }
        }
        Ok(())
    }

    fn llada(f: &Fields) -> Result<Self> {
        // Architecture switches of the LLaDA (OLMo-derived) config that we do not implement.
        f.must_be_off("alibi", "LLaDA uses RoPE")?;
        f.must_be_off("include_bias", "LLaDA has no biases (spec §2)")?;
        f.must_be_off("include_qkv_bias", "LLaDA has no q/k/v biases (spec §2)")?;
        f.must_be_off("bias_for_layer_norm", "RMSNorm without bias (spec §2)")?;
        f.must_be_off("attention_layer_norm", "no q/k norms in LLaDA")?;
        f.must_be_off("input_emb_norm", "no embedding norm in LLaDA")?;
        f.must_be_off("scale_logits", "LLaDA logits are not scaled")?;
        f.must_be_off("weight_tying", "LLaDA's LM head `ff_out` is separate from `wte`")?;
        if f.get("clip_qkv").is_some() {
            return Err(f.err("clip_qkv", "q/k/v clipping is not supported"));
        }
        if f.get("rope").is_some() && !f.flag("rope")? {
            return Err(f.err("rope", "false is not supported: LLaDA uses RoPE (spec §2)"));
        }
        if f.get("rope_full_precision").is_some() && !f.flag("rope_full_precision")? {
            return Err(
                f.err("rope_full_precision", "false is not supported: LLaDA rotates q/k in fp32 (spec §2)")
            );
        }
        if f.get("layer_norm_with_affine").is_some() && !f.flag("layer_norm_with_affine")? {
            return Err(f.err(
                "layer_norm_with_affine",
                "false is not supported: LLaDA's RMSNorms have weights (spec §2)",
            ));
        }
        f.one_of("activation_type", &["silu", "swiglu"])?;
        f.one_of("block_type", &["llama"])?;
        f.one_of("layer_norm_type", &["rms", "rms_norm"])?;

        let d_model = f.usize("d_model")?;
        let n_layers = f.usize("n_layers")?;
        let n_heads = f.usize("n_heads")?;
        let n_kv_heads = match f.opt_usize("n_kv_heads")? {
            Some(n) => n,
            None if f.flag("multi_query_attention")? => 1,
            None => n_heads,
        };
        let head_dim = f.check_heads(["d_model", "n_heads", "n_kv_heads"], d_model, n_heads, n_kv_heads)?;
        let mlp_hidden = match f.opt_usize("mlp_hidden_size")? {
            Some(n) => n,
            None => d_model * f.usize("mlp_ratio")?,
        };
        let vocab_size = f.usize("vocab_size")?;
        let n_logits = f.opt_usize("embedding_size")?.unwrap_or(vocab_size);
        if n_logits < vocab_size {
            return Err(
                f.err("embedding_size", format!("{n_logits} is smaller than vocab_size {vocab_size}"))
            );
        }
        let rms_eps = f.f32("rms_norm_eps")?;
        let rope_theta = f.f32("rope_theta")?;
        let max_seq_len = f.usize("max_sequence_length")?;
        let cfg = ModelConfig {
            arch: Arch::Llada,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            mlp_hidden,
            n_logits,
            vocab_size,
            rms_eps,
            rope_theta,
            max_seq_len,
            mask_token_id: f.opt_id("mask_token_id")?,
            eos_token_ids: f.ids("eos_token_id")?,
            pad_token_id: f.opt_id("pad_token_id")?,
            quantization: None,
        };
        cfg.check_ids(f)?;
        Ok(cfg)
    }

    /// Columns of the fused q|k|v projection output.
    pub fn qkv_dim(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }

    /// Width of one K (or V) row in the cache.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLADA_8B: &str = r#"{"model_type": "llada", "d_model": 4096, "n_layers": 32,
        "n_heads": 32, "n_kv_heads": 32, "mlp_hidden_size": 12288, "activation_type": "silu",
        "block_type": "llama", "layer_norm_type": "rms", "rms_norm_eps": 1e-5, "rope": true,
        "rope_theta": 500000.0, "max_sequence_length": 4096, "vocab_size": 126464,
        "embedding_size": 126464, "weight_tying": false, "include_bias": false, "alibi": false,
        "mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081}"#;

    #[test]
    fn parses_the_llada_8b_config_of_spec_2() {
        let c = ModelConfig::parse(Path::new("config.json"), LLADA_8B).unwrap();
        assert_eq!((c.d_model, c.n_layers, c.n_heads, c.n_kv_heads), (4096, 32, 32, 32));
        assert_eq!((c.head_dim, c.mlp_hidden, c.n_logits), (128, 12288, 126464));
        assert_eq!(c.mask_token_id, Some(126336));
        assert_eq!(c.qkv_dim(), 3 * 4096);
    }

    fn err_of(patch: &str) -> String {
        let e = patched(LLADA_8B, patch);
        assert_ne!(e, "ok", "{patch} was accepted");
        e
    }

    #[test]
    fn unsupported_fields_are_named() {
        assert!(err_of(r#"{"alibi": true}"#).contains("`alibi`"));
        assert!(err_of(r#"{"include_bias": true}"#).contains("`include_bias`"));
        assert!(err_of(r#"{"activation_type": "gelu"}"#).contains("`activation_type`"));
        assert!(err_of(r#"{"weight_tying": true}"#).contains("`weight_tying`"));
        assert!(err_of(r#"{"model_type": "gpt2"}"#).contains("supported: [\"llada\", \"Dream\"]"));
        assert!(err_of(r#"{"n_kv_heads": 5}"#).contains("`n_kv_heads`"));
        assert!(err_of(r#"{"d_model": "big"}"#).contains("`d_model`"));
        assert!(err_of(r#"{"rms_norm_eps": null}"#).contains("`rms_norm_eps`: missing"));
        assert!(err_of(r#"{"mask_token_id": 200000}"#).contains("outside the vocabulary"));
        assert!(err_of(r#"{"eos_token_id": [126081, 200000]}"#).contains("`eos_token_id`: 200000 is outside"));
        assert!(err_of(r#"{"eos_token_id": "</s>"}"#).contains("a token id or a list of them"));
        assert!(err_of(r#"{"eos_token_id": [1, -2]}"#).contains("got -2"));
    }

    /// Hugging Face allows `eos_token_id` as one id or a list, in config.json as in
    /// generation_config.json.
    #[test]
    fn eos_token_id_is_an_id_or_a_list() {
        let mut v: Value = serde_json::from_str(LLADA_8B).unwrap();
        v["eos_token_id"] = serde_json::json!([126081, 126348]);
        let c = ModelConfig::parse(Path::new("config.json"), &v.to_string()).unwrap();
        assert_eq!(c.eos_token_ids, vec![126081, 126348]);
        v["eos_token_id"] = Value::Null;
        let c = ModelConfig::parse(Path::new("config.json"), &v.to_string()).unwrap();
        assert!(c.eos_token_ids.is_empty());
        let c = ModelConfig::parse(Path::new("config.json"), LLADA_8B).unwrap();
        assert_eq!(c.eos_token_ids, vec![126081]);
    }

    pub const DREAM_7B: &str = r#"{"architectures": ["DreamModel"], "model_type": "Dream",
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "max_position_embeddings": 131072, "vocab_size": 152064,
        "tie_word_embeddings": false, "hidden_act": "silu", "use_sliding_window": false,
        "rope_scaling": null, "mask_token_id": 151666, "pad_token_id": 151643,
        "bos_token_id": 151643, "eos_token_id": 151643, "torch_dtype": "bfloat16"}"#;

    #[test]
    fn parses_the_dream_7b_config_of_spec_3() {
        let c = ModelConfig::parse(Path::new("config.json"), DREAM_7B).unwrap();
        assert_eq!(c.arch, Arch::Dream);
        assert_eq!((c.d_model, c.n_layers, c.n_heads, c.n_kv_heads), (3584, 28, 28, 4));
        assert_eq!((c.head_dim, c.mlp_hidden, c.n_logits), (128, 18944, 152064));
        assert_eq!((c.rms_eps, c.rope_theta, c.max_seq_len), (1e-6, 1e6, 131072));
        assert_eq!((c.mask_token_id, c.eos_token_ids.clone()), (Some(151666), vec![151643]));
        assert_eq!(c.qkv_dim(), (28 + 8) * 128);
    }

    fn patched(base: &str, patch: &str) -> String {
        let mut v: Value = serde_json::from_str(base).unwrap();
        let p: Value = serde_json::from_str(patch).unwrap();
        for (k, x) in p.as_object().unwrap() {
            v[k] = x.clone();
        }
        match ModelConfig::parse(Path::new("config.json"), &v.to_string()) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn mixed_families_and_unsupported_dream_fields_are_named() {
        let e = patched(DREAM_7B, r#"{"d_model": 3584}"#);
        assert!(e.contains("`d_model`") && e.contains("mixes the two families"), "{e}");
        let e = patched(LLADA_8B, r#"{"num_hidden_layers": 32}"#);
        assert!(e.contains("`num_hidden_layers`") && e.contains("mixes the two families"), "{e}");
        assert!(patched(DREAM_7B, r#"{"tie_word_embeddings": true}"#).contains("`tie_word_embeddings`"));
        assert!(patched(DREAM_7B, r#"{"use_sliding_window": true}"#).contains("`use_sliding_window`"));
        assert!(patched(DREAM_7B, r#"{"hidden_act": "gelu"}"#).contains("`hidden_act`"));
        assert!(patched(DREAM_7B, r#"{"rope_scaling": {"type": "yarn"}}"#).contains("`rope_scaling`"));
        assert!(patched(DREAM_7B, r#"{"architectures": ["Qwen2ForCausalLM"]}"#).contains("`architectures`"));
        assert!(patched(DREAM_7B, r#"{"num_key_value_heads": 5}"#).contains("`num_key_value_heads`"));
        assert!(patched(DREAM_7B, r#"{"intermediate_size": null}"#).contains("`intermediate_size`: missing"));
        assert_eq!(patched(DREAM_7B, r#"{"model_type": "dream"}"#), "ok");
        let e = patched(DREAM_7B, r#"{"model_type": "qwen2"}"#);
        assert!(e.contains("supported: [\"llada\", \"Dream\"]"), "{e}");
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        let e = ModelConfig::parse(Path::new("x/config.json"), "{\"d_model\": 64,").unwrap_err();
        assert!(e.to_string().contains("x/config.json"), "{e}");
        assert!(e.to_string().contains("not valid JSON"), "{e}");
    }
}
