//! `tokenizer.json` (HF `tokenizers`, no network), the checkpoint's own chat template (Jinja, from
//! `tokenizer_config.json`, rendered with minijinja; the built-in LLaDA template of spec §2 only
//! when a checkpoint ships none), and the special token ids, read from the checkpoint's own files (`config.json`,
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

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub special: SpecialIds,
    bos_text: Option<String>,
    eos_text: Option<String>,
    /// `tokenizer_config.json`'s `chat_template`, checked to compile at load.
    chat_template: Option<String>,
}

/// The `chat_template` of a tokenizer_config.json: a string, or a list of named templates (the
/// one named "default" is used).
fn chat_template_of(path: &Path, cfg: &Value) -> Result<Option<String>> {
    match cfg.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) => Ok(Some(t.clone())),
        Some(Value::Array(list)) => {
            let named = |n: &str| list.iter().find(|x| x.get("name").and_then(Value::as_str) == Some(n));
            let t = named("default").or(list.first()).and_then(|x| x.get("template")).and_then(Value::as_str);
            t.map(|t| Some(t.to_string()))
                .ok_or_else(|| Error::tokenizer(path, "chat_template: a list without a usable template"))
        }
        Some(v) => Err(Error::tokenizer(path, format!("chat_template: expected a string, got {v}"))),
    }
}

/// Render a chat template for a conversation of `(role, content)` messages, as
/// `apply_chat_template(..., add_generation_prompt=True)` does.
fn render_chat(
    template: &str,
    messages: &[(&str, &str)],
    bos: &str,
    eos: &str,
) -> std::result::Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| e.to_string())?;
    let ctx = minijinja::context! {
        messages => messages
            .iter()
            .map(|&(role, content)| minijinja::context! { role => role, content => content })
            .collect::<Vec<_>>(),
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    };
    env.get_template("chat").and_then(|t| t.render(ctx)).map_err(|e| e.to_string())
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

        let mask = cfg
            .mask_token_id
            .or_else(|| ids_of(gen_cfg.get("mask_token_id")).first().copied())
            .or_else(|| token_text(tok_cfg.get("mask_token")).and_then(|t| lookup(&t)))
            .or_else(|| lookup("<|mdm_mask|>"))
            .or_else(|| lookup("<|mask|>"))
            .ok_or_else(|| {
                Error::config(
                    &dir.join("config.json"),
                    "mask_token_id",
                    "missing here, in generation_config.json and tokenizer_config.json, and the vocabulary has no <|mdm_mask|> or <|mask|> token",
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
        let chat_template = chat_template_of(&tok_cfg_path, &tok_cfg)?;
        if let Some(t) = &chat_template {
            render_chat(t, &[("user", "hi")], "", "").map_err(|e| {
                Error::tokenizer(&tok_cfg_path, format!("chat_template does not render: {e}"))
            })?;
        }
        Ok(Tokenizer {
            inner,
            special: SpecialIds { mask, eos, pad, bos, stop },
            bos_text: bos.and(bos_text),
            eos_text: token_text(tok_cfg.get("eos_token")),
            chat_template,
        })
    }

    /// Token ids of `text` as is (no template, no added BOS: LLaDA's `add_bos_token` is false).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::options(format!("cannot tokenize the prompt: {e}")))
    }

    /// Whether prompts are rendered with the checkpoint's own template.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// The built-in LLaDA chat template for one user turn (spec §2).
    pub fn chat_prompt(&self, content: &str) -> String {
        self.builtin_chat(&[("user", content)])
    }

    /// The built-in LLaDA chat template (spec §2): BOS, then per message its role's header, the
    /// stripped content and `<|eot_id|>`, then the assistant header. The template carries the
    /// BOS, so none is added when tokenizing.
    fn builtin_chat(&self, messages: &[(&str, &str)]) -> String {
        let mut text = self.bos_text.clone().unwrap_or_default();
        for (role, content) in messages {
            text.push_str(&format!(
                "<|start_header_id|>{role}<|end_header_id|>\n\n{}<|eot_id|>",
                content.trim()
            ));
        }
        text.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
        text
    }

    /// Ids of a user message rendered with the checkpoint's chat template, or the built-in LLaDA
    /// one when the checkpoint has none.
    pub fn encode_chat(&self, content: &str) -> Result<Vec<u32>> {
        self.encode_messages(&[("user", content)])
    }

    /// Ids of a conversation of `(role, content)` messages rendered with the checkpoint's chat
    /// template (or the built-in LLaDA one), ending with the assistant's header.
    pub fn encode_messages(&self, messages: &[(&str, &str)]) -> Result<Vec<u32>> {
        if let Some(t) = &self.chat_template {
            let bos = self.bos_text.as_deref().unwrap_or("");
            let eos = self.eos_text.as_deref().unwrap_or("");
            let text = render_chat(t, messages, bos, eos)
                .map_err(|e| Error::options(format!("the checkpoint's chat_template failed: {e}")))?;
            return self.encode(&text);
        }
        for t in ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"] {
            if self.inner.token_to_id(t).is_none() {
                return Err(Error::options(format!(
                    "the chat template needs the token {t}, which this tokenizer lacks (use --no-chat)"
                )));
            }
        }
        self.encode(&self.builtin_chat(messages))
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
