//! Golden cases (the official outputs and the NumPy reference's), run and compared.

use std::path::Path;

use serde_json::Value;

use dllm::backend::cpu::Cpu;
use dllm::backend::Backend;
use dllm::cache::CacheMode;
use dllm::decode::{
    Capacity, DecodeOptions, Decoder, DelayedCache, Engine, MultiBlock, Quiet, RowOutput, RowStart, Rule,
    RunOptions, Session,
};
use dllm::model::Arch;

use super::fixtures::read_json;

/// One golden case (the official file and ours share these fields).
#[derive(Clone)]
pub struct Case {
    pub name: String,
    pub prompt: Vec<u32>,
    pub opts: DecodeOptions,
    pub tokens: Vec<u32>,
    pub nfe: usize,
    pub kinds: String,
    pub commits: Vec<u32>,
    /// Infilling cases: the fixed ids after the middle (empty otherwise).
    pub suffix: Vec<u32>,
}

impl Case {
    /// The case as a batch row.
    pub fn row(&self) -> RowStart {
        RowStart { prompt: self.prompt.clone(), suffix: self.suffix.clone(), ..RowStart::default() }
    }
}

/// Decode `rows` as one batch (greedy cases: no observer, default run options).
pub fn run_rows(engine: &Engine<Cpu>, rows: &[RowStart], opts: &DecodeOptions) -> Vec<RowOutput> {
    engine.generate_rows(rows, opts, RunOptions::default(), usize::MAX, &mut Quiet).unwrap().rows
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Cases of a goldens file; `nfe_field` names the NFE to expect.
pub fn cases(file: &Path, nfe_field: &str) -> Vec<Case> {
    let doc = read_json(file);
    let prompts: std::collections::HashMap<String, Vec<u32>> = doc["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_string(), ids(&p["ids"])))
        .collect();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let rule = if let Some(t) = c["threshold"].as_f64() {
                Rule::Threshold(t)
            } else if let Some(f) = c["factor"].as_f64() {
                Rule::Factor(f)
            } else {
                Rule::Quota
            };
            let cache = match c["cache"].as_str().unwrap() {
                "none" => CacheMode::None,
                "prefix" => CacheMode::Prefix,
                "dual" => CacheMode::Dual,
                other => panic!("unknown cache {other}"),
            };
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                prompt: prompts[c["prompt"].as_str().unwrap()].clone(),
                opts: DecodeOptions {
                    gen_length: c["gen_length"].as_u64().unwrap() as usize,
                    block_length: c["block_length"].as_u64().unwrap() as usize,
                    steps: c["steps"].as_u64().unwrap() as usize,
                    cache,
                    rule,
                    temperature: 0.0,
                    seed: 0,
                    early_exit: false,
                    ..DecodeOptions::default()
                },
                tokens: ids(&c["tokens"]),
                nfe: c[nfe_field].as_u64().unwrap() as usize,
                kinds: c["forward_kinds"].as_str().unwrap().to_string(),
                suffix: c.get("suffix").map(ids).unwrap_or_default(),
                commits: ids(&c["commits_per_forward"])
                    .into_iter()
                    // The official prefix/dual loops spend one forward (committing nothing) on
                    // a block their block-start forward finished; an engine that checks first
                    // (spec §8) does not, so those zero entries are not expected.
                    .filter(|&n| n > 0 || c["nfe"] == c[nfe_field])
                    .collect(),
            }
        })
        .collect()
}

/// Run every case on `engine`; return the names of those that differ, with what differed.
pub fn mismatches(engine: &Engine<Cpu>, cases: &[Case]) -> Vec<String> {
    let mut bad = vec![];
    for c in cases {
        let out = run_rows(engine, &[c.row()], &c.opts);
        let r = &out[0];
        if r.suffix != c.suffix {
            bad.push(format!("{}: the suffix changed: {:?} -> {:?}", c.name, c.suffix, r.suffix));
        } else if r.tokens != c.tokens {
            let first = r.tokens.iter().zip(&c.tokens).position(|(a, b)| a != b);
            bad.push(format!("{}: tokens differ (first at generated position {first:?})", c.name));
        } else if r.nfe != c.nfe {
            bad.push(format!("{}: nfe {} expected {}", c.name, r.nfe, c.nfe));
        } else if r.commits != c.commits {
            bad.push(format!("{}: commits {:?} expected {:?}", c.name, r.commits, c.commits));
        }
    }
    bad
}

/// Decode the three prompts of every mode (cases named `p0/…`, `p1/…`, `p2/…`) as one batch and
/// check each row against its case (= the row alone): tokens, NFE, commits. Returns the number
/// of modes checked.
pub fn assert_batches_equal_alone(engine: &Engine<Cpu>, cases: &[Case], label: &str) -> usize {
    let mut groups = 0;
    for p0 in cases.iter().filter(|c| c.name.starts_with("p0/")) {
        let mode = &p0.name[3..];
        let group: Vec<&Case> = cases.iter().filter(|c| &c.name[3..] == mode).collect();
        assert_eq!(group.len(), 3, "{label} {mode}");
        let lens: Vec<usize> = group.iter().map(|c| c.prompt.len()).collect();
        assert!(lens[0] != lens[1] && lens[1] != lens[2], "{label}: prompt lengths {lens:?}");
        let rows: Vec<RowStart> = group.iter().map(|c| c.row()).collect();
        let out = run_rows(engine, &rows, &p0.opts);
        for (row, c) in out.iter().zip(&group) {
            assert_eq!(row.suffix, c.suffix, "{label} batch row {}", c.name);
            assert_eq!(row.tokens, c.tokens, "{label} batch row {}", c.name);
            assert_eq!(row.nfe, c.nfe, "{label} batch row {}", c.name);
            assert_eq!(row.commits, c.commits, "{label} batch row {}", c.name);
        }
        groups += 1;
    }
    groups
}

/// A continuous batch (how `dllm serve` runs) of every mode's three cases: one row joins at each
/// block boundary and rows are resumed one block at a time on one [`Session`] (`max_blocks = 1`:
/// the buffers of earlier blocks, laid out for other canvases, are reused). Each row must equal
/// its case alone: tokens, NFE, commits; and nothing is allocated after the session is made.
/// Dream's uncached baseline (one window, nothing to join) is skipped. Returns the modes checked.
pub fn assert_joining_equals_alone(engine: &Engine<Cpu>, cases: &[Case], label: &str) -> usize {
    let dream_none = |c: &Case| engine.config.arch == Arch::Dream && c.opts.cache == CacheMode::None;
    let mut modes = 0;
    for p0 in cases.iter().filter(|c| c.name.starts_with("p0/") && !dream_none(c)) {
        let group: Vec<&Case> = cases.iter().filter(|c| c.name[3..] == p0.name[3..]).collect();
        let bl = p0.opts.block_length;
        let mut rows: Vec<(RowStart, usize)> = vec![]; // each row and which case it is
        let (mut nfe, mut commits) = (vec![0usize; group.len()], vec![Vec::<u32>::new(); group.len()]);
        let mut done = vec![None; group.len()];
        let mut next = 0;
        // a row's done blocks count towards the head: the longest whole row bounds it
        let head = group.iter().map(|c| c.prompt.len() + c.opts.gen_length).max().unwrap_or(0);
        let tail = group.iter().map(|c| c.opts.gen_length + c.suffix.len()).max().unwrap_or(0);
        let cap = Capacity { batch: group.len(), canvas: head + tail, window: bl, logprobs: None };
        let mut session = Session::new(engine, cap).unwrap();
        let allocated = engine.backend.allocated();
        while done.iter().any(Option::is_none) {
            if next < group.len() {
                rows.push((group[next].row(), next));
                next += 1;
            }
            let starts: Vec<RowStart> = rows.iter().map(|(r, _)| r.clone()).collect();
            let out = session.decode(&starts, &p0.opts, RunOptions::default(), 1, &mut Quiet).unwrap();
            assert_eq!(engine.backend.allocated(), allocated, "{label} {}: a block allocated", p0.name);
            let mut keep = vec![];
            for ((mut r, i), o) in rows.into_iter().zip(&out.rows) {
                nfe[i] += o.nfe;
                commits[i].extend(&o.commits);
                assert_eq!(o.suffix, group[i].suffix, "{label} {}: suffix", group[i].name);
                r.forwards += o.nfe as u64;
                r.done = o.tokens[..r.done.len() + bl].to_vec();
                if r.done.len() == p0.opts.gen_length {
                    done[i] = Some(r.done.clone());
                } else {
                    keep.push((r, i));
                }
            }
            rows = keep;
        }
        for (i, c) in group.iter().enumerate() {
            assert_eq!(done[i].as_ref(), Some(&c.tokens), "{label} {}: tokens", c.name);
            assert_eq!(nfe[i], c.nfe, "{label} {}: nfe", c.name);
            assert_eq!(commits[i], c.commits, "{label} {}: commits", c.name);
        }
        modes += 1;
    }
    modes
}

/// Every prompt of a goldens document (`prompts`: id, text, chat, ids) tokenizes to its ids.
pub fn assert_prompts_tokenize(doc: &Value, tok: &dllm::model::Tokenizer, label: &str) {
    for p in doc["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let want: Vec<u32> =
            p["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let got =
            if p["chat"].as_bool().unwrap() { tok.encode_chat(text) } else { tok.encode(text) }.unwrap();
        assert_eq!(got, want, "{label} prompt {}", p["id"]);
    }
}

/// One case of d3LLM's own decoders on the official checkpoint (tests/fixtures/official/
/// d3llm_reference.json; d3llm spec §10).
pub struct D3Case {
    pub name: String,
    pub prompt: Vec<u32>,
    pub opts: DecodeOptions,
    pub tokens: Vec<u32>,
    pub nfe: usize,
    pub model_calls: usize,
    pub kinds: String,
    pub commits: Vec<u32>,
    /// Per forward: the fed canvas range `[start, end)`.
    pub fed: Vec<[usize; 2]>,
}

/// The decoding options of a d3LLM reference case (its function and knobs).
fn d3llm_options(c: &Value) -> DecodeOptions {
    let f = |k: &str| c[k].as_f64();
    let u = |k: &str| c[k].as_u64().map(|x| x as usize);
    let early_stop = if c["early_stop"].as_bool().unwrap_or(false) {
        c["eos_token_id"].as_u64().map(|x| x as u32)
    } else {
        None
    };
    let multi = |cache| MultiBlock {
        add: f("block_add_threshold").unwrap(),
        activate: f("decoded_token_threshold").unwrap(),
        cache,
        early_stop,
        max_per_forward: None,
    };
    let decoder = match c["function"].as_str().unwrap() {
        "generate" => Decoder::Blocks,
        "generate_multi_block" => Decoder::MultiBlock(multi(None)),
        "generate_multi_block_kv_cache" => Decoder::MultiBlock(multi(Some(DelayedCache {
            delay: u("cache_delay_iter").unwrap(),
            refresh: u("refresh_interval").unwrap(),
        }))),
        other => panic!("unknown function {other}"),
    };
    DecodeOptions {
        gen_length: u("gen_length").unwrap(),
        block_length: u("block_length").unwrap(),
        steps: u("steps").unwrap(),
        cache: CacheMode::None,
        rule: Rule::Entropy(f("threshold").unwrap_or(999.0)),
        decoder,
        ..DecodeOptions::default()
    }
}

/// Every d3LLM reference case.
pub fn d3llm_cases() -> Vec<D3Case> {
    let doc = read_json(&super::fixtures::fixture("official/d3llm_reference.json"));
    let prompts = doc["prompts"].as_array().unwrap();
    let prompt = |id: &Value| ids(&prompts.iter().find(|p| &p["id"] == id).unwrap()["ids"]);
    let pair = |f: &Value| [f[0].as_u64().unwrap() as usize, f[1].as_u64().unwrap() as usize];
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| D3Case {
            name: c["name"].as_str().unwrap().to_string(),
            prompt: prompt(&c["prompt"]),
            opts: d3llm_options(c),
            tokens: ids(&c["tokens"]),
            nfe: c["nfe"].as_u64().unwrap() as usize,
            model_calls: c["model_calls"].as_u64().unwrap() as usize,
            kinds: c["forward_kinds"].as_str().unwrap().to_string(),
            commits: ids(&c["commits_per_forward"]),
            fed: c["fed"].as_array().unwrap().iter().map(pair).collect(),
        })
        .collect()
}

/// Run every d3LLM case (tracing, to see what each forward fed) on `engine`; the names of those
/// that differ in tokens, NFE, model calls, forward kinds, commits or fed ranges, with how.
pub fn d3llm_mismatches<B: Backend>(engine: &Engine<B>, cases: &[D3Case]) -> Vec<String> {
    let run = RunOptions { trace: true, ..RunOptions::default() };
    let mut bad = vec![];
    for c in cases {
        let out = engine.generate_with(std::slice::from_ref(&c.prompt), &c.opts, run, &mut Quiet).unwrap();
        let r = &out.rows[0];
        let fed: Vec<[usize; 2]> =
            out.trace.iter().map(|t| [t.window.start, t.window.start + t.window.len]).collect();
        let same = r.tokens == c.tokens && r.nfe == c.nfe && out.forwards == c.model_calls;
        if !(same && r.kinds == c.kinds && r.commits == c.commits && fed == c.fed) {
            bad.push(format!(
                "{}: nfe {} (want {}), kinds {} (want {}), commits {:?} (want {:?}), tokens {}, fed {}",
                c.name,
                r.nfe,
                c.nfe,
                r.kinds,
                c.kinds,
                r.commits,
                c.commits,
                if r.tokens == c.tokens { "equal" } else { "differ" },
                if fed == c.fed { "equal" } else { "differs" }
            ));
        }
    }
    bad
}
