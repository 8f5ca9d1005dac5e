//! The engine side of `dllm serve`: a continuous batch. Before every block, rows whose answer is
//! complete (end token, `max_tokens`, a stop string, the canvas) leave and waiting requests with
//! the batch's forward shape ([`batch_key`]: rules, draws and seeds may differ) join (up to
//! `--max-batch`, and while the batch's canvas fits `--max-context`); then every row decodes its
//! next block on the server's one [`Session`], whose buffers and graphs outlive every batch.
//! Per-row padding masks, positions and progress (spec §6) make each answer token-identical to
//! running it alone. A row whose client went away is freed at the next
//! step; a waiting request whose client left is dropped before it runs.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::mpsc as tmpsc;

use super::text::{answer, covered, delta};
use super::Shared;
use crate::backend::Backend;
use crate::decode::batch::canvas_len;
use crate::decode::{
    DecodeObserver, DecodeOptions, Decoder, Engine, RowStart, RunOptions, Session, TokenLogprobs,
};
use crate::model::Tokenizer;

/// What a request asks of the engine.
pub struct Job {
    pub prompt: Vec<u32>,
    /// Infilling: fixed ids after the middle (empty: none).
    pub suffix: Vec<u32>,
    pub opts: DecodeOptions,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub events: tmpsc::UnboundedSender<JobEvent>,
    /// When the HTTP side queued it (the queue-wait metric).
    pub queued_at: Instant,
    /// Reveal-time logprobs with this many alternatives (None: not asked).
    pub logprobs: Option<usize>,
    /// Streamed: logprobs go with each text delta.
    pub stream: bool,
}

/// One answer token's reveal-time log-probability, as text (the HTTP side's JSON).
#[derive(Debug, Clone)]
pub struct AnswerLogprob {
    pub token: String,
    pub logprob: f64,
    /// The most likely tokens at the forward that committed it, most likely first.
    pub top: Vec<(String, f64)>,
}

#[derive(Debug)]
pub enum JobEvent {
    /// New answer text (streaming), with the logprobs of the answer tokens whose text it
    /// completes (with `logprobs`; the last delta carries every token left).
    Delta(String, Option<Vec<AnswerLogprob>>),
    Done(Finished),
    Failed(String),
}

#[derive(Debug)]
pub struct Finished {
    pub text: String,
    pub finish_reason: &'static str,
    pub completion_tokens: usize,
    pub nfe: usize,
    pub ms: f64,
    /// Requests decoded together with this one (the most at any block).
    pub batch: usize,
    /// The sampling seed the request ran with (given, or drawn for it).
    pub seed: u64,
    /// The canvas it decoded (generated positions).
    pub gen_length: usize,
    /// Per answer token (with `logprobs`), from the forward that committed it.
    pub logprobs: Option<Vec<AnswerLogprob>>,
}

/// A request in the running batch.
struct Active {
    job: Job,
    row: RowStart,
    /// Answer text streamed so far, and the answer tokens whose logprobs went with it.
    sent: String,
    sent_tokens: usize,
    admitted: Instant,
    batch: usize,
    gone: bool,
    /// Per generated position, its reveal-time record (with `logprobs`).
    logprobs: Vec<Option<TokenLogprobs>>,
}

/// Frees, at the next step, the rows whose client went away.
struct Abandon<'a> {
    rows: &'a mut [Active],
    shared: &'a Shared,
}

impl DecodeObserver for Abandon<'_> {
    fn cancelled(&mut self, row: usize) -> bool {
        let a = &mut self.rows[row];
        if !a.gone && a.job.events.is_closed() {
            a.gone = true;
            self.shared.abandoned.fetch_add(1, Ordering::SeqCst);
            self.shared.metrics.finished("abandoned");
        }
        a.gone
    }
}

/// The requests waiting and the batch running.
struct Scheduler<'a, B: Backend> {
    engine: &'a Engine<B>,
    session: Session<'a, B>,
    tok: &'a Tokenizer,
    shared: &'a Shared,
    pending: VecDeque<Job>,
    running: Vec<Active>,
}

/// Run the continuous batch until every sender is gone and the work is drained.
pub fn run<'a, B: Backend>(
    engine: &'a Engine<B>,
    session: Session<'a, B>,
    tok: &'a Tokenizer,
    jobs: mpsc::Receiver<Job>,
    shared: &'a Shared,
) {
    let mut s = Scheduler { engine, session, tok, shared, pending: VecDeque::new(), running: Vec::new() };
    let mut open = true;
    loop {
        if s.running.is_empty() && s.pending.is_empty() {
            match jobs.recv() {
                Ok(j) if open => s.pending.push_back(j),
                _ => return,
            }
        }
        loop {
            match jobs.try_recv() {
                Ok(j) => s.pending.push_back(j),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        s.drop_abandoned();
        if let Some(key) = s.admit() {
            s.decode_block(&key);
        }
    }
}

impl<B: Backend> Scheduler<'_, B> {
    /// Waiting requests whose client left: dropped and counted as abandoned.
    fn drop_abandoned(&mut self) {
        let before = self.pending.len();
        self.pending.retain(|j| !j.events.is_closed());
        let gone = before - self.pending.len();
        self.shared.queued.fetch_sub(gone, Ordering::SeqCst);
        self.shared.abandoned.fetch_add(gone as u64, Ordering::SeqCst);
        for _ in 0..gone {
            self.shared.metrics.finished("abandoned");
        }
    }

    /// Admit waiting requests; returns the batch's key (None: nothing to run). The batch's
    /// options are the first row's. A new batch takes every waiting request of its mode, in
    /// arrival order; a running batch takes newcomers of its mode only until a request of another
    /// mode is first in line (then it drains: no starvation). Admission stops at the first
    /// request that would widen the batch's canvas past `--max-context`.
    fn admit(&mut self) -> Option<DecodeOptions> {
        let first = self.running.first().map(|a| &a.job.opts).or(self.pending.front().map(|j| &j.opts))?;
        let key = batch_key(self.engine, first);
        let fresh = self.running.is_empty();
        let mut i = 0;
        while self.running.len() < self.shared.cfg.max_batch && i < self.pending.len() {
            if batch_key(self.engine, &self.pending[i].opts) != key {
                if !fresh {
                    break;
                }
                i += 1;
                continue;
            }
            let (row, gen) = (row_start(&self.pending[i]), self.pending[i].opts.gen_length);
            let rows = self.running.iter().map(|a| (&a.row, a.job.opts.gen_length));
            if canvas_len(rows.chain([(&row, gen)])) > self.shared.limits.max_context {
                break;
            }
            let job = self.pending.remove(i).expect("in range");
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            self.shared.metrics.queue_seconds.record(job.queued_at.elapsed().as_secs_f64());
            self.running.push(Active {
                job,
                row,
                sent: String::new(),
                sent_tokens: 0,
                admitted: Instant::now(),
                batch: 1,
                gone: false,
                logprobs: vec![],
            });
        }
        let n = self.running.len();
        self.shared.running.store(n, Ordering::SeqCst);
        for a in self.running.iter_mut() {
            a.batch = a.batch.max(n);
        }
        Some(key)
    }

    /// Every running row decodes its next block; then each streams its new text, and rows whose
    /// answer is complete (or failed) leave.
    fn decode_block(&mut self, key: &DecodeOptions) {
        let starts: Vec<RowStart> = self.running.iter().map(|a| a.row.clone()).collect();
        let longest = self.running.iter().map(|a| a.job.opts.gen_length).max().unwrap_or(0);
        let opts = call_options(key, longest);
        // one top-n for the batch: the most any row asks (rows keep what they asked)
        let logprobs = self.running.iter().filter_map(|a| a.job.logprobs).max();
        let run = RunOptions { logprobs, ..RunOptions::default() };
        let mut abandon = Abandon { rows: &mut self.running, shared: self.shared };
        let out = match self.session.decode(&starts, &opts, run, 1, &mut abandon) {
            Ok(out) => out,
            Err(e) => {
                for a in self.running.drain(..) {
                    let _ = a.job.events.send(JobEvent::Failed(e.to_string()));
                    self.shared.metrics.finished("error");
                }
                return;
            }
        };
        let m = &self.shared.metrics;
        m.batch_rows.record(starts.len() as f64);
        m.forwards.increment(out.forwards as u64);
        if let Some(bytes) = self.engine.backend.memory_used() {
            m.device_memory.set(bytes as f64);
            self.shared.device_memory.store(bytes, Ordering::SeqCst);
        }
        let window = opts.window_len(self.engine.config.arch);
        let running = std::mem::take(&mut self.running);
        let mut keep = Vec::with_capacity(running.len());
        for (mut a, o) in running.into_iter().zip(&out.rows) {
            let upto = (a.row.done.len() + window).min(o.tokens.len());
            m.generated_tokens.increment((upto - a.row.done.len()) as u64);
            if a.job.logprobs.is_some() {
                a.logprobs.resize(upto, None);
                for (slot, rec) in a.logprobs.iter_mut().zip(&o.logprobs) {
                    if rec.is_some() {
                        slot.clone_from(rec);
                    }
                }
            }
            a.row.done = o.tokens[..upto].to_vec();
            a.row.forwards += o.nfe as u64;
            if a.gone {
                continue;
            }
            if let Some(e) = &o.error {
                let _ = a.job.events.send(JobEvent::Failed(e.clone()));
                m.finished("error");
                continue;
            }
            if self.stream_block(&mut a) {
                self.shared.completed.fetch_add(1, Ordering::SeqCst);
            } else {
                keep.push(a);
            }
        }
        self.running = keep;
        self.shared.running.store(self.running.len(), Ordering::SeqCst);
    }

    /// Send the row's new answer text, and its result once complete; returns whether it is.
    fn stream_block(&self, a: &mut Active) -> bool {
        let (text, tokens, why) = answer(self.tok, &a.row.done, a.job.max_tokens, &a.job.stop);
        let finished = why.is_some() || a.row.done.len() >= a.job.opts.gen_length;
        let hold = a.job.stop.iter().map(|s| s.chars().count()).max().unwrap_or(1).saturating_sub(1);
        let d = delta(&a.sent, &text, finished, hold).unwrap_or("");
        a.sent.push_str(d);
        let lps = a.job.logprobs.filter(|_| a.job.stream).and_then(|n| {
            let ids = &a.row.done[..tokens.min(a.row.done.len())];
            let upto = if finished { ids.len() } else { covered(self.tok, ids, a.sent.len(), a.sent_tokens) };
            // a stop string's cut re-encodes the answer, which may count fewer tokens than sent
            let upto = upto.clamp(a.sent_tokens, a.logprobs.len().max(a.sent_tokens));
            let recs = &a.logprobs[a.sent_tokens.min(upto)..upto];
            a.sent_tokens = upto;
            Some(self.answer_logprobs(recs, n)).filter(|l| !l.is_empty())
        });
        if !d.is_empty() || lps.is_some() {
            let _ = a.job.events.send(JobEvent::Delta(d.to_string(), lps));
        }
        if finished {
            let m = &self.shared.metrics;
            let nfe = a.row.forwards.max(1) as f64;
            m.finished(why.unwrap_or("length"));
            m.request_seconds.record(a.admitted.elapsed().as_secs_f64());
            m.request_nfe.record(nfe);
            m.tokens_per_forward.record(a.row.done.len() as f64 / nfe);
            m.prompt_tokens.increment(a.job.prompt.len() as u64);
            m.completion_tokens.increment(tokens as u64);
            let _ = a.job.events.send(JobEvent::Done(Finished {
                text,
                finish_reason: why.unwrap_or("length"),
                completion_tokens: tokens,
                nfe: a.row.forwards as usize,
                ms: a.admitted.elapsed().as_secs_f64() * 1e3,
                batch: a.batch,
                seed: a.job.opts.seed,
                gen_length: a.job.opts.gen_length,
                logprobs: a
                    .job
                    .logprobs
                    .map(|n| self.answer_logprobs(&a.logprobs[..tokens.min(a.logprobs.len())], n)),
            }));
        }
        finished
    }
}

impl<B: Backend> Scheduler<'_, B> {
    /// The answer tokens' records as text, with the `n` alternatives the request asked for.
    fn answer_logprobs(&self, recs: &[Option<TokenLogprobs>], n: usize) -> Vec<AnswerLogprob> {
        let text = |id: u32| self.tok.decode(&[id]);
        recs.iter()
            .flatten()
            .map(|r| AnswerLogprob {
                token: text(r.token),
                logprob: r.logprob,
                top: r.top.iter().take(n).map(|&(id, lp)| (text(id), lp)).collect(),
            })
            .collect()
    }
}

/// A job's row as it joins the batch: its own seed, rule, draw and length.
fn row_start(job: &Job) -> RowStart {
    RowStart {
        prompt: job.prompt.clone(),
        suffix: job.suffix.clone(),
        seed: Some(job.opts.seed),
        rule: Some(job.opts.row_rule()),
        gen_length: Some(job.opts.gen_length),
        ..RowStart::default()
    }
}

/// What requests must share to decode in one batch: what shapes the forward (cache, block, steps
/// per block, decoder, early exit). Rows keep their own seed, rule, threshold or factor,
/// temperature, top-k and top-p (issue 19) and their own generation length (rows end where
/// they end) — unless the whole generation is one window (Dream's uncached baseline), where the
/// length stays part of it. Multi-block rows decode one after another with the batch's rule,
/// which then stays part of it too.
fn batch_key<B: Backend>(engine: &Engine<B>, o: &DecodeOptions) -> DecodeOptions {
    let window = o.window_len(engine.config.arch);
    let mut key = o.clone();
    key.seed = 0;
    if o.decoder == Decoder::Blocks {
        key = key.with_row(&DecodeOptions::default().row_rule());
    }
    if window == o.gen_length {
        return key;
    }
    DecodeOptions { gen_length: 0, steps: o.steps / (o.gen_length / window), ..key }
}

/// The options of one call for a batch of `key`'s rows, the longest generating `longest`.
fn call_options(key: &DecodeOptions, longest: usize) -> DecodeOptions {
    if key.gen_length != 0 {
        return key.clone();
    }
    let bl = key.block_length;
    DecodeOptions { gen_length: longest, steps: key.steps * (longest / bl), ..key.clone() }
}
