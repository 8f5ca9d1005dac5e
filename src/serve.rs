//! `dllm serve`: an OpenAI-compatible HTTP server (completions, chat completions, models, health)
//! over one engine.
//!
//! Two threads: the engine's (it owns the backend, the only place decoding happens) and the HTTP
//! side (tokio + axum). A request is validated and tokenized on the HTTP side, then queued as a
//! [`Job`]. The engine thread takes every waiting job whose decoding options equal the oldest
//! one's (up to `--max-batch`) and decodes them as one batch; per-row padding masks and positions
//! (spec §6) make each answer token-identical to running it alone. After each block it reads the
//! canvas back once, streams the new text of every row, and frees the rows whose answer is done
//! (end token, `max_tokens`, a stop string) or whose client went away.
//!
//! Not yet: requests joining a running batch at a block boundary (continuous batching); a request
//! that arrives while a batch runs waits for the next one.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc as tmpsc;

use crate::backend::{Backend, Rule};
use crate::cache::CacheMode;
use crate::decode::{DecodeOptions, Engine, Progress};
use crate::error::{Error, Result};
use crate::model::{ModelConfig, Tokenizer};

/// Server settings (the `dllm serve` flags).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Most requests decoded together.
    pub max_batch: usize,
    /// Most requests waiting for the engine; one more gets 429.
    pub max_queue: usize,
    /// Bearer token every route but `/health` requires.
    pub api_key: Option<String>,
    /// The model name `/v1/models` reports.
    pub model_id: String,
    /// Request bodies above this many bytes get 413.
    pub body_limit: usize,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
}

/// What a request asks of the engine.
struct Job {
    prompt: Vec<u32>,
    opts: DecodeOptions,
    max_tokens: usize,
    stop: Vec<String>,
    events: tmpsc::UnboundedSender<JobEvent>,
}

#[derive(Debug)]
enum JobEvent {
    /// New answer text (streaming).
    Delta(String),
    Done(Finished),
    Failed(String),
}

#[derive(Debug)]
struct Finished {
    text: String,
    finish_reason: &'static str,
    prompt_tokens: usize,
    completion_tokens: usize,
    nfe: usize,
    ms: f64,
    /// Requests decoded together with this one.
    batch: usize,
}

/// The answer in `generated` so far: cut at the first end token (or a mask: the row stopped
/// there), at `max_tokens` tokens, and at the first stop string. Returns the text, its token
/// count and why it ended (None: not yet).
fn answer(
    tok: &Tokenizer,
    generated: &[u32],
    max_tokens: usize,
    stop: &[String],
) -> (String, usize, Option<&'static str>) {
    let mask = tok.special.mask;
    let end = generated.iter().position(|t| tok.special.stop.contains(t) || *t == mask);
    let mut ids = &generated[..end.unwrap_or(generated.len())];
    let mut why = end.filter(|&i| generated[i] != mask).map(|_| "stop");
    if ids.len() >= max_tokens {
        if ids.len() > max_tokens || why.is_none() {
            why = Some("length");
        }
        ids = &ids[..max_tokens];
    }
    let mut text = tok.decode(ids);
    let mut n = ids.len();
    if let Some(cut) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        text.truncate(cut);
        n = tok.encode(&text).map(|v| v.len()).unwrap_or(n);
        why = Some("stop");
    }
    (text, n, why)
}

/// The part of `now` that extends what was `sent`. Until the answer is `done`, hold back
/// trailing replacement characters (a block can end inside a multi-byte character) and the last
/// `hold` characters (a stop string may be completed by the next block), so the streamed pieces
/// always add up to the final answer.
fn delta<'a>(sent: &str, now: &'a str, done: bool, hold: usize) -> Option<&'a str> {
    let now = if done {
        now
    } else {
        let t = now.trim_end_matches('\u{fffd}');
        let keep = t.chars().count().saturating_sub(hold);
        &t[..t.char_indices().nth(keep).map_or(t.len(), |(i, _)| i)]
    };
    now.strip_prefix(sent).filter(|d| !d.is_empty())
}

/// Streams each row's text after every block and frees finished or abandoned rows.
struct BatchProgress<'a> {
    jobs: &'a [Job],
    tok: &'a Tokenizer,
    sent: Vec<String>,
    done: Vec<bool>,
    gone: Vec<bool>,
    shared: &'a Shared,
}

impl Progress for BatchProgress<'_> {
    fn wants_blocks(&self) -> bool {
        true
    }
    fn block_done(&mut self, _block: usize, generated: &[&[u32]]) {
        for (b, job) in self.jobs.iter().enumerate() {
            if self.done[b] {
                continue;
            }
            let (text, _, why) = answer(self.tok, generated[b], job.max_tokens, &job.stop);
            let hold = job.stop.iter().map(|s| s.chars().count()).max().unwrap_or(1).saturating_sub(1);
            if let Some(d) = delta(&self.sent[b], &text, why.is_some(), hold) {
                let _ = job.events.send(JobEvent::Delta(d.to_string()));
                self.sent[b].push_str(d);
            }
            self.done[b] = why.is_some();
        }
    }
    fn cancelled(&mut self, row: usize) -> bool {
        if !self.done[row] && !self.gone[row] && self.jobs[row].events.is_closed() {
            self.gone[row] = true;
            self.shared.abandoned.fetch_add(1, Ordering::SeqCst);
        }
        self.done[row] || self.gone[row]
    }
}

/// The engine loop: batches of waiting jobs with equal options, until every sender is gone.
fn engine_loop<B: Backend>(engine: &Engine<B>, tok: &Tokenizer, jobs: mpsc::Receiver<Job>, shared: &Shared) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match jobs.recv() {
                Ok(j) => pending.push_back(j),
                Err(_) => return,
            }
        }
        while let Ok(j) = jobs.try_recv() {
            pending.push_back(j);
        }
        let opts = pending[0].opts.clone();
        let (mut batch, mut rest) = (Vec::new(), VecDeque::new());
        for j in pending.drain(..) {
            if batch.len() < shared.max_batch && j.opts == opts && !j.events.is_closed() {
                batch.push(j);
            } else if !j.events.is_closed() {
                rest.push_back(j);
            } else {
                shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
        }
        pending = rest;
        shared.queued.fetch_sub(batch.len(), Ordering::SeqCst);
        if batch.is_empty() {
            continue;
        }
        shared.running.store(batch.len(), Ordering::SeqCst);
        run_batch(engine, tok, &batch, &opts, shared);
        shared.running.store(0, Ordering::SeqCst);
    }
}

fn run_batch<B: Backend>(
    engine: &Engine<B>,
    tok: &Tokenizer,
    batch: &[Job],
    opts: &DecodeOptions,
    shared: &Shared,
) {
    let prompts: Vec<Vec<u32>> = batch.iter().map(|j| j.prompt.clone()).collect();
    let n = batch.len();
    let mut progress = BatchProgress {
        jobs: batch,
        tok,
        sent: vec![String::new(); n],
        done: vec![false; n],
        gone: vec![false; n],
        shared,
    };
    let t0 = Instant::now();
    match engine.generate_with(&prompts, opts, &mut progress) {
        Ok(out) => {
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            for (b, (job, row)) in batch.iter().zip(&out.rows).enumerate() {
                let (text, tokens, why) = answer(tok, &row.tokens, job.max_tokens, &job.stop);
                if let Some(d) = delta(&progress.sent[b], &text, true, 0) {
                    let _ = job.events.send(JobEvent::Delta(d.to_string()));
                }
                let _ = job.events.send(JobEvent::Done(Finished {
                    text,
                    finish_reason: why.unwrap_or("length"),
                    prompt_tokens: job.prompt.len(),
                    completion_tokens: tokens,
                    nfe: row.nfe,
                    ms,
                    batch: n,
                }));
                shared.completed.fetch_add(1, Ordering::SeqCst);
            }
        }
        Err(e) => {
            for job in batch {
                let _ = job.events.send(JobEvent::Failed(e.to_string()));
            }
        }
    }
}

/// State shared by the HTTP handlers and the engine loop.
pub struct Shared {
    jobs: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    queued: AtomicUsize,
    max_batch: usize,
    cfg: ServeConfig,
    model: ModelConfig,
    tok: Tokenizer,
    ids: AtomicU64,
    stopping: AtomicBool,
    /// Requests in the batch being decoded, answered, and rows freed because the client left.
    running: AtomicUsize,
    completed: AtomicU64,
    abandoned: AtomicU64,
}

/// An OpenAI-style error: status, type, the parameter at fault, a message naming the problem.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    param: Option<String>,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                    "code": Value::Null}});
        (self.status, Json(body)).into_response()
    }
}

fn error(
    status: StatusCode,
    kind: &'static str,
    param: Option<&str>,
    message: impl Into<String>,
) -> ApiError {
    ApiError { status, kind, param: param.map(str::to_string), message: message.into() }
}

fn bad(param: &str, message: impl std::fmt::Display) -> ApiError {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", Some(param), format!("`{param}`: {message}"))
}

/// Parameters dllm accepts, per endpoint; `model` and `user` are accepted and not used.
const COMMON: &[&str] = &[
    "model",
    "user",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "threshold",
    "factor",
    "cache",
    "block_length",
    "steps",
    "n",
    "logprobs",
    "top_logprobs",
    "echo",
    "best_of",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
];

/// Parameters dllm cannot honour unless they hold their neutral value.
fn unsupported(body: &Map<String, Value>) -> Option<ApiError> {
    let neutral: &[(&str, Value)] = &[
        ("n", json!(1)),
        ("best_of", json!(1)),
        ("logprobs", Value::Null),
        ("top_logprobs", Value::Null),
        ("echo", json!(false)),
        ("top_p", json!(1)),
        ("presence_penalty", json!(0)),
        ("frequency_penalty", json!(0)),
    ];
    for (k, ok) in neutral {
        if let Some(v) = body.get(*k) {
            let same = v == ok || (v.as_f64().is_some() && v.as_f64() == ok.as_f64()) || v.is_null();
            let falsy = *k == "logprobs" && v == &json!(false);
            if !(same || falsy) {
                return Some(bad(k, format!("{v} is not supported by dllm (only {ok})")));
            }
        }
    }
    None
}

struct Request {
    prompt: Vec<u32>,
    opts: DecodeOptions,
    max_tokens: usize,
    stop: Vec<String>,
    stream: bool,
}

fn uint(body: &Map<String, Value>, k: &str) -> std::result::Result<Option<usize>, ApiError> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| Some(n as usize))
            .ok_or_else(|| bad(k, format!("expected a positive integer, got {v}"))),
    }
}

fn num(body: &Map<String, Value>, k: &str) -> std::result::Result<Option<f64>, ApiError> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(k, format!("expected a number, got {v}"))),
    }
}

/// Turn a JSON body into a job's inputs, naming the field of any problem.
fn parse_request(sh: &Shared, body: &[u8], chat: bool) -> std::result::Result<Request, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        error(StatusCode::BAD_REQUEST, "invalid_request_error", None, format!("malformed JSON: {e}"))
    })?;
    let Value::Object(body) = v else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            "the body must be a JSON object",
        ));
    };
    let main = if chat { "messages" } else { "prompt" };
    if let Some(k) = body.keys().find(|k| k.as_str() != main && !COMMON.contains(&k.as_str())) {
        return Err(bad(k, "unknown or unsupported parameter"));
    }
    if let Some(r) = unsupported(&body) {
        return Err(r);
    }
    let tok = &sh.tok;
    let prompt = if chat {
        let Some(Value::Array(msgs)) = body.get("messages") else {
            return Err(bad("messages", "required: a list of {role, content} objects"));
        };
        if msgs.is_empty() {
            return Err(bad("messages", "must not be empty"));
        }
        let mut pairs = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str);
            let content = m.get("content").and_then(Value::as_str);
            match (role, content) {
                (Some(r), Some(c)) if ["system", "user", "assistant"].contains(&r) => pairs.push((r, c)),
                _ => {
                    return Err(bad(
                        &format!("messages[{i}]"),
                        "expected {\"role\": \"system\"|\"user\"|\"assistant\", \"content\": string}",
                    ))
                }
            }
        }
        tok.encode_messages(&pairs).map_err(|e| bad("messages", e))?
    } else {
        let text = match body.get("prompt") {
            Some(Value::String(s)) => s.as_str(),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or(""),
            Some(Value::Array(_)) => {
                return Err(bad("prompt", "a list of prompts is not supported: send one request per prompt"))
            }
            Some(v) => return Err(bad("prompt", format!("expected a string, got {v}"))),
            None => return Err(bad("prompt", "required")),
        };
        tok.encode(text).map_err(|e| bad("prompt", e))?
    };
    if prompt.is_empty() {
        return Err(bad(main, "the prompt has no tokens"));
    }
    let max_tokens = match uint(&body, "max_tokens")? {
        Some(n) => n,
        None => uint(&body, "max_completion_tokens")?.unwrap_or(sh.cfg.default_max_tokens),
    };
    let block_length = uint(&body, "block_length")?.unwrap_or(32);
    let gen_length = max_tokens.div_ceil(block_length) * block_length;
    let temperature = num(&body, "temperature")?.unwrap_or(0.0);
    let seed = match body.get("seed") {
        None | Some(Value::Null) => 0,
        Some(v) => {
            v.as_u64().ok_or_else(|| bad("seed", format!("expected a non-negative integer, got {v}")))?
        }
    };
    let stop = match body.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) && a.len() <= 4 => {
            a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()
        }
        Some(v) => {
            return Err(bad("stop", format!("expected a string or a list of up to 4 strings, got {v}")))
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(bad("stop", "stop strings must not be empty"));
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(bad("stream", format!("expected true or false, got {v}"))),
    };
    let rule = match (num(&body, "threshold")?, num(&body, "factor")?) {
        (Some(_), Some(_)) => return Err(bad("factor", "give either `threshold` or `factor`, not both")),
        (_, Some(f)) => Rule::Factor(f),
        (Some(t), _) => Rule::Threshold(t),
        (None, None) => Rule::Threshold(0.9),
    };
    let cache = match body.get("cache") {
        None | Some(Value::Null) => CacheMode::Dual,
        Some(Value::String(s)) if s == "none" => CacheMode::None,
        Some(Value::String(s)) if s == "prefix" => CacheMode::Prefix,
        Some(Value::String(s)) if s == "dual" => CacheMode::Dual,
        Some(v) => return Err(bad("cache", format!("expected \"none\", \"prefix\" or \"dual\", got {v}"))),
    };
    let opts = DecodeOptions {
        gen_length,
        block_length,
        steps: uint(&body, "steps")?.unwrap_or(gen_length),
        cache,
        rule,
        temperature,
        seed,
        early_exit: false,
        trace: false,
        cuda_graphs: true,
        profile: false,
    };
    opts.validate(&sh.model, std::slice::from_ref(&prompt)).map_err(|e| {
        let param = match &e {
            Error::Options(m) if m.contains("max_sequence_length") => main,
            _ => "options",
        };
        bad(param, e)
    })?;
    Ok(Request { prompt, opts, max_tokens, stop, stream })
}

fn authorized(sh: &Shared, headers: &HeaderMap) -> std::result::Result<(), ApiError> {
    let Some(key) = &sh.cfg.api_key else { return Ok(()) };
    let given =
        headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            None,
            "missing or wrong API key (Authorization: Bearer KEY)",
        ))
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn health(State(sh): State<Arc<Shared>>) -> Response {
    Json(json!({"status": "ok", "queued": sh.queued.load(Ordering::SeqCst),
                "running": sh.running.load(Ordering::SeqCst),
                "completed": sh.completed.load(Ordering::SeqCst),
                "abandoned": sh.abandoned.load(Ordering::SeqCst)}))
    .into_response()
}

async fn models(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&sh, &headers) {
        return r.into_response();
    }
    Json(json!({"object": "list", "data": [{
        "id": sh.cfg.model_id, "object": "model", "created": 0, "owned_by": "dllm",
    }]}))
    .into_response()
}

async fn completions(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    complete(sh, headers, body, false).await
}

async fn chat_completions(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    complete(sh, headers, body, true).await
}

async fn complete(sh: Arc<Shared>, headers: HeaderMap, body: Bytes, chat: bool) -> Response {
    if let Err(r) = authorized(&sh, &headers) {
        return r.into_response();
    }
    let req = match parse_request(&sh, &body, chat) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    if sh.stopping.load(Ordering::SeqCst) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_shutting_down",
            None,
            "the server is stopping",
        )
        .into_response();
    }
    // Reserve a queue slot or refuse.
    let waiting = sh.queued.fetch_add(1, Ordering::SeqCst);
    if waiting >= sh.cfg.max_queue {
        sh.queued.fetch_sub(1, Ordering::SeqCst);
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            None,
            format!(
                "the queue is full ({waiting} requests waiting, --max-queue {}); retry later",
                sh.cfg.max_queue
            ),
        )
        .into_response();
    }
    let (tx, mut rx) = tmpsc::unbounded_channel();
    let job =
        Job { prompt: req.prompt, opts: req.opts, max_tokens: req.max_tokens, stop: req.stop, events: tx };
    let sent = sh.jobs.lock().ok().and_then(|g| g.as_ref().map(|s| s.send(job).is_ok())).unwrap_or(false);
    if !sent {
        sh.queued.fetch_sub(1, Ordering::SeqCst);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_shutting_down",
            None,
            "the engine has stopped",
        )
        .into_response();
    }
    let n = sh.ids.fetch_add(1, Ordering::SeqCst);
    let id = format!("{}-{n}", if chat { "chatcmpl" } else { "cmpl" });
    let created = now_s();
    let model = sh.cfg.model_id.clone();
    let object = if chat { "chat.completion" } else { "text_completion" };
    let usage = |f: &Finished| {
        json!({"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
               "total_tokens": f.prompt_tokens + f.completion_tokens})
    };
    let extra = |f: &Finished| {
        let tpf = f.completion_tokens as f64 / f.nfe.max(1) as f64;
        json!({"nfe": f.nfe, "tpf": tpf, "ms": f.ms, "batch": f.batch})
    };
    if !req.stream {
        loop {
            match rx.recv().await {
                Some(JobEvent::Delta(_)) => continue,
                Some(JobEvent::Done(f)) => {
                    let choice = if chat {
                        json!({"index": 0, "message": {"role": "assistant", "content": f.text},
                               "finish_reason": f.finish_reason})
                    } else {
                        json!({"index": 0, "text": f.text, "logprobs": Value::Null, "finish_reason": f.finish_reason})
                    };
                    return Json(json!({"id": id, "object": object, "created": created, "model": model,
                                       "choices": [choice], "usage": usage(&f), "dllm": extra(&f)}))
                    .into_response();
                }
                Some(JobEvent::Failed(m)) => {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, "engine_error", None, m).into_response();
                }
                None => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_shutting_down",
                        None,
                        "the engine stopped",
                    )
                    .into_response()
                }
            }
        }
    }
    // Server-sent events: one chunk per finished block's new text, then the finish and usage,
    // then [DONE].
    let chunk_object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = move |choice: Value, extra_fields: Option<(Value, Value)>| {
        let mut c = json!({"id": id, "object": chunk_object, "created": created, "model": model,
                           "choices": [choice]});
        if let Some((u, d)) = extra_fields {
            c["usage"] = u;
            c["dllm"] = d;
        }
        Event::default().data(c.to_string())
    };
    let mut first = true;
    let mut finished = false;
    let stream = futures_util::stream::poll_fn(move |cx| {
        if finished {
            return std::task::Poll::Ready(None);
        }
        match rx.poll_recv(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(ev) => {
                let event = match ev {
                    Some(JobEvent::Delta(d)) => {
                        let choice = if chat {
                            let mut delta = json!({"content": d});
                            if first {
                                delta["role"] = json!("assistant");
                            }
                            json!({"index": 0, "delta": delta, "finish_reason": Value::Null})
                        } else {
                            json!({"index": 0, "text": d, "logprobs": Value::Null, "finish_reason": Value::Null})
                        };
                        first = false;
                        chunk(choice, None)
                    }
                    Some(JobEvent::Done(f)) => {
                        finished = true;
                        let choice = if chat {
                            json!({"index": 0, "delta": {}, "finish_reason": f.finish_reason})
                        } else {
                            json!({"index": 0, "text": "", "logprobs": Value::Null, "finish_reason": f.finish_reason})
                        };
                        // the last chunk carries the finish, then [DONE]
                        let last = chunk(choice, Some((usage(&f), extra(&f))));
                        return std::task::Poll::Ready(Some(Ok::<_, std::convert::Infallible>(vec![
                            last,
                            Event::default().data("[DONE]"),
                        ])));
                    }
                    Some(JobEvent::Failed(m)) => {
                        finished = true;
                        Event::default()
                            .data(json!({"error": {"message": m, "type": "engine_error"}}).to_string())
                    }
                    None => {
                        finished = true;
                        Event::default().data("[DONE]")
                    }
                };
                std::task::Poll::Ready(Some(Ok(vec![event])))
            }
        }
    });
    use futures_util::StreamExt;
    let flat = stream.flat_map(|r: std::result::Result<Vec<Event>, std::convert::Infallible>| {
        futures_util::stream::iter(r.unwrap_or_default().into_iter().map(Ok::<_, std::convert::Infallible>))
    });
    Sse::new(flat).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        None,
        "no such route (see /v1/completions, /v1/chat/completions, /v1/models, /health)",
    )
    .into_response()
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Serve `engine` until SIGINT/SIGTERM: the HTTP side on its own thread, the engine on this one.
/// In-flight requests finish before it returns.
pub fn serve<B: Backend>(
    engine: Engine<B>,
    http_tok: Tokenizer,
    engine_tok: Tokenizer,
    cfg: ServeConfig,
) -> Result<()> {
    if cfg.max_batch == 0 {
        return Err(Error::options("--max-batch must be at least 1"));
    }
    let addr: SocketAddr = format!("{}:{}", cfg.host, cfg.port).parse().map_err(|e| {
        Error::options(format!("--host {} --port {}: not an address: {e}", cfg.host, cfg.port))
    })?;
    let (tx, rx) = mpsc::channel::<Job>();
    let shared = Arc::new(Shared {
        jobs: std::sync::Mutex::new(Some(tx)),
        queued: AtomicUsize::new(0),
        max_batch: cfg.max_batch,
        model: engine.config.clone(),
        tok: http_tok,
        ids: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        running: AtomicUsize::new(0),
        completed: AtomicU64::new(0),
        abandoned: AtomicU64::new(0),
        cfg,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Device(format!("cannot start the HTTP runtime: {e}")))?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| Error::options(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| Error::options(format!("{addr}: {e}")))?;
    eprintln!("dllm serve: listening on http://{local} (model {})", shared.cfg.model_id);
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(shared.cfg.body_limit))
        .with_state(shared.clone());
    let sh = shared.clone();
    let http = std::thread::spawn(move || {
        let stop = sh.clone();
        let r = rt.block_on(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    shutdown_signal().await;
                    eprintln!("dllm serve: stopping (finishing in-flight requests)");
                    stop.stopping.store(true, Ordering::SeqCst);
                })
                .await
        });
        // No more jobs: the engine loop ends once the queue is drained.
        if let Ok(mut g) = sh.jobs.lock() {
            g.take();
        }
        r
    });
    engine_loop(&engine, &engine_tok, rx, &shared);
    match http.join() {
        Ok(Ok(())) => {
            eprintln!("dllm serve: stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(Error::Device(format!("the HTTP server failed: {e}"))),
        Err(_) => Err(Error::Device("the HTTP server thread panicked".into())),
    }
}
