//! `GET /metrics`: the server's figures in the Prometheus text format, through the `metrics`
//! facade and `metrics-exporter-prometheus` (no hand-written formatting). The recorder is the
//! server's own (not the process-global one), so handles are registered on it once here.
//!
//! Counters: HTTP requests by route and status, finished requests by reason, batch forwards,
//! generated canvas positions, prompt and answer tokens. Gauges: queue depth, running rows,
//! device memory in use (CUDA: the whole device's used bytes after each block), the process's
//! resident memory. Histograms: rows per batch forward (each block), request latency and queue
//! wait (seconds), forwards per request (NFE) and tokens per forward per request (TPF).

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::error::{Error, Result};

static META: Metadata<'static> = Metadata::new("dllm::serve", Level::INFO, Some(module_path!()));

/// Histogram buckets (upper bounds) per metric.
const BUCKETS: &[(&str, &[f64])] = &[
    ("dllm_batch_rows", &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
    ("dllm_request_duration_seconds", &[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
    ("dllm_queue_wait_seconds", &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
    ("dllm_request_nfe", &[4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
    ("dllm_tokens_per_forward", &[1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0]),
];

/// The server's metrics: handles registered once, recorded from both threads.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub batch_rows: Histogram,
    pub request_seconds: Histogram,
    pub queue_seconds: Histogram,
    pub request_nfe: Histogram,
    pub tokens_per_forward: Histogram,
    /// Forwards of the batch (one per step, whatever its rows).
    pub forwards: Counter,
    /// Canvas positions decoded (every row's block, counted when the block is done).
    pub generated_tokens: Counter,
    pub prompt_tokens: Counter,
    /// Answer tokens returned (after the cut at an end token, `max_tokens` or a stop string).
    pub completion_tokens: Counter,
    pub device_memory: Gauge,
    queued: Gauge,
    running: Gauge,
    resident: Gauge,
}

impl Metrics {
    /// A recorder with the histograms' buckets, and every unlabelled metric registered and
    /// described. Errors: [`Error::Options`] only if a bucket list is empty (a bug).
    pub fn new() -> Result<Self> {
        let mut b = PrometheusBuilder::new();
        for (name, buckets) in BUCKETS {
            b = b
                .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
                .map_err(|e| Error::options(format!("metrics buckets of {name}: {e}")))?;
        }
        let recorder = b.build_recorder();
        let handle = recorder.handle();
        let r = &recorder;
        let hist = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            r.describe_histogram(KeyName::from_const_str(name), unit, help.into());
            r.register_histogram(&Key::from_static_name(name), &META)
        };
        let count = |name: &'static str, help: &'static str| {
            r.describe_counter(KeyName::from_const_str(name), None, help.into());
            r.register_counter(&Key::from_static_name(name), &META)
        };
        let gauge = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            r.describe_gauge(KeyName::from_const_str(name), unit, help.into());
            r.register_gauge(&Key::from_static_name(name), &META)
        };
        r.describe_counter(
            KeyName::from_const_str("dllm_http_requests_total"),
            None,
            "HTTP requests answered, by route and status code".into(),
        );
        r.describe_counter(
            KeyName::from_const_str("dllm_requests_finished_total"),
            None,
            "Completion requests that left the engine, by reason (stop, length, error, abandoned)".into(),
        );
        Ok(Metrics {
            batch_rows: hist(
                "dllm_batch_rows",
                None,
                "Rows decoded together, per block of the running batch",
            ),
            request_seconds: hist(
                "dllm_request_duration_seconds",
                Some(Unit::Seconds),
                "From joining the batch to the answer",
            ),
            queue_seconds: hist(
                "dllm_queue_wait_seconds",
                Some(Unit::Seconds),
                "From arrival to joining the batch",
            ),
            request_nfe: hist("dllm_request_nfe", None, "Forwards a request took part in (NFE)"),
            tokens_per_forward: hist(
                "dllm_tokens_per_forward",
                None,
                "Canvas positions per forward of a request (TPF)",
            ),
            forwards: count("dllm_forwards_total", "Forwards of the running batch"),
            generated_tokens: count("dllm_generated_tokens_total", "Canvas positions decoded"),
            prompt_tokens: count("dllm_prompt_tokens_total", "Prompt tokens of finished requests"),
            completion_tokens: count("dllm_completion_tokens_total", "Answer tokens returned"),
            device_memory: gauge(
                "dllm_device_memory_used_bytes",
                Some(Unit::Bytes),
                "Device memory in use (CUDA: the whole GPU's, after the last block; CPU: not reported)",
            ),
            queued: gauge("dllm_queue_depth", None, "Requests waiting for the engine"),
            running: gauge("dllm_running_rows", None, "Rows in the running batch"),
            resident: gauge(
                "dllm_process_resident_bytes",
                Some(Unit::Bytes),
                "The server process's resident memory",
            ),
            recorder,
            handle,
        })
    }

    /// An answered HTTP request.
    pub fn http_request(&self, route: &str, status: u16) {
        let labels = vec![Label::new("route", route.to_string()), Label::new("status", status.to_string())];
        self.recorder
            .register_counter(&Key::from_parts("dllm_http_requests_total", labels), &META)
            .increment(1);
    }

    /// A request that left the engine: `stop`, `length`, `error` or `abandoned`.
    pub fn finished(&self, reason: &str) {
        let labels = vec![Label::new("reason", reason.to_string())];
        self.recorder
            .register_counter(&Key::from_parts("dllm_requests_finished_total", labels), &META)
            .increment(1);
    }

    /// The text exposition, with the gauges read now.
    pub fn render(&self, queued: usize, running: usize) -> String {
        self.queued.set(queued as f64);
        self.running.set(running as f64);
        if let Some(rss) = resident_bytes() {
            self.resident.set(rss as f64);
        }
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// The process's resident set (Linux: `/proc/self/statm`, in pages of 4 KiB); None elsewhere.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
