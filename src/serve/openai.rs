//! The OpenAI schema as dllm serves it: request parsing (every field either changes decoding as
//! documented or is refused naming it), and the error object every failure is answered with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::cache::CacheMode;
use crate::decode::{fresh_seed, DecodeOptions, Decoder, MultiBlockKnobs, Rule};
use crate::error::Error;
use crate::model::{ModelConfig, Tokenizer};

/// An OpenAI error object: status, type, the parameter at fault, a code, a message naming the
/// problem.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, kind, param: None, code: None, message: message.into() }
    }

    /// 400 naming `param` in the message and the `param` field.
    pub fn bad(param: &str, message: impl std::fmt::Display) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", format!("`{param}`: {message}"))
        }
    }

    /// The error object of any status whose response carries none of its own (axum's 405, 413).
    pub fn of_status(status: StatusCode) -> Self {
        let kind = if status.is_server_error() { "server_error" } else { "invalid_request_error" };
        let reason = status.canonical_reason().unwrap_or("error");
        let message = match status {
            StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_string(),
            StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than --body-limit".to_string(),
            _ => reason.to_lowercase(),
        };
        ApiError { code: Some(status_code_name(status)), ..Self::new(status, kind, message) }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

fn status_code_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::NOT_FOUND => "not_found",
        _ => "error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

type Parsed<T> = std::result::Result<T, ApiError>;

/// What parsing needs to know of the server.
pub struct Context<'a> {
    pub tok: &'a Tokenizer,
    pub model: &'a ModelConfig,
    /// The canvas a request decodes when it gives no `gen_length` (`dllm serve --gen-length`).
    pub gen_length: usize,
    /// Most tokens of one request, prompt + generation + suffix (`--max-context`).
    pub max_context: usize,
    /// Longest decoding window (`--max-block`).
    pub max_block: usize,
}

/// A request, parsed and validated.
#[derive(Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    /// Infilling (`suffix`, completions only): fixed ids after the masked middle.
    pub suffix: Vec<u32>,
    pub opts: DecodeOptions,
    /// Most answer tokens returned (`max_tokens`): a cut of the decoded canvas, never its length.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with `choices: []` and the usage.
    pub include_usage: bool,
    /// Samples (`n`): rows of the batch, row i sampling with `opts.seed + i`.
    pub n: usize,
    /// Reveal-time logprobs with this many alternatives per token (None: not asked).
    pub logprobs: Option<usize>,
}

/// Most alternatives per token (`logprobs`, `top_logprobs`), as OpenAI.
pub const MAX_LOGPROBS: usize = 20;

/// Most samples one request may ask for (`n`).
pub const MAX_N: usize = 64;

/// Fields dllm reads (besides the prompt or messages): see the README's table.
const FIELDS: &[&str] = &[
    "model",
    "user",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "gen_length",
    "block_length",
    "steps",
    "cache",
    "threshold",
    "factor",
    "quota",
    "entropy",
    "preset",
    "multi_block",
    "block_add",
    "activate",
    "cache_delay",
    "refresh",
    "early_stop",
    "early_stop_id",
    "suffix",
    "n",
    "best_of",
    "top_k",
    "top_p",
    "logprobs",
    "top_logprobs",
];

/// OpenAI fields dllm accepts only at a value that asks for nothing (the value a client sends by
/// default); any other value is refused naming the field.
fn neutral(field: &str) -> Option<&'static [&'static str]> {
    Some(match field {
        "echo" | "store" => &["null", "false"],
        "presence_penalty" | "frequency_penalty" => &["null", "0"],
        "logit_bias" => &["null", "{}"],
        "response_format" => &["null", r#"{"type":"text"}"#],
        "service_tier" => &["null", r#""auto""#, r#""default""#],
        "parallel_tool_calls" => &["null", "true", "false"],
        "tools" => &["null", "[]"],
        "tool_choice" => &["null", r#""none""#, r#""auto""#],
        "modalities" => &["null", r#"["text"]"#],
        _ => return None,
    })
}

/// Unknown fields, and known ones at a value dllm cannot honour, refused by name. `metadata`
/// (an object of strings, OpenAI's tags for stored completions) is accepted and ignored: nothing
/// is stored.
fn check_fields(body: &Map<String, Value>, main: &str) -> Parsed<()> {
    for (k, v) in body {
        if k == main || FIELDS.contains(&k.as_str()) {
            continue;
        }
        if k == "metadata" {
            if !(v.is_null() || v.as_object().is_some_and(|m| m.values().all(Value::is_string))) {
                return Err(ApiError::bad(k, format!("expected an object of strings, got {v}")));
            }
            continue;
        }
        let Some(allowed) = neutral(k) else {
            return Err(ApiError::bad(k, "unknown or unsupported parameter"));
        };
        let same = |a: &&str| {
            let a: Value = serde_json::from_str(a).unwrap_or(Value::Null);
            &a == v || (a.is_number() && a.as_f64() == v.as_f64())
        };
        if !allowed.iter().any(same) {
            return Err(ApiError::bad(
                k,
                format!("{v} is not supported by dllm (only {})", allowed.join(" or ")),
            ));
        }
    }
    Ok(())
}

fn uint(body: &Map<String, Value>, k: &str) -> Parsed<Option<usize>> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| Some(n as usize))
            .ok_or_else(|| ApiError::bad(k, format!("expected a positive integer, got {v}"))),
    }
}

fn num(body: &Map<String, Value>, k: &str) -> Parsed<Option<f64>> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            v.as_f64().map(Some).ok_or_else(|| ApiError::bad(k, format!("expected a number, got {v}")))
        }
    }
}

fn flag(body: &Map<String, Value>, k: &str) -> Parsed<bool> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::bad(k, format!("expected true or false, got {v}"))),
    }
}

/// Parse and validate a `/v1/completions` (`chat` false) or `/v1/chat/completions` body.
pub fn parse(ctx: &Context, body: &[u8], chat: bool) -> Parsed<Request> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", format!("malformed JSON: {e}"))
    })?;
    let Value::Object(body) = v else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the body must be a JSON object",
        ));
    };
    let main = if chat { "messages" } else { "prompt" };
    check_fields(&body, main)?;
    let prompt = if chat { messages(ctx.tok, body.get(main))? } else { prompt(ctx, body.get(main))? };
    if prompt.is_empty() {
        return Err(ApiError::bad(main, "the prompt has no tokens"));
    }
    let max_tokens = match uint(&body, "max_tokens")? {
        Some(n) => Some(n),
        None => uint(&body, "max_completion_tokens")?,
    };
    if chat && body.get("suffix").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad("suffix", "only on /v1/completions: a chat answer has no text after it"));
    }
    let suffix = if chat { vec![] } else { suffix(ctx, &body)? };
    let opts = decode_options(ctx, &body)?;
    validate(ctx, &opts, &prompt, suffix.len(), main)?;
    let stream = flag(&body, "stream")?;
    let n = samples(&body)?;
    let logprobs = logprobs(&body, chat)?;
    if logprobs.is_some() && opts.decoder != Decoder::Blocks {
        return Err(ApiError::bad("logprobs", "needs the block loop, not multi-block decoding"));
    }
    Ok(Request {
        n,
        logprobs,
        prompt,
        suffix,
        opts,
        max_tokens,
        stop: stop(&body)?,
        stream,
        include_usage: include_usage(&body, stream)?,
    })
}

/// `prompt`: a string, or one tokenized prompt (a list of token ids); a list of one of those is
/// the same. Several prompts are refused: one request per prompt. A raw prompt may write chat
/// markers by hand, never the mask token.
fn prompt(ctx: &Context, v: Option<&Value>) -> Parsed<Vec<u32>> {
    let bad = |m: String| ApiError::bad("prompt", m);
    let v = match v {
        Some(Value::Array(a)) if a.len() == 1 && (a[0].is_string() || a[0].is_array()) => &a[0],
        Some(v) => v,
        None => return Err(bad("required".into())),
    };
    let ids = match v {
        Value::String(s) => ctx.tok.encode(s).map_err(|e| bad(e.to_string()))?,
        Value::Array(a) if a.iter().all(Value::is_u64) => {
            let ids: Vec<u64> = a.iter().filter_map(Value::as_u64).collect();
            if let Some(&t) = ids.iter().find(|&&t| t >= ctx.model.n_logits as u64) {
                return Err(bad(format!("token id {t} is outside the vocabulary ({})", ctx.model.n_logits)));
            }
            ids.into_iter().map(|t| t as u32).collect()
        }
        Value::Array(a) if a.iter().all(|x| x.is_string() || x.is_array()) => {
            return Err(bad(format!(
                "a list of {} prompts is not supported: send one request per prompt",
                a.len()
            )))
        }
        v => return Err(bad(format!("expected a string or a list of token ids, got {v}"))),
    };
    ctx.tok.check_prompt_ids(&ids).map_err(|e| bad(e.to_string()))?;
    Ok(ids)
}

/// `suffix` (completions): the text after the generated middle, tokenized as written (no
/// template), never the mask token. The answer is the middle.
fn suffix(ctx: &Context, body: &Map<String, Value>) -> Parsed<Vec<u32>> {
    let Some(text) = string(body, "suffix")? else { return Ok(vec![]) };
    let ids = ctx.tok.encode(&text).map_err(|e| ApiError::bad("suffix", e))?;
    ctx.tok
        .check_prompt_ids(&ids)
        .map_err(|e| ApiError::bad("suffix", e.to_string().replace("the prompt", "the suffix")))?;
    Ok(ids)
}

/// `messages`: `{role, content}` objects; `developer` is `system` (OpenAI's newer name); content
/// is a string or a list of `{"type": "text", "text": ...}` parts, joined. Contents are encoded as
/// plain text inside the checkpoint's chat template.
fn messages(tok: &Tokenizer, v: Option<&Value>) -> Parsed<Vec<u32>> {
    let Some(Value::Array(msgs)) = v else {
        return Err(ApiError::bad("messages", "required: a list of {role, content} objects"));
    };
    if msgs.is_empty() {
        return Err(ApiError::bad("messages", "must not be empty"));
    }
    let mut turns: Vec<(&str, String)> = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let at = |k: &str| format!("messages[{i}]{k}");
        let Some(m) = m.as_object() else {
            return Err(ApiError::bad(&at(""), "expected {\"role\": ..., \"content\": ...}"));
        };
        if let Some(k) = m.keys().find(|k| !["role", "content"].contains(&k.as_str())) {
            return Err(ApiError::bad(&at(&format!(".{k}")), "not supported (dllm reads role and content)"));
        }
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("system" | "user" | "assistant")) => r,
            Some("developer") => "system",
            r => {
                let got = r.map_or("no role".to_string(), |r| format!("role {r:?}"));
                return Err(ApiError::bad(
                    &at(".role"),
                    format!("expected system, developer, user or assistant, got {got}"),
                ));
            }
        };
        turns.push((role, content(m.get("content"), &at(".content"))?));
    }
    let pairs: Vec<(&str, &str)> = turns.iter().map(|(r, c)| (*r, c.as_str())).collect();
    tok.encode_messages(&pairs).map_err(|e| ApiError::bad("messages", e))
}

/// A message's text: a string, or text parts joined (other parts refused by name).
fn content(v: Option<&Value>, at: &str) -> Parsed<String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some(kind), _) if kind != "text" => {
                        return Err(ApiError::bad(
                            &format!("{at}[{j}]"),
                            format!("type {kind:?} is not supported: dllm reads text only"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::bad(
                            &format!("{at}[{j}]"),
                            "expected {\"type\": \"text\", \"text\": string}",
                        ))
                    }
                }
            }
            Ok(text)
        }
        other => Err(ApiError::bad(
            at,
            format!("expected a string or a list of text parts, got {}", other.unwrap_or(&Value::Null)),
        )),
    }
}

/// The decoding options of a request: the canvas (`gen_length`, default the server's), the block,
/// the cache, the rule (`threshold`, `factor` or `quota`: one of them), `steps` where the rule
/// uses them, temperature and seed (drawn fresh for sampling when none is given, and reported).
fn decode_options(ctx: &Context, body: &Map<String, Value>) -> Parsed<DecodeOptions> {
    let gen_length = uint(body, "gen_length")?.unwrap_or(ctx.gen_length);
    let steps = uint(body, "steps")?;
    let temperature = num(body, "temperature")?.unwrap_or(DecodeOptions::default().temperature);
    let seed = match body.get("seed") {
        None | Some(Value::Null) if temperature > 0.0 => fresh_seed(),
        None | Some(Value::Null) => 0, // greedy: no noise is drawn
        Some(v) => v
            .as_u64()
            .ok_or_else(|| ApiError::bad("seed", format!("expected a non-negative integer, got {v}")))?,
    };
    let top_p = num(body, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad("top_p", format!("{top_p} is outside (0, 1]")));
    }
    let mut opts = DecodeOptions {
        top_k: top_k(body)?,
        top_p,
        gen_length,
        block_length: uint(body, "block_length")?.unwrap_or(DecodeOptions::default().block_length),
        steps: steps.unwrap_or(gen_length),
        temperature,
        seed,
        ..DecodeOptions::default()
    };
    let eos = ctx.tok.special.eos;
    if let Some(p) = string(body, "preset")? {
        opts = opts.with_preset(&p, eos).map_err(|e| ApiError::bad("preset", e))?;
    }
    opts.rule = rule(body, opts.rule)?;
    multi_block_knobs(body)?.apply(&mut opts, eos).map_err(|e| {
        let knob = e.split_whitespace().next().unwrap_or("multi_block").to_string();
        ApiError::bad(&knob, e)
    })?;
    opts.cache = match body.get("cache") {
        None | Some(Value::Null) if opts.decoder != Decoder::Blocks => CacheMode::None,
        None | Some(Value::Null) => opts.cache,
        Some(Value::String(s)) if s == "none" => CacheMode::None,
        Some(Value::String(s)) if s == "prefix" => CacheMode::Prefix,
        Some(Value::String(s)) if s == "dual" => CacheMode::Dual,
        Some(v) => {
            return Err(ApiError::bad("cache", format!("expected \"none\", \"prefix\" or \"dual\", got {v}")))
        }
    };
    if steps.is_some() && !opts.uses_steps(ctx.model.arch) {
        let why = format!("has no effect with the {} rule: steps apply to `quota: true` (and to Dream's uncached threshold)", opts.rule);
        return Err(ApiError::bad("steps", why));
    }
    Ok(opts)
}

/// `top_k`: a count of tokens to draw among (0, or vLLM's -1: no limit).
fn top_k(body: &Map<String, Value>) -> Parsed<u32> {
    match body.get("top_k") {
        None | Some(Value::Null) => Ok(0),
        Some(v) if v.as_i64() == Some(-1) => Ok(0),
        Some(v) => v.as_u64().and_then(|k| u32::try_from(k).ok()).ok_or_else(|| {
            ApiError::bad("top_k", format!("expected a count ≥ 0 (or -1: no limit), got {v}"))
        }),
    }
}

/// The rule: one of `threshold`, `factor`, `quota: true`, `entropy` (else `default`).
fn rule(body: &Map<String, Value>, default: Rule) -> Parsed<Rule> {
    let given = [
        num(body, "threshold")?.map(Rule::Threshold),
        num(body, "factor")?.map(Rule::Factor),
        flag(body, "quota")?.then_some(Rule::Quota),
        num(body, "entropy")?.map(Rule::Entropy),
    ];
    let mut given = given.into_iter().flatten();
    match (given.next(), given.next()) {
        (Some(_), Some(_)) => {
            Err(ApiError::bad("quota", "give one rule: `threshold`, `factor`, `quota` or `entropy`"))
        }
        (Some(r), None) => Ok(r),
        (None, _) => Ok(default),
    }
}

/// The multi-block decoder's fields, under d3LLM's names (d3llm spec §5–§7).
fn multi_block_knobs(body: &Map<String, Value>) -> Parsed<MultiBlockKnobs> {
    let id = match body.get("early_stop_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| ApiError::bad("early_stop_id", format!("expected a token id, got {v}")))?,
        ),
    };
    let count = |k: &str| -> Parsed<Option<usize>> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| ApiError::bad(k, format!("expected a count, got {v}"))),
        }
    };
    Ok(MultiBlockKnobs {
        enable: flag(body, "multi_block")?,
        add: num(body, "block_add")?,
        activate: num(body, "activate")?,
        cache_delay: count("cache_delay")?,
        refresh: count("refresh")?,
        early_stop: body
            .get("early_stop")
            .filter(|v| !v.is_null())
            .map(|_| flag(body, "early_stop"))
            .transpose()?,
        early_stop_id: id,
        max_per_forward: None,
    })
}

fn string(body: &Map<String, Value>, k: &str) -> Parsed<Option<String>> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::bad(k, format!("expected a string, got {v}"))),
    }
}

/// The options against the model and the prompt; a prompt that does not fit beside the canvas
/// is OpenAI's `context_length_exceeded`.
fn validate(ctx: &Context, opts: &DecodeOptions, prompt: &[u32], suffix: usize, main: &str) -> Parsed<()> {
    let room = ctx.max_context;
    let need = prompt.len() + opts.gen_length + suffix;
    if need > room {
        let sfx = if suffix > 0 { format!(", the suffix's {suffix}") } else { String::new() };
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::bad(
                main,
                format!(
                    "the prompt's {} tokens{sfx} and the {}-token canvas (gen_length) need {need} \
                     positions; the server's context is {room} tokens ({}). `max_tokens` only cuts \
                     the answer: shorten the prompt or ask for a smaller `gen_length`",
                    prompt.len(),
                    opts.gen_length,
                    if room < ctx.model.max_seq_len { "--max-context" } else { "the model's" },
                ),
            )
        });
    }
    let window = opts.window_len(ctx.model.arch);
    if window > ctx.max_block {
        let (param, what) = if opts.decoder == Decoder::Blocks && !opts.blockless(ctx.model.arch) {
            ("block_length", format!("block_length {window}"))
        } else {
            ("gen_length", format!("gen_length {window} (decoded as one window: {})", decoder_name(opts)))
        };
        return Err(ApiError::bad(
            param,
            format!("{what} is above the server's longest block window, {} (--max-block)", ctx.max_block),
        ));
    }
    opts.validate(ctx.model, &[prompt.to_vec()]).map_err(|e| {
        let m = e.to_string();
        let phrases = [
            ("block-add threshold", "block_add"),
            ("activation threshold", "activate"),
            ("refresh interval", "refresh"),
            ("entropy threshold", "entropy"),
            ("entropy rule", "entropy"),
            ("--cache none", "cache"),
        ];
        let named = ["gen_length", "block_length", "steps", "threshold", "factor", "temperature"];
        let phrase = phrases.iter().find(|(ph, _)| m.contains(ph)).map(|&(_, p)| p);
        let param = phrase.or(named.iter().find(|p| m.contains(*p)).copied()).unwrap_or(match e {
            Error::Options(_) => "options",
            _ => main,
        });
        ApiError::bad(param, m)
    })
}

/// Why a whole generation is one window: the multi-block decoder, or Dream without a cache.
fn decoder_name(opts: &DecodeOptions) -> &'static str {
    if opts.decoder == Decoder::Blocks {
        "Dream without a cache"
    } else {
        "the multi-block decoder"
    }
}

/// A count from 0 to [`MAX_LOGPROBS`] (null: None).
fn count_upto(body: &Map<String, Value>, k: &str) -> Parsed<Option<usize>> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(c) if c as usize <= MAX_LOGPROBS => Ok(Some(c as usize)),
            _ => Err(ApiError::bad(k, format!("expected a count from 0 to {MAX_LOGPROBS}, got {v}"))),
        },
    }
}

/// Reveal-time logprobs: completions `logprobs: k` (alternatives per token; false or null: none);
/// chat `logprobs: true` with `top_logprobs: k` (0 when not given; only with `logprobs`).
fn logprobs(body: &Map<String, Value>, chat: bool) -> Parsed<Option<usize>> {
    if !chat {
        if count_upto(body, "top_logprobs")?.is_some_and(|k| k > 0) {
            return Err(ApiError::bad("top_logprobs", "a chat field: completions take `logprobs: k`"));
        }
        if body.get("logprobs") == Some(&Value::Bool(false)) {
            return Ok(None);
        }
        return count_upto(body, "logprobs");
    }
    let top = count_upto(body, "top_logprobs")?;
    match (flag(body, "logprobs")?, top) {
        (true, top) => Ok(Some(top.unwrap_or(0))),
        (false, Some(_)) => Err(ApiError::bad("top_logprobs", "needs `logprobs: true`")),
        (false, None) => Ok(None),
    }
}

/// `n` (1 to [`MAX_N`]) and `best_of`, which must equal it: every sample is returned (a
/// diffusion model has no sequence log-probability to rank samples by).
fn samples(body: &Map<String, Value>) -> Parsed<usize> {
    let n = uint(body, "n")?.unwrap_or(1);
    if n > MAX_N {
        return Err(ApiError::bad("n", format!("{n} samples asked; at most {MAX_N}")));
    }
    match uint(body, "best_of")? {
        Some(b) if b != n => Err(ApiError::bad(
            "best_of",
            format!("{b} differs from n ({n}): dllm returns every sample, so best_of must equal n"),
        )),
        _ => Ok(n),
    }
}

/// Most stop strings a request may give (lm-evaluation-harness tasks send up to 5 and more).
pub const MAX_STOP: usize = 16;

fn stop(body: &Map<String, Value>) -> Parsed<Vec<String>> {
    let stop = match body.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) && a.len() <= MAX_STOP => {
            a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()
        }
        Some(v) => {
            return Err(ApiError::bad(
                "stop",
                format!("expected a string or a list of up to {MAX_STOP} strings, got {v}"),
            ))
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad("stop", "stop strings must not be empty"));
    }
    Ok(stop)
}

/// `stream_options`: only `{"include_usage": bool}`, only with `stream: true` (as OpenAI).
fn include_usage(body: &Map<String, Value>, stream: bool) -> Parsed<bool> {
    match body.get("stream_options") {
        None | Some(Value::Null) => Ok(false),
        Some(_) if !stream => Err(ApiError::bad("stream_options", "only allowed with `stream: true`")),
        Some(Value::Object(o)) => {
            if let Some(k) = o.keys().find(|k| k.as_str() != "include_usage") {
                return Err(ApiError::bad(
                    &format!("stream_options.{k}"),
                    "not supported (only include_usage)",
                ));
            }
            flag(o, "include_usage")
                .map_err(|_| ApiError::bad("stream_options.include_usage", "expected true or false"))
        }
        Some(v) => {
            Err(ApiError::bad("stream_options", format!("expected {{\"include_usage\": bool}}, got {v}")))
        }
    }
}
