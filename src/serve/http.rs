//! The HTTP handlers: health, models, completions and chat completions (JSON or server-sent
//! events), and the fallbacks that keep every error in the OpenAI error object.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::MatchedPath;
use axum::extract::{Path, State};
use axum::http::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc as tmpsc;

use super::openai::{self, ApiError};
use super::scheduler::{Finished, Job, JobEvent};
use super::Shared;

type Events = tmpsc::UnboundedReceiver<JobEvent>;

fn authorized(sh: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &sh.cfg.api_key else { return Ok(()) };
    let given =
        headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "missing or wrong API key (Authorization: Bearer KEY)",
        ))
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub async fn health(State(sh): State<Arc<Shared>>) -> Response {
    Json(json!({"status": "ok", "queued": sh.queued.load(Ordering::SeqCst),
                "running": sh.running.load(Ordering::SeqCst),
                "completed": sh.completed.load(Ordering::SeqCst),
                "abandoned": sh.abandoned.load(Ordering::SeqCst)}))
    .into_response()
}

/// `GET /metrics`: Prometheus text format (open like `/health`: no API key).
pub async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    let text = sh.metrics.render(sh.queued.load(Ordering::SeqCst), sh.running.load(Ordering::SeqCst));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Count every answered request by its route (the matched pattern, else `other`) and status.
pub async fn count_requests(State(sh): State<Arc<Shared>>, req: Request<Body>, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("other", |m| m.as_str()).to_string();
    let r = next.run(req).await;
    sh.metrics.http_request(&route, r.status().as_u16());
    r
}

fn model_object(sh: &Shared) -> Value {
    json!({"id": sh.cfg.model_id, "object": "model", "created": 0, "owned_by": "dllm"})
}

pub async fn models(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&sh, &headers) {
        return r.into_response();
    }
    Json(json!({"object": "list", "data": [model_object(&sh)]})).into_response()
}

pub async fn model(State(sh): State<Arc<Shared>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorized(&sh, &headers) {
        return r.into_response();
    }
    if id != sh.cfg.model_id {
        let e = ApiError {
            code: Some("model_not_found"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("no model `{id}` (this server serves `{}`)", sh.cfg.model_id),
            )
        };
        return e.into_response();
    }
    Json(model_object(&sh)).into_response()
}

pub async fn completions(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    complete(sh, headers, body, false).await
}

pub async fn chat_completions(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    complete(sh, headers, body, true).await
}

/// Identity of one response: what every JSON body and chunk repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    chat: bool,
}

async fn complete(
    sh: Arc<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    chat: bool,
) -> Response {
    if let Err(r) = authorized(&sh, &headers) {
        return r.into_response();
    }
    let body = match body {
        Ok(b) => b,
        Err(r) => return ApiError::of_status(r.status()).into_response(),
    };
    let ctx = openai::Context { tok: &sh.tok, model: &sh.model, gen_length: sh.cfg.gen_length };
    let req = match openai::parse(&ctx, &body, chat) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let (stream, include_usage) = (req.stream, req.include_usage);
    let rx = match enqueue(&sh, req) {
        Ok(rx) => rx,
        Err(r) => return r.into_response(),
    };
    let n = sh.ids.fetch_add(1, Ordering::SeqCst);
    let id = format!("{}-{n}", if chat { "chatcmpl" } else { "cmpl" });
    let meta = Meta { id, created: now_s(), model: sh.cfg.model_id.clone(), chat };
    if stream {
        respond_sse(meta, rx, include_usage)
    } else {
        respond_json(meta, rx).await
    }
}

/// Reserve a queue slot and hand the job to the engine, or refuse (429 full, 503 stopping).
fn enqueue(sh: &Shared, req: openai::Request) -> Result<Events, ApiError> {
    let stopping =
        || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_shutting_down", "the server is stopping");
    if sh.stopping.load(Ordering::SeqCst) {
        return Err(stopping());
    }
    let waiting = sh.queued.fetch_add(1, Ordering::SeqCst);
    if waiting >= sh.cfg.max_queue {
        sh.queued.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            format!(
                "the queue is full ({waiting} requests waiting, --max-queue {}); retry later",
                sh.cfg.max_queue
            ),
        ));
    }
    let (tx, rx) = tmpsc::unbounded_channel();
    let job = Job {
        prompt: req.prompt,
        suffix: req.suffix,
        opts: req.opts,
        max_tokens: req.max_tokens,
        stop: req.stop,
        events: tx,
        queued_at: std::time::Instant::now(),
    };
    let sent = sh.jobs.lock().ok().and_then(|g| g.as_ref().map(|s| s.send(job).is_ok())).unwrap_or(false);
    if !sent {
        sh.queued.fetch_sub(1, Ordering::SeqCst);
        return Err(stopping());
    }
    Ok(rx)
}

fn usage(f: &Finished) -> Value {
    json!({"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
           "total_tokens": f.prompt_tokens + f.completion_tokens})
}

/// dllm's own figures of a finished request (the `dllm` field).
fn extra(f: &Finished) -> Value {
    let tpf = f.completion_tokens as f64 / f.nfe.max(1) as f64;
    json!({"nfe": f.nfe, "tpf": tpf, "ms": f.ms, "batch": f.batch, "seed": f.seed, "gen_length": f.gen_length})
}

fn engine_error(m: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "engine_error", m)
}

async fn respond_json(meta: Meta, mut rx: Events) -> Response {
    loop {
        match rx.recv().await {
            Some(JobEvent::Delta(_)) => continue,
            Some(JobEvent::Done(f)) => {
                let choice = if meta.chat {
                    json!({"index": 0, "message": {"role": "assistant", "content": f.text}, "finish_reason": f.finish_reason})
                } else {
                    json!({"index": 0, "text": f.text, "logprobs": Value::Null, "finish_reason": f.finish_reason})
                };
                let object = if meta.chat { "chat.completion" } else { "text_completion" };
                return Json(
                    json!({"id": meta.id, "object": object, "created": meta.created, "model": meta.model,
                                   "choices": [choice], "usage": usage(&f), "dllm": extra(&f)}),
                )
                .into_response();
            }
            Some(JobEvent::Failed(m)) => return engine_error(m).into_response(),
            None => {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_shutting_down",
                    "the engine stopped",
                )
                .into_response()
            }
        }
    }
}

/// Where a stream is: a chat stream opens with the assistant's role before any text.
enum Phase {
    Open,
    Text,
    Closed,
}

/// Server-sent events: (chat) the role, then one chunk per finished block's new text, the finish
/// chunk, (with `include_usage`) a usage chunk with `choices: []`, then `[DONE]`.
fn respond_sse(meta: Meta, rx: Events, include_usage: bool) -> Response {
    let meta = Arc::new(meta);
    let first = if meta.chat { Phase::Open } else { Phase::Text };
    let events = futures_util::stream::unfold((rx, first), move |(mut rx, phase)| {
        let meta = meta.clone();
        async move {
            let chunk = |choices: Value| sse_chunk(&meta, choices, include_usage.then_some(Value::Null));
            match phase {
                Phase::Closed => None,
                Phase::Open => {
                    let role = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": Value::Null}]);
                    Some((vec![chunk(role)], (rx, Phase::Text)))
                }
                Phase::Text => {
                    let out = match rx.recv().await {
                        Some(JobEvent::Delta(d)) => {
                            return Some((
                                vec![chunk(json!([text_choice(&meta, &d, None)]))],
                                (rx, Phase::Text),
                            ))
                        }
                        Some(JobEvent::Done(f)) => finish_events(&meta, &f, include_usage),
                        Some(JobEvent::Failed(m)) => {
                            vec![Event::default().data(engine_error(m).body().to_string()), done()]
                        }
                        None => vec![done()],
                    };
                    Some((out, (rx, Phase::Closed)))
                }
            }
        }
    });
    let flat = events.flat_map(|v| futures_util::stream::iter(v.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(flat).into_response()
}

fn done() -> Event {
    Event::default().data("[DONE]")
}

/// One choice of a stream chunk: new text, or (`finish`) the end with its reason.
fn text_choice(meta: &Meta, text: &str, finish: Option<&str>) -> Value {
    if meta.chat {
        let delta = if finish.is_some() { json!({}) } else { json!({"content": text}) };
        json!({"index": 0, "delta": delta, "finish_reason": finish})
    } else {
        json!({"index": 0, "text": text, "logprobs": Value::Null, "finish_reason": finish})
    }
}

fn sse_chunk(meta: &Meta, choices: Value, usage: Option<Value>) -> Event {
    let object = if meta.chat { "chat.completion.chunk" } else { "text_completion" };
    let mut c = json!({"id": meta.id, "object": object, "created": meta.created, "model": meta.model, "choices": choices});
    if let Some(u) = usage {
        c["usage"] = u;
    }
    Event::default().data(c.to_string())
}

/// The last events of a stream: the finish (with dllm's figures), the usage if asked, `[DONE]`.
fn finish_events(meta: &Meta, f: &Finished, include_usage: bool) -> Vec<Event> {
    let choice = text_choice(meta, "", Some(f.finish_reason));
    let object = if meta.chat { "chat.completion.chunk" } else { "text_completion" };
    let mut last = json!({"id": meta.id, "object": object, "created": meta.created, "model": meta.model,
                          "choices": [choice], "dllm": extra(f)});
    if include_usage {
        last["usage"] = Value::Null;
    }
    let mut out = vec![Event::default().data(last.to_string())];
    if include_usage {
        out.push(sse_chunk(meta, json!([]), Some(usage(f))));
    }
    out.push(done());
    out
}

pub async fn not_found() -> Response {
    let mut e = ApiError::of_status(StatusCode::NOT_FOUND);
    e.message = "no such route (see /v1/completions, /v1/chat/completions, /v1/models, /health)".into();
    e.into_response()
}

pub async fn method_not_allowed() -> Response {
    ApiError::of_status(StatusCode::METHOD_NOT_ALLOWED).into_response()
}

/// Any error response not already in the OpenAI error format (axum's and hyper's own plain-text
/// rejections) is replaced by the error object of its status.
pub async fn json_errors(r: Response) -> Response {
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if (r.status().is_client_error() || r.status().is_server_error()) && !is_json {
        return ApiError::of_status(r.status()).into_response();
    }
    r
}
