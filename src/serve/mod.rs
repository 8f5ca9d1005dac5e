//! `dllm serve`: an OpenAI-compatible HTTP server (completions, chat completions, models, health)
//! over one engine.
//!
//! Two threads: the engine's (it owns the backend, the only place decoding happens) and the HTTP
//! side (tokio + axum). A request is validated and tokenized on the HTTP side, then queued as a
//! [`Job`]. The engine thread runs a continuous batch: at every block boundary, rows whose answer
//! is complete (end token, `max_tokens`, a stop string) leave, and waiting requests with the
//! batch's decoding options join (up to `--max-batch`); then every row decodes its next block.
//! Per-row padding masks, positions and progress (spec §6) make each answer token-identical to
//! running it alone. A row whose client went away is freed at the next step.

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
use crate::decode::{DecodeOptions, Engine, Progress, RowStart};
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

/// A request in the running batch.
struct Active {
    job: Job,
    row: RowStart,
    /// Answer text streamed so far.
    sent: String,
    admitted: Instant,
    /// The most rows it shared a forward with.
    batch: usize,
    gone: bool,
}

/// Frees, at the next step, the rows whose client went away.
struct Abandon<'a> {
    rows: &'a mut [Active],
    shared: &'a Shared,
}

impl Progress for Abandon<'_> {
    fn cancelled(&mut self, row: usize) -> bool {
        let a = &mut self.rows[row];
        if !a.gone && a.job.events.is_closed() {
            a.gone = true;
            self.shared.abandoned.fetch_add(1, Ordering::SeqCst);
        }
        a.gone
    }
}

/// The engine loop (continuous batching): before every block, rows whose answer is complete
/// leave and waiting requests with the batch's decoding options join (up to `--max-batch`);
/// then every row decodes its next block ([`Engine::generate_rows`]). Runs until every sender is
/// gone and the work is drained.
fn engine_loop<B: Backend>(engine: &Engine<B>, tok: &Tokenizer, jobs: mpsc::Receiver<Job>, shared: &Shared) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut running: Vec<Active> = Vec::new();
    let mut open = true;
    loop {
        if running.is_empty() && pending.is_empty() {
            if !open {
                return;
            }
            match jobs.recv() {
                Ok(j) => pending.push_back(j),
                Err(_) => return,
            }
        }
        loop {
            match jobs.try_recv() {
                Ok(j) => pending.push_back(j),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        // Requests whose client left while waiting.
        let before = pending.len();
        pending.retain(|j| !j.events.is_closed());
        shared.queued.fetch_sub(before - pending.len(), Ordering::SeqCst);
        // Admit: the batch's options are the first row's. A new batch takes every waiting
        // request of its mode, in arrival order; a running batch takes newcomers of its mode only
        // until a request of another mode is first in line (then it drains: no starvation).
        let key = match running.first() {
            Some(a) => batch_key(engine, &a.job.opts),
            None => match pending.front() {
                Some(j) => batch_key(engine, &j.opts),
                None => continue,
            },
        };
        let fresh = running.is_empty();
        let mut i = 0;
        while running.len() < shared.cfg.max_batch && i < pending.len() {
            if batch_key(engine, &pending[i].opts) != key {
                if !fresh {
                    break;
                }
                i += 1;
                continue;
            }
            let job = pending.remove(i).expect("in range");
            shared.queued.fetch_sub(1, Ordering::SeqCst);
            let row = RowStart {
                prompt: job.prompt.clone(),
                seed: Some(job.opts.seed),
                gen_length: Some(job.opts.gen_length),
                ..RowStart::default()
            };
            running.push(Active {
                job,
                row,
                sent: String::new(),
                admitted: Instant::now(),
                batch: 1,
                gone: false,
            });
        }
        let n = running.len();
        shared.running.store(n, Ordering::SeqCst);
        for a in running.iter_mut() {
            a.batch = a.batch.max(n);
        }
        let starts: Vec<RowStart> = running.iter().map(|a| a.row.clone()).collect();
        let longest = running.iter().map(|a| a.job.opts.gen_length).max().unwrap_or(0);
        let opts = call_options(&key, longest);
        let result = engine.generate_rows(&starts, &opts, 1, &mut Abandon { rows: &mut running, shared });
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                for a in running.drain(..) {
                    let _ = a.job.events.send(JobEvent::Failed(e.to_string()));
                }
                continue;
            }
        };
        // One more block per row: stream it, and let finished rows go.
        let bl = block_window(engine, &opts);
        let mut keep = Vec::with_capacity(n);
        for (mut a, o) in running.drain(..).zip(&out.rows) {
            let upto = (a.row.done.len() + bl).min(o.tokens.len());
            a.row.done = o.tokens[..upto].to_vec();
            a.row.forwards += o.nfe as u64;
            if a.gone {
                continue;
            }
            let (text, tokens, why) = answer(tok, &a.row.done, a.job.max_tokens, &a.job.stop);
            let finished = why.is_some() || a.row.done.len() >= a.job.opts.gen_length;
            let hold = a.job.stop.iter().map(|s| s.chars().count()).max().unwrap_or(1).saturating_sub(1);
            if let Some(d) = delta(&a.sent, &text, finished, hold) {
                let _ = a.job.events.send(JobEvent::Delta(d.to_string()));
                a.sent.push_str(d);
            }
            if finished {
                let _ = a.job.events.send(JobEvent::Done(Finished {
                    text,
                    finish_reason: why.unwrap_or("length"),
                    prompt_tokens: a.job.prompt.len(),
                    completion_tokens: tokens,
                    nfe: a.row.forwards as usize,
                    ms: a.admitted.elapsed().as_secs_f64() * 1e3,
                    batch: a.batch,
                }));
                shared.completed.fetch_add(1, Ordering::SeqCst);
            } else {
                keep.push(a);
            }
        }
        running = keep;
        shared.running.store(running.len(), Ordering::SeqCst);
    }
}

/// What requests must share to decode in one batch: every option but the seed (rows keep their
/// own) and the generation length (rows end where they end), with the steps as steps per block —
/// unless the whole generation is one window (Dream's uncached baseline), where the length
/// stays part of it.
fn batch_key<B: Backend>(engine: &Engine<B>, o: &DecodeOptions) -> DecodeOptions {
    let bl = block_window(engine, o);
    if bl == o.gen_length {
        return DecodeOptions { seed: 0, ..o.clone() };
    }
    DecodeOptions { seed: 0, gen_length: 0, steps: o.steps / (o.gen_length / bl), ..o.clone() }
}

/// The options of one call for a batch of `key`'s rows, the longest generating `longest`.
fn call_options(key: &DecodeOptions, longest: usize) -> DecodeOptions {
    if key.gen_length != 0 {
        return key.clone();
    }
    let bl = key.block_length;
    DecodeOptions { gen_length: longest, steps: key.steps * (longest / bl), ..key.clone() }
}

/// Positions one call of [`Engine::generate_rows`] with `max_blocks = 1` decodes per row.
fn block_window<B: Backend>(engine: &Engine<B>, opts: &DecodeOptions) -> usize {
    if engine.config.arch == crate::model::Arch::Dream && opts.cache == CacheMode::None {
        opts.gen_length // Dream's uncached baseline: the whole generation is one window (spec §3)
    } else {
        opts.block_length
    }
}

/// State shared by the HTTP handlers and the engine loop.
pub struct Shared {
    jobs: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    queued: AtomicUsize,
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
