//! `dllm serve`: an OpenAI-compatible HTTP server (completions, chat completions, models, health,
//! Prometheus metrics) over one engine.
//!
//! Two threads: the engine's (it owns the backend, the only place decoding happens; see
//! [`scheduler`]) and the HTTP side (tokio + axum; [`http`]). A request is parsed, validated and
//! tokenized on the HTTP side ([`openai`]), then queued as a job for the continuous batch.
//!
//! For a diffusion model the canvas length is part of the decoding: every request decodes the
//! server's canvas (`--gen-length`, or the request's `gen_length`), and `max_tokens` only cuts the
//! answer, so a request answers the same whatever `max_tokens` it gives.

pub mod http;
pub mod metrics;
pub mod openai;
pub mod respond;
pub mod scheduler;
pub mod text;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};

use crate::backend::Backend;
use crate::decode::{Capacity, DecodeOptions, Engine, Session};
use crate::error::{Error, Result};
use crate::model::{ModelConfig, Tokenizer};
use scheduler::Job;

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
    /// The canvas (generated positions) a request decodes when it gives no `gen_length`.
    pub gen_length: usize,
    /// Most tokens of one request: prompt + generation + suffix (None: the model's context, at
    /// most [`DEFAULT_MAX_CONTEXT`]). Sizes the session's buffers: see [`Limits`].
    pub max_context: Option<usize>,
    /// Longest decoding window a request may use: its block, or its whole generation where
    /// that is one window (None: the larger of [`DEFAULT_MAX_BLOCK`] and the default request's).
    pub max_block: Option<usize>,
}

/// The default `--max-context`'s cap (tokens).
pub const DEFAULT_MAX_CONTEXT: usize = 4096;
/// The default `--max-block` (tokens), unless the default request's window is longer.
pub const DEFAULT_MAX_BLOCK: usize = 256;

/// What the server's one decode session is sized for (allocated at start, never grown): every
/// batch fits it, so device memory stays flat.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_batch: usize,
    pub max_context: usize,
    pub max_block: usize,
    /// Bytes of the session's buffers ([`Capacity::bytes`]).
    pub session_bytes: u64,
}

impl Limits {
    /// The flags resolved against the model; errors name a flag that cannot work.
    fn resolve(cfg: &ServeConfig, model: &ModelConfig) -> Result<(Self, Capacity)> {
        if cfg.max_batch == 0 {
            return Err(Error::options("--max-batch must be at least 1"));
        }
        let max_context = cfg.max_context.unwrap_or(model.max_seq_len.min(DEFAULT_MAX_CONTEXT));
        if max_context == 0 || max_context > model.max_seq_len {
            return Err(Error::options(format!(
                "--max-context {max_context} must be from 1 to the model's context ({})",
                model.max_seq_len
            )));
        }
        let default =
            DecodeOptions { gen_length: cfg.gen_length, steps: cfg.gen_length, ..Default::default() };
        let window = default.window_len(model.arch);
        let max_block = cfg.max_block.unwrap_or(DEFAULT_MAX_BLOCK.max(window).min(max_context));
        if max_block == 0 || max_block > max_context || window > max_block {
            return Err(Error::options(format!(
                "--max-block {max_block} must be at least the default request's window ({window}: \
                 --gen-length {} in blocks of {}) and at most --max-context {max_context}",
                cfg.gen_length, default.block_length
            )));
        }
        let cap = Capacity {
            batch: cfg.max_batch,
            canvas: max_context,
            window: max_block,
            logprobs: Some(openai::MAX_LOGPROBS),
        };
        Ok((Limits { max_batch: cfg.max_batch, max_context, max_block, session_bytes: 0 }, cap))
    }
}

/// State shared by the HTTP handlers and the engine loop.
pub struct Shared {
    jobs: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    queued: AtomicUsize,
    cfg: ServeConfig,
    limits: Limits,
    /// Device memory in use after the last block, bytes (0: the backend does not say).
    device_memory: AtomicU64,
    model: ModelConfig,
    tok: Tokenizer,
    ids: AtomicU64,
    stopping: AtomicBool,
    /// Requests in the batch being decoded, answered, and requests dropped because their client
    /// left (waiting or running).
    running: AtomicUsize,
    completed: AtomicU64,
    abandoned: AtomicU64,
    metrics: metrics::Metrics,
}

/// The server's one decode session, allocated for its limits (an allocation that fails names
/// the flags to lower).
fn open_session<'e, B: Backend>(
    engine: &'e Engine<B>,
    cfg: &ServeConfig,
) -> Result<(Limits, Session<'e, B>)> {
    let (mut limits, cap) = Limits::resolve(cfg, &engine.config)?;
    let session = Session::new(engine, cap).map_err(|e| match e {
        Error::Device(m) => Error::Device(format!(
            "cannot allocate the decode buffers for --max-batch {} × --max-context {} (--max-block \
             {}): {m}; lower one of them",
            limits.max_batch, limits.max_context, limits.max_block
        )),
        other => other,
    })?;
    limits.session_bytes = session.bytes();
    eprintln!(
        "dllm serve: decode buffers for {} rows × {} tokens (block {}): {:.1} MiB",
        limits.max_batch,
        limits.max_context,
        limits.max_block,
        limits.session_bytes as f64 / (1 << 20) as f64
    );
    Ok((limits, session))
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
    let (limits, session) = open_session(&engine, &cfg)?;
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
        metrics: metrics::Metrics::new()?,
        cfg,
        limits,
        device_memory: AtomicU64::new(engine.backend.memory_used().unwrap_or(0)),
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
        .route("/health", get(http::health))
        .route("/metrics", get(http::metrics))
        .route("/v1/models", get(http::models))
        .route("/v1/models/{id}", get(http::model))
        .route("/v1/completions", post(http::completions))
        .route("/v1/chat/completions", post(http::chat_completions))
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(middleware::map_response(http::json_errors))
        .layer(middleware::from_fn_with_state(shared.clone(), http::count_requests))
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
    scheduler::run(&engine, session, &engine_tok, rx, &shared);
    match http.join() {
        Ok(Ok(())) => {
            eprintln!("dllm serve: stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(Error::Device(format!("the HTTP server failed: {e}"))),
        Err(_) => Err(Error::Device("the HTTP server thread panicked".into())),
    }
}
