//! The HTTP handlers: health, models, completions and chat completions (JSON or server-sent
//! events), and the fallbacks that keep every error in the OpenAI error object.

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
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc as tmpsc;

use super::openai::{self, ApiError};
use super::respond::{self, Events, Meta};
use super::scheduler::Job;
use super::Shared;

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
    let l = &sh.limits;
    let device = match sh.device_memory.load(Ordering::SeqCst) {
        0 => Value::Null,
        b => json!(b),
    };
    Json(json!({"status": "ok", "queued": sh.queued.load(Ordering::SeqCst),
                "running": sh.running.load(Ordering::SeqCst),
                "completed": sh.completed.load(Ordering::SeqCst),
                "abandoned": sh.abandoned.load(Ordering::SeqCst),
                "memory": {"max_batch": l.max_batch, "max_context": l.max_context,
                           "max_block": l.max_block, "session_bytes": l.session_bytes,
                           "device_used_bytes": device}}))
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
    let ctx = openai::Context {
        tok: &sh.tok,
        model: &sh.model,
        gen_length: sh.cfg.gen_length,
        max_context: sh.limits.max_context,
        max_block: sh.limits.max_block,
    };
    let req = match openai::parse(&ctx, &body, chat) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let (stream, include_usage, prompt_tokens) = (req.stream, req.include_usage, req.prompt.len());
    let rxs = match enqueue(&sh, req) {
        Ok(rxs) => rxs,
        Err(r) => return r.into_response(),
    };
    let n = sh.ids.fetch_add(1, Ordering::SeqCst);
    let id = format!("{}-{n}", if chat { "chatcmpl" } else { "cmpl" });
    let meta = Meta { id, created: now_s(), model: sh.cfg.model_id.clone(), chat, prompt_tokens };
    if stream {
        respond::sse(meta, rxs, include_usage)
    } else {
        respond::json(meta, rxs).await
    }
}

/// Reserve `n` queue slots and hand the request's rows to the engine (row i samples with seed +
/// i), or refuse (429 full, 503 stopping).
fn enqueue(sh: &Shared, req: openai::Request) -> Result<Vec<Events>, ApiError> {
    let stopping =
        || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_shutting_down", "the server is stopping");
    if sh.stopping.load(Ordering::SeqCst) {
        return Err(stopping());
    }
    let waiting = sh.queued.fetch_add(req.n, Ordering::SeqCst);
    if waiting + req.n > sh.cfg.max_queue {
        sh.queued.fetch_sub(req.n, Ordering::SeqCst);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            format!(
                "the queue is full ({waiting} rows waiting, {} asked, --max-queue {}); retry later",
                req.n, sh.cfg.max_queue
            ),
        ));
    }
    let Ok(jobs) = sh.jobs.lock() else { return Err(stopping()) };
    let mut rxs = Vec::with_capacity(req.n);
    for i in 0..req.n {
        let (tx, rx) = tmpsc::unbounded_channel();
        let mut opts = req.opts.clone();
        opts.seed = opts.seed.wrapping_add(i as u64);
        let job = Job {
            prompt: req.prompt.clone(),
            suffix: req.suffix.clone(),
            opts,
            max_tokens: req.max_tokens,
            stop: req.stop.clone(),
            events: tx,
            queued_at: std::time::Instant::now(),
            logprobs: req.logprobs,
            stream: req.stream,
        };
        if jobs.as_ref().is_none_or(|s| s.send(job).is_err()) {
            // rows already sent see their receivers dropped and leave as abandoned
            sh.queued.fetch_sub(req.n - i, Ordering::SeqCst);
            return Err(stopping());
        }
        rxs.push(rx);
    }
    Ok(rxs)
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
