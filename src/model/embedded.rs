//! The small trained model that ships inside dllm (`models/dllm-arith-tiny`, trained by
//! `tools/train_arith.py`) and its held-out problems (`data/arith`), so `dllm generate` and
//! `dllm eval` work on a fresh machine with no download. The checkpoint files are compiled into
//! the binary and written once to a cache directory (named by their content hash), from which
//! the normal loader opens them: the embedded model goes through exactly the path a user's
//! checkpoint does.

use std::path::PathBuf;

use crate::error::{Error, Result};

pub const NAME: &str = "dllm-arith-tiny";

const FILES: &[(&str, &[u8])] = &[
    ("config.json", include_bytes!("../../models/dllm-arith-tiny/config.json")),
    ("generation_config.json", include_bytes!("../../models/dllm-arith-tiny/generation_config.json")),
    ("model.safetensors", include_bytes!("../../models/dllm-arith-tiny/model.safetensors")),
    ("special_tokens_map.json", include_bytes!("../../models/dllm-arith-tiny/special_tokens_map.json")),
    ("tokenizer.json", include_bytes!("../../models/dllm-arith-tiny/tokenizer.json")),
    ("tokenizer_config.json", include_bytes!("../../models/dllm-arith-tiny/tokenizer_config.json")),
];

/// The held-out problems (GSM8K-format JSONL; `eval::datasets` parses them).
pub const TEST_JSONL: &str = include_str!("../../data/arith/test.jsonl");
/// Worked examples for few-shot prompts (same format).
pub const FEWSHOT_JSONL: &str = include_str!("../../data/arith/fewshot.jsonl");

/// FNV-1a over every file's name and bytes.
fn content_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, bytes) in FILES {
        for b in name.as_bytes().iter().chain(bytes.iter()) {
            h = (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("DLLM_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("dllm");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache/dllm");
    }
    std::env::temp_dir().join("dllm-cache")
}

/// The embedded checkpoint as a directory on disk (written on first use).
pub fn model_dir() -> Result<PathBuf> {
    let dir = cache_root().join(format!("{NAME}-{:016x}", content_hash()));
    if FILES.iter().all(|(n, b)| std::fs::metadata(dir.join(n)).is_ok_and(|m| m.len() == b.len() as u64)) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    for (name, bytes) in FILES {
        // write then rename, so a concurrent reader never sees half a file
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, dir.join(name)).map_err(|e| Error::io(&dir.join(name), e))?;
    }
    Ok(dir)
}
