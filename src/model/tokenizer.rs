//! `tokenizer.json` (HF `tokenizers`, no network), the LLaDA chat template (spec §2), and the
//! special token ids, read from the checkpoint's own files (`config.json`,
//! `generation_config.json`, `tokenizer_config.json`, the vocabulary) and never hard-coded: a tiny
//! test model has ids of its own.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    /// The mask token that fills the canvas.
    pub mask: u32,
    /// End of sequence; also the left-padding token of a batch (spec §6).
    pub eos: u32,
    pub pad: u32,
    pub bos: Option<u32>,
    /// Every id that ends an answer: EOS, `<|eot_id|>`, and generation_config's eos ids.
    pub stop: Vec<u32>,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub special: SpecialIds,
    bos_text: Option<String>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::tokenizer(path, format!("not valid JSON: {e}")))
}

/// `"<|x|>"` or `{"content": "<|x|>", ...}` as tokenizer_config.json writes special tokens.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// An id or a list of ids (generation_config.json allows both for eos_token_id).
fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().and_then(|x| u32::try_from(x).ok()).into_iter().collect(),
        Some(Value::Array(a)) => {
            a.iter().filter_map(|x| x.as_u64()).filter_map(|x| u32::try_from(x).ok()).collect()
        }
        _ => vec![],
    }
}

impl Tokenizer {
    pub fn load(dir: &Path, cfg: &ModelConfig) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::tokenizer(&path, "missing (dllm needs the checkpoint's tokenizer.json)"));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::tokenizer(&path, format!("cannot load: {e}")))?;
        let tok_cfg_path = dir.join("tokenizer_config.json");
        let tok_cfg = read_json(&tok_cfg_path)?.unwrap_or(Value::Null);
        let gen_cfg_path = dir.join("generation_config.json");
        let gen_cfg = read_json(&gen_cfg_path)?.unwrap_or(Value::Null);
        let lookup = |text: &str| inner.token_to_id(text);

        let mask = cfg.mask_token_id.or_else(|| lookup("<|mdm_mask|>")).ok_or_else(|| {
            Error::config(
                &dir.join("config.json"),
                "mask_token_id",
                "missing, and the vocabulary has no <|mdm_mask|> token",
            )
        })?;
        let eos = cfg
            .eos_token_id
            .or_else(|| ids_of(gen_cfg.get("eos_token_id")).first().copied())
            .or_else(|| token_text(tok_cfg.get("eos_token")).and_then(|t| lookup(&t)))
            .ok_or_else(|| {
                Error::config(
                    &dir.join("config.json"),
                    "eos_token_id",
                    "missing here, in generation_config.json and in tokenizer_config.json",
                )
            })?;
        let pad = cfg.pad_token_id.unwrap_or(eos);
        let bos_text = token_text(tok_cfg.get("bos_token"));
        let bos = bos_text
            .as_deref()
            .and_then(lookup)
            .or_else(|| ids_of(gen_cfg.get("bos_token_id")).first().copied());
        let mut stop = vec![eos];
        stop.extend(lookup("<|eot_id|>"));
        stop.extend(ids_of(gen_cfg.get("eos_token_id")));
        stop.sort_unstable();
        stop.dedup();
        let vocab = inner.get_vocab_size(true);
        for (what, id) in [("mask", mask), ("eos", eos), ("pad", pad)] {
            if id as usize >= cfg.n_logits {
                return Err(Error::tokenizer(
                    &path,
                    format!("{what} id {id} is outside the model's vocabulary ({})", cfg.n_logits),
                ));
            }
        }
        if vocab > cfg.n_logits {
            return Err(Error::tokenizer(
                &path,
                format!("{vocab} tokens, more than the model's {} logits", cfg.n_logits),
            ));
        }
        Ok(Tokenizer {
            inner,
            special: SpecialIds { mask, eos, pad, bos, stop },
            bos_text: bos.and(bos_text),
        })
    }

    /// Token ids of `text` as is (no template, no added BOS: LLaDA's `add_bos_token` is false).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::options(format!("cannot tokenize the prompt: {e}")))
    }

    /// The LLaDA chat template for one user turn (spec §2): BOS, the user header, the stripped
    /// content, `<|eot_id|>`, then the assistant header. The template carries the BOS, so none
    /// is added when tokenizing.
    pub fn chat_prompt(&self, content: &str) -> String {
        format!(
            "{}<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            self.bos_text.as_deref().unwrap_or(""),
            content.trim()
        )
    }

    /// Ids of a user message rendered with the chat template.
    pub fn encode_chat(&self, content: &str) -> Result<Vec<u32>> {
        for t in ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"] {
            if self.inner.token_to_id(t).is_none() {
                return Err(Error::options(format!(
                    "the chat template needs the token {t}, which this tokenizer lacks (use --no-chat)"
                )));
            }
        }
        self.encode(&self.chat_prompt(content))
    }

    /// Text of `ids`, special tokens dropped.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_else(|e| format!("<undecodable: {e}>"))
    }

    /// The answer part of generated ids: everything before the first stop id (spec §5).
    pub fn cut_at_stop<'a>(&self, generated: &'a [u32]) -> &'a [u32] {
        let end = generated.iter().position(|t| self.special.stop.contains(t)).unwrap_or(generated.len());
        &generated[..end]
    }
}
