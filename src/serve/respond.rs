//! A completion's answer in the OpenAI schema: one JSON body, or server-sent events. A request
//! with `n` > 1 is n engine rows; choice i is row i (its events tagged with its index), `usage`
//! counts the prompt once and every choice's answer tokens.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc as tmpsc;

use super::openai::ApiError;
use super::scheduler::{AnswerLogprob, Finished, JobEvent};

/// One engine row's events.
pub type Events = tmpsc::UnboundedReceiver<JobEvent>;

/// Identity of one response: what every JSON body and chunk repeats.
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub chat: bool,
    pub prompt_tokens: usize,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        }
    }
}

/// The prompt once, every choice's answer tokens.
fn usage(meta: &Meta, done: &[Finished]) -> Value {
    let completion: usize = done.iter().map(|f| f.completion_tokens).sum();
    json!({"prompt_tokens": meta.prompt_tokens, "completion_tokens": completion,
           "total_tokens": meta.prompt_tokens + completion})
}

/// dllm's own figures of a finished row (the `dllm` field).
fn extra(f: &Finished) -> Value {
    let tpf = f.completion_tokens as f64 / f.nfe.max(1) as f64;
    json!({"nfe": f.nfe, "tpf": tpf, "ms": f.ms, "batch": f.batch, "seed": f.seed, "gen_length": f.gen_length})
}

/// dllm's figures of a whole request: one row's, or (n > 1) the sums and maxima with each
/// choice's own under `choices`.
fn extra_all(done: &[Finished]) -> Value {
    if done.len() == 1 {
        return extra(&done[0]);
    }
    let nfe: usize = done.iter().map(|f| f.nfe).sum();
    let tokens: usize = done.iter().map(|f| f.completion_tokens).sum();
    let ms = done.iter().map(|f| f.ms).fold(0.0, f64::max);
    json!({"nfe": nfe, "tpf": tokens as f64 / nfe.max(1) as f64, "ms": ms,
           "batch": done.iter().map(|f| f.batch).max(), "seed": done[0].seed,
           "gen_length": done[0].gen_length, "choices": done.iter().map(extra).collect::<Vec<_>>()})
}

pub fn engine_error(m: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "engine_error", m)
}

fn engine_stopped() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_shutting_down", "the engine stopped")
}

/// A row's answer: its last event (text deltas skipped).
async fn finished(rx: &mut Events) -> Result<Finished, ApiError> {
    loop {
        match rx.recv().await {
            Some(JobEvent::Delta(..)) => continue,
            Some(JobEvent::Done(f)) => return Ok(f),
            Some(JobEvent::Failed(m)) => return Err(engine_error(m)),
            None => return Err(engine_stopped()),
        }
    }
}

/// One JSON body once every row is done (the first failure answers instead).
pub async fn json(meta: Meta, mut rxs: Vec<Events>) -> Response {
    let mut done = Vec::with_capacity(rxs.len());
    for rx in rxs.iter_mut() {
        match finished(rx).await {
            Ok(f) => done.push(f),
            Err(e) => return e.into_response(),
        }
    }
    let choices: Vec<Value> = done
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let lp = f.logprobs.as_deref().map_or(Value::Null, |l| logprobs_json(meta.chat, l, 0));
            if meta.chat {
                json!({"index": i, "message": {"role": "assistant", "content": f.text}, "logprobs": lp,
                       "finish_reason": f.finish_reason})
            } else {
                json!({"index": i, "text": f.text, "logprobs": lp, "finish_reason": f.finish_reason})
            }
        })
        .collect();
    Json(json!({"id": meta.id, "object": meta.object(false), "created": meta.created, "model": meta.model,
                "choices": choices, "usage": usage(&meta, &done), "dllm": extra_all(&done)}))
    .into_response()
}

/// A choice's `logprobs` in OpenAI's shapes: chat `{"content": [{token, logprob, bytes,
/// top_logprobs}]}`; completions `{tokens, token_logprobs, top_logprobs: [{token: logprob}],
/// text_offset}` (offsets in characters of the answer; a stream's chunk starts at `offset`).
fn logprobs_json(chat: bool, lps: &[AnswerLogprob], offset: usize) -> Value {
    if chat {
        let entry = |t: &str, lp: f64| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
        let content: Vec<Value> = lps
            .iter()
            .map(|a| {
                let mut e = entry(&a.token, a.logprob);
                e["top_logprobs"] = a.top.iter().map(|(t, lp)| entry(t, *lp)).collect();
                e
            })
            .collect();
        return json!({"content": content, "refusal": Value::Null});
    }
    let mut offset = offset;
    let offsets: Vec<usize> = lps
        .iter()
        .map(|a| {
            let o = offset;
            offset += a.token.chars().count();
            o
        })
        .collect();
    let tops: Vec<Value> = lps
        .iter()
        .map(|a| Value::Object(a.top.iter().map(|(t, lp)| (t.clone(), json!(lp))).collect()))
        .collect();
    json!({"tokens": lps.iter().map(|a| &a.token).collect::<Vec<_>>(),
           "token_logprobs": lps.iter().map(|a| a.logprob).collect::<Vec<_>>(),
           "top_logprobs": tops, "text_offset": offsets})
}

/// One choice of a stream chunk: new text (and its tokens' `logprobs`), or (`finish`) the end
/// with its reason.
fn text_choice(meta: &Meta, i: usize, text: &str, finish: Option<&str>, logprobs: Value) -> Value {
    if meta.chat {
        let delta = if finish.is_some() { json!({}) } else { json!({"content": text}) };
        let mut c = json!({"index": i, "delta": delta, "finish_reason": finish});
        if !logprobs.is_null() {
            c["logprobs"] = logprobs;
        }
        c
    } else {
        json!({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish})
    }
}

fn chunk(meta: &Meta, choices: Value, usage: Option<Value>, dllm: Option<Value>) -> Event {
    let mut c = json!({"id": meta.id, "object": meta.object(true), "created": meta.created,
                       "model": meta.model, "choices": choices});
    if let Some(u) = usage {
        c["usage"] = u;
    }
    if let Some(d) = dllm {
        c["dllm"] = d;
    }
    Event::default().data(c.to_string())
}

fn done_event() -> Event {
    Event::default().data("[DONE]")
}

/// A stream's progress over its rows.
struct Progress {
    meta: Arc<Meta>,
    include_usage: bool,
    done: Vec<Option<Finished>>,
    /// Per choice: answer characters streamed so far (completions' `text_offset`).
    offsets: Vec<usize>,
    closed: Arc<AtomicBool>,
}

impl Progress {
    /// The events of one row's event; the last row's finish also closes the stream.
    fn on(&mut self, i: usize, ev: JobEvent) -> Vec<Event> {
        let (meta, usage_null) = (&self.meta, self.include_usage.then_some(Value::Null));
        match ev {
            JobEvent::Delta(d, lps) => {
                let lp = lps.as_deref().map_or(Value::Null, |l| logprobs_json(meta.chat, l, self.offsets[i]));
                self.offsets[i] += lps.iter().flatten().map(|a| a.token.chars().count()).sum::<usize>();
                vec![chunk(meta, json!([text_choice(meta, i, &d, None, lp)]), usage_null, None)]
            }
            JobEvent::Failed(m) => {
                self.closed.store(true, Ordering::SeqCst);
                vec![Event::default().data(engine_error(m).body().to_string()), done_event()]
            }
            JobEvent::Done(f) => {
                let fin = json!([text_choice(meta, i, "", Some(f.finish_reason), Value::Null)]);
                let mut out = vec![chunk(meta, fin, usage_null, Some(extra(&f)))];
                self.done[i] = Some(f);
                if self.done.iter().all(Option::is_some) {
                    if self.include_usage {
                        let all: Vec<Finished> = self.done.iter_mut().filter_map(Option::take).collect();
                        out.push(chunk(meta, json!([]), Some(usage(meta, &all)), None));
                    }
                    out.push(done_event());
                    self.closed.store(true, Ordering::SeqCst);
                }
                out
            }
        }
    }
}

/// Server-sent events: (chat) each choice's role, then one chunk per finished block's new text
/// of any choice, each choice's finish chunk (with its dllm figures), (with `include_usage`) a
/// usage chunk with `choices: []`, then `[DONE]`.
pub fn sse(meta: Meta, rxs: Vec<Events>, include_usage: bool) -> Response {
    let meta = Arc::new(meta);
    let n = rxs.len();
    let closed = Arc::new(AtomicBool::new(false));
    let usage_null = include_usage.then_some(Value::Null);
    let opening: Vec<Event> = if meta.chat {
        (0..n)
            .map(|i| {
                let role = json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": Value::Null}]);
                chunk(&meta, role, usage_null.clone(), None)
            })
            .collect()
    } else {
        vec![]
    };
    let rows = rxs.into_iter().enumerate().map(|(i, rx)| {
        futures_util::stream::unfold(rx, move |mut rx| async move { rx.recv().await.map(|e| ((i, e), rx)) })
            .boxed()
    });
    let mut progress = Progress {
        meta,
        include_usage,
        done: (0..n).map(|_| None).collect(),
        offsets: vec![0; n],
        closed: closed.clone(),
    };
    let closed_at_end = closed.clone();
    let body = futures_util::stream::select_all(rows)
        .take_while(move |_| futures_util::future::ready(!closed.load(Ordering::SeqCst)))
        .map(move |(i, ev)| progress.on(i, ev));
    // the engine stopped before every row finished: end the stream anyway
    let tail = futures_util::stream::once(async move {
        if closed_at_end.load(Ordering::SeqCst) {
            vec![]
        } else {
            vec![done_event()]
        }
    });
    let events = futures_util::stream::iter([opening]).chain(body).chain(tail);
    let flat = events.flat_map(|v| futures_util::stream::iter(v.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(flat).into_response()
}
