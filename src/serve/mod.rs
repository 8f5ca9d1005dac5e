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
use crate::decode::Engine;
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
    /// Requests in the batch being decoded, answered, and requests dropped because their client
    /// left (waiting or running).
    running: AtomicUsize,
    completed: AtomicU64,
    abandoned: AtomicU64,
    metrics: metrics::Metrics,
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
        metrics: metrics::Metrics::new()?,
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
    scheduler::run(&engine, &engine_tok, rx, &shared);
    match http.join() {
        Ok(Ok(())) => {
            eprintln!("dllm serve: stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(Error::Device(format!("the HTTP server failed: {e}"))),
        Err(_) => Err(Error::Device("the HTTP server thread panicked".into())),
    }
}
