//! `quantization_config` of a config.json: the one scheme dllm runs, FP8 W8A8 in the
//! compressed-tensors layout Hugging Face tools (llm-compressor, vLLM) read and write (issue 17):
//!
//! - `quant_method` "compressed-tensors", `format` "float-quantized" (or "naive-quantized");
//! - every config group: `weights` = 8-bit `float`, symmetric, `strategy` "channel" (one scale per
//!   output row, the tensor `<weight name>_scale`, shape `[rows, 1]`), not dynamic;
//!   `input_activations` = 8-bit `float`, symmetric, `strategy` "token", `dynamic` true (one scale
//!   per row computed at run time); without them (weight-only FP8) the checkpoint is refused;
//! - linears listed in `ignore` (e.g. "lm_head") stay in the checkpoint's dtype: a tensor's dtype
//!   (F8_E4M3 or not) says which, `model::layout` checks it.
//!
//! Anything else (static activation scales, block or tensor scales, other bit widths, integer
//! types, asymmetric scales) is refused naming the field.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// The FP8 scheme of `crate::fp8`, read from a checkpoint's config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fp8Scheme {
    /// Module names or `re:` patterns left unquantized, as the config lists them.
    pub ignore: Vec<String>,
}

/// Parse `quantization_config` (absent or null: `Ok(None)`); `path` names the file in errors.
pub fn parse(path: &Path, config: &Map<String, Value>) -> Result<Option<Fp8Scheme>> {
    let Some(q) = config.get("quantization_config").filter(|v| !v.is_null()) else { return Ok(None) };
    let field = |f: &str| format!("quantization_config.{f}");
    let err = |f: &str, msg: String| Error::config(path, &field(f), msg);
    let Some(q) = q.as_object() else { return Err(err("", format!("expected an object, got {q}"))) };
    let want_str = |f: &str, allowed: &[&str]| -> Result<()> {
        match q.get(f).and_then(Value::as_str) {
            Some(s) if allowed.contains(&s) => Ok(()),
            other => Err(err(f, format!("{other:?} is not supported (dllm runs {allowed:?})"))),
        }
    };
    want_str("quant_method", &["compressed-tensors"])?;
    want_str("format", &["float-quantized", "naive-quantized"])?;
    if let Some(status) = q.get("quantization_status").and_then(Value::as_str) {
        if status != "compressed" && status != "frozen" {
            return Err(err(
                "quantization_status",
                format!("`{status}`: the weights are not stored quantized"),
            ));
        }
    }
    let Some(groups) = q.get("config_groups").and_then(Value::as_object).filter(|g| !g.is_empty()) else {
        return Err(err("config_groups", "missing or empty".into()));
    };
    for (name, g) in groups {
        group(path, &field(&format!("config_groups.{name}")), g)?;
    }
    let ignore = match q.get("ignore") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| err("ignore", format!("{v} is not a string")))
            })
            .collect::<Result<_>>()?,
        Some(v) => return Err(err("ignore", format!("expected a list of module names, got {v}"))),
    };
    Ok(Some(Fp8Scheme { ignore }))
}

/// One config group: what it targets, its weights' and its input activations' scheme.
fn group(path: &Path, at: &str, g: &Value) -> Result<()> {
    let err = |f: &str, msg: String| Error::config(path, &format!("{at}.{f}"), msg);
    let targets = g.get("targets").and_then(Value::as_array);
    if !targets.is_some_and(|t| t.iter().all(|x| x.as_str() == Some("Linear"))) {
        return Err(err("targets", format!("{:?}: only [\"Linear\"] is supported", g.get("targets"))));
    }
    if g.get("output_activations").is_some_and(|v| !v.is_null()) {
        return Err(err("output_activations", "quantized outputs are not supported".into()));
    }
    args(path, &format!("{at}.weights"), g.get("weights"), "channel", false)?;
    match g.get("input_activations").filter(|v| !v.is_null()) {
        None => {
            Err(err("input_activations", "absent: weight-only FP8 is not supported (dllm runs W8A8)".into()))
        }
        some => args(path, &format!("{at}.input_activations"), some, "token", true),
    }
}

/// One QuantizationArgs object: 8-bit float, symmetric, the given strategy and dynamic flag.
fn args(path: &Path, at: &str, a: Option<&Value>, strategy: &str, dynamic: bool) -> Result<()> {
    let err = |f: &str, msg: String| Error::config(path, &format!("{at}.{f}"), msg);
    let Some(a) = a.and_then(Value::as_object) else {
        return Err(Error::config(path, at, "missing"));
    };
    let expect = [
        ("num_bits", json!(8)),
        ("type", json!("float")),
        ("strategy", json!(strategy)),
        ("symmetric", json!(true)),
        ("dynamic", json!(dynamic)),
    ];
    for (f, want) in expect {
        let got = a.get(f).unwrap_or(&Value::Null);
        // `dynamic` may be omitted for weights (false), `symmetric` defaults to true
        let defaulted = got.is_null() && (f == "symmetric" || f == "dynamic" && !dynamic);
        if got != &want && !defaulted {
            return Err(err(f, format!("{got} is not supported (dllm runs {want})")));
        }
    }
    for f in ["group_size", "block_structure"] {
        if a.get(f).is_some_and(|v| !v.is_null()) {
            return Err(err(f, "group or block scales are not supported (one scale per row)".into()));
        }
    }
    Ok(())
}

/// The `quantization_config` `dllm quantize --fp8` writes: per-channel e4m3 weights, dynamic
/// per-token e4m3 activations, every linear quantized (the LM head included).
pub fn config_json() -> Value {
    let args = |strategy: &str, dynamic: bool| {
        json!({"num_bits": 8, "type": "float", "strategy": strategy, "symmetric": true,
               "dynamic": dynamic, "group_size": null, "block_structure": null})
    };
    json!({
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": args("channel", false),
            "input_activations": args("token", true),
            "output_activations": null,
        }},
        "ignore": [],
    })
}
