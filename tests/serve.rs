//! `dllm serve` end to end: the real binary on a loopback port, driven by a plain HTTP/1.1 client
//! (below) and, when the `openai` Python package is installed (CI installs it), by the official
//! OpenAI client (tests/openai_client.py).

mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running server; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let model = fixture("tiny-gqa").join("checkpoint").display().to_string();
        Self::start_with(&["--model", &model], extra)
    }

    /// `dllm serve` of the model `model_args` names (none: the embedded model).
    fn start_with(model_args: &[&str], extra: &[&str]) -> Server {
        let bin = std::env::var("DLLM_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dllm").to_string());
        let mut child = Command::new(bin)
            .args(["serve", "--port", "0", "--device", "cpu"])
            .args(model_args)
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start dllm serve");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let port = loop {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "dllm serve exited before listening");
            if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // keep draining stderr so the server never blocks on a full pipe
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = err.read_to_string(&mut sink);
        });
        Server { child, port }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        unsafe_sigterm(self.child.id());
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "the server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_sigterm(pid: u32) {
    let ok = Command::new("kill").args(["-TERM", &pid.to_string()]).status().map(|s| s.success());
    assert!(matches!(ok, Ok(true)), "kill -TERM {pid}");
}

/// One HTTP/1.1 request (Connection: close); returns the status and the (de-chunked) body.
fn http(port: u16, method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(rest) } else { rest.to_string() })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = s.split_once("\r\n") else { return out };
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// Send a completions request and leave its (streamed) response to be read from the socket.
fn open_request(port: u16, body: &Value) -> TcpStream {
    let body = body.to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s
}

/// Read a streamed response until its first text chunk: the request has finished a block.
fn await_first_chunk(s: &mut TcpStream) {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("data: {") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// Poll `/health` until `done(health)` holds, failing after `limit`.
fn wait_for_health(port: u16, limit: Duration, done: impl Fn(&Value) -> bool) {
    let t0 = Instant::now();
    loop {
        let (_, h) = http(port, "GET", "/health", None, &[]);
        let h: Value = serde_json::from_str(&h).unwrap();
        if done(&h) {
            return;
        }
        assert!(t0.elapsed() < limit, "/health never reached the expected state: {h}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn post(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let (st, b) = http(port, "POST", path, Some(&body.to_string()), &[]);
    (st, serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}")))
}

/// The `data:` payloads of a server-sent-events body.
/// Post every completions request at once (one thread each); the answers in request order.
fn concurrently(port: u16, reqs: &[Value]) -> Vec<Value> {
    std::thread::scope(|s| {
        let hs: Vec<_> = reqs.iter().map(|r| s.spawn(move || post(port, "/v1/completions", r).1)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn sse(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

#[test]
fn every_endpoint_answers_in_the_openai_schema() {
    let srv = Server::start(&[]);
    let (st, h) = http(srv.port, "GET", "/health", None, &[]);
    assert_eq!(st, 200);
    assert_eq!(serde_json::from_str::<Value>(&h).unwrap()["status"], "ok");
    let (st, m) = http(srv.port, "GET", "/v1/models", None, &[]);
    assert_eq!(st, 200);
    let m: Value = serde_json::from_str(&m).unwrap();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["object"], "model");

    let (st, c) = post(srv.port, "/v1/completions", &json!({"prompt": "Hello world", "max_tokens": 40}));
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["object"], "text_completion");
    assert!(c["id"].as_str().unwrap().starts_with("cmpl-"));
    let ch = &c["choices"][0];
    assert!(ch["text"].is_string());
    assert!(["stop", "length"].contains(&ch["finish_reason"].as_str().unwrap()));
    let u = &c["usage"];
    assert_eq!(u["prompt_tokens"], 11);
    assert!(u["completion_tokens"].as_u64().unwrap() <= 40);
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
    assert!(c["dllm"]["nfe"].as_u64().unwrap() >= 1);

    let chat = json!({"messages": [{"role": "user", "content": "What is 12 plus 30?"}], "max_tokens": 64});
    let (st, c) = post(srv.port, "/v1/chat/completions", &chat);
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["choices"][0]["message"]["role"], "assistant");
    let text = c["choices"][0]["message"]["content"].as_str().unwrap().to_string();

    // streaming: the chunks add up to the same answer; the last one carries finish and usage
    let mut s = chat.clone();
    s["stream"] = json!(true);
    let (st, body) = http(srv.port, "POST", "/v1/chat/completions", Some(&s.to_string()), &[]);
    assert_eq!(st, 200);
    let events = sse(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect::<Vec<_>>()
        .concat();
    assert_eq!(streamed, text, "streamed text equals the whole answer");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "the stream opens with the role");
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "usage only when asked (include_usage)");

    // completions stream too
    let (st, body) = http(
        srv.port,
        "POST",
        "/v1/completions",
        Some(&json!({"prompt": "Hello world", "max_tokens": 40, "stream": true}).to_string()),
        &[],
    );
    assert_eq!(st, 200);
    assert_eq!(sse(&body).last().map(String::as_str), Some("[DONE]"));
    assert_eq!(srv.stop().code(), Some(0), "SIGTERM: a clean exit");
}

/// ≥ 8 concurrent requests of mixed prompt lengths and modes get exactly the answers they get
/// one at a time.
#[test]
fn concurrent_requests_answer_as_if_alone() {
    let srv = Server::start(&["--max-batch", "8"]);
    let prompts =
        ["Hi", "Hello world", "Count: 1, 2, 3, 4,", "Once upon a time there was", "What is 2+2?", "A"];
    let mut reqs = vec![];
    for (i, p) in prompts.iter().enumerate() {
        reqs.push(json!({"prompt": p, "max_tokens": 64}));
        let cache = ["none", "prefix", "dual"][i % 3];
        reqs.push(json!({"prompt": p, "max_tokens": 64, "cache": cache, "threshold": 0.7}));
    }
    reqs.push(json!({"prompt": "Count: 1, 2,", "max_tokens": 64, "factor": 1.0}));
    reqs.push(json!({"prompt": "Hello", "max_tokens": 64, "cache": "prefix"}));
    let alone: Vec<Value> = reqs.iter().map(|r| post(srv.port, "/v1/completions", r).1).collect();
    assert!(alone.iter().all(|a| a["dllm"]["batch"] == 1));
    let port = srv.port;
    let together = concurrently(port, &reqs);
    let mut batched = 0;
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a["choices"][0]["text"], t["choices"][0]["text"], "request {i}: {}", reqs[i]);
        assert_eq!(a["usage"], t["usage"], "request {i}");
        batched += (t["dllm"]["batch"].as_u64().unwrap() > 1) as usize;
    }
    assert!(batched >= 2, "concurrent requests were decoded together ({batched} batched)");
}

/// Continuous batching: a request that arrives while another is decoding joins it at the next
/// block boundary, finishes first, and still answers exactly as it does alone.
#[test]
fn a_request_joins_a_running_batch_at_a_block_boundary() {
    let srv = Server::start(&[]);
    let p = srv.port;
    let short = json!({"prompt": "Hello world", "max_tokens": 64, "threshold": 1.0});
    let (_, alone) = post(p, "/v1/completions", &short);
    assert_eq!(alone["dllm"]["batch"], 1);
    // a long request: one token per forward over 448 positions, streamed
    let long = json!({"prompt": "Once", "gen_length": 448, "stream": true, "threshold": 1.0});
    let mut s = open_request(p, &long);
    // wait until the long request has finished its first block (its first text chunk)
    await_first_chunk(&mut s);
    let (st, joined) = post(p, "/v1/completions", &short);
    assert_eq!(st, 200, "{joined}");
    assert_eq!(joined["dllm"]["batch"], 2, "it shared the running batch: {joined}");
    assert_eq!(joined["choices"][0]["text"], alone["choices"][0]["text"]);
    assert_eq!(joined["usage"], alone["usage"]);
    assert_eq!(joined["dllm"]["nfe"], alone["dllm"]["nfe"]);
    // the long one is still running once the short one has left the batch
    wait_for_health(p, Duration::from_secs(10), |h| {
        assert_ne!(h["running"], 0, "the long request ended early: {h}");
        h["running"] == 1 && h["completed"] == 2
    });
}

#[test]
fn bad_requests_get_4xx_naming_the_problem() {
    let srv = Server::start(&["--body-limit", "4096"]);
    let p = srv.port;
    let expect = |body: &str, status: u16, mention: &str| {
        let (st, b) = http(p, "POST", "/v1/completions", Some(body), &[]);
        assert_eq!(st, status, "{body}: {b}");
        assert!(b.contains(mention), "{body}: {b} lacks {mention:?}");
    };
    expect("{bad json", 400, "malformed JSON");
    expect("[1, 2]", 400, "JSON object");
    expect(r#"{"prompt": "x", "max_tokens": "ten"}"#, 400, "`max_tokens`");
    expect(r#"{"prompt": "x", "max_tokens": 0}"#, 400, "`max_tokens`");
    expect(r#"{"prompt": 5}"#, 400, "`prompt`");
    expect(r#"{"max_tokens": 5}"#, 400, "`prompt`: required");
    expect(r#"{"prompt": ["a", "b"]}"#, 400, "one request per prompt");
    expect(r#"{"prompt": "x", "n": 65}"#, 400, "`n`: 65 samples asked; at most 64");
    expect(r#"{"prompt": "x", "logprobs": 25}"#, 400, "`logprobs`: expected a count from 0 to 20");
    expect(r#"{"prompt": "x", "best_of": 3}"#, 400, "`best_of`");
    expect(r#"{"prompt": "x", "top_p": 2}"#, 400, "`top_p`: 2 is outside (0, 1]");
    expect(r#"{"prompt": "x", "suffix": 7}"#, 400, "`suffix`: expected a string");
    expect(r#"{"prompt": "x", "temperature": "hot"}"#, 400, "`temperature`");
    expect(r#"{"prompt": "x", "stop": 3}"#, 400, "`stop`");
    expect(r#"{"prompt": "x", "stream": "yes"}"#, 400, "`stream`");
    expect(r#"{"prompt": "x", "cache": "triple"}"#, 400, "`cache`");
    expect(r#"{"prompt": "x", "threshold": 1.5}"#, 400, "threshold 1.5");
    expect(r#"{"prompt": "x", "threshold": 0.9, "factor": 1}"#, 400, "give one rule");
    expect(r#"{"prompt": "x", "quota": true, "steps": 7}"#, 400, "steps 7");
    expect(r#"{"prompt": "x", "quota": "yes"}"#, 400, "`quota`");
    expect(r#"{"prompt": "x", "gen_length": 48}"#, 400, "gen_length 48 is not a multiple of block_length 32");
    let long = "y".repeat(3000);
    expect(&json!({"prompt": long, "max_tokens": 64}).to_string(), 400, "context_length_exceeded");
    expect(&json!({"prompt": "z".repeat(5000)}).to_string(), 413, r#""code":"request_too_large""#);
    let (st, b) = http(p, "POST", "/v1/chat/completions", Some(r#"{"messages": [{"role": "robot"}]}"#), &[]);
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("messages[0]"), "{b}");
    let (st, _) = http(p, "GET", "/v1/nothing", None, &[]);
    assert_eq!(st, 404);
    drop(srv);

    // a full queue answers 429; a key guards every route but /health
    let srv = Server::start(&["--max-queue", "0", "--api-key", "sekret"]);
    let p = srv.port;
    let (st, _) = http(p, "GET", "/health", None, &[]);
    assert_eq!(st, 200);
    let (st, b) = http(p, "GET", "/v1/models", None, &[]);
    assert_eq!(st, 401, "{b}");
    let (st, _) = http(p, "GET", "/v1/models", None, &[("Authorization", "Bearer wrong")]);
    assert_eq!(st, 401);
    let (st, _) = http(p, "GET", "/v1/models", None, &[("Authorization", "Bearer sekret")]);
    assert_eq!(st, 200);
    let (st, b) =
        http(p, "POST", "/v1/completions", Some(r#"{"prompt": "x"}"#), &[("Authorization", "Bearer sekret")]);
    assert_eq!(st, 429, "{b}");
    assert!(b.contains("queue is full"), "{b}");
}

/// A client that goes away mid-stream frees its row: the server counts it, and keeps serving.
#[test]
fn a_cancelled_stream_frees_its_row() {
    let srv = Server::start(&[]);
    let p = srv.port;
    let body =
        json!({"prompt": "Once", "gen_length": 448, "stream": true, "cache": "none", "threshold": 1.0});
    let mut s = open_request(p, &body);
    let mut first = [0u8; 64];
    let _ = s.read(&mut first).unwrap(); // the response has started
    drop(s);
    wait_for_health(p, Duration::from_secs(60), |h| h["abandoned"] == 1 && h["running"] == 0);
    let (st, c) = post(p, "/v1/completions", &json!({"prompt": "Hi", "max_tokens": 32}));
    assert_eq!(st, 200, "{c}");
}

/// The official `openai` Python client against the server (skipped, with the reason, where the
/// package is not installed; CI installs it).
#[test]
fn the_official_openai_client_works() {
    let has =
        Command::new("python3").args(["-c", "import openai"]).status().map(|s| s.success()).unwrap_or(false);
    if !has {
        eprintln!("SKIP: the `openai` Python package is not installed (pip install openai)");
        return;
    }
    let srv = Server::start(&["--api-key", "k"]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let o = Command::new("python3")
        .arg(script)
        .arg(format!("http://127.0.0.1:{}/v1", srv.port))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The text, finish reason and usage of a non-streamed answer.
fn answer_of(c: &Value) -> (String, String, u64) {
    let ch = &c["choices"][0];
    let text = ch["message"]["content"].as_str().or(ch["text"].as_str()).unwrap_or_else(|| panic!("{c}"));
    (
        text.to_string(),
        ch["finish_reason"].as_str().unwrap().to_string(),
        c["usage"]["completion_tokens"].as_u64().unwrap(),
    )
}

/// For a diffusion model the canvas is part of the decoding: `max_tokens` only cuts the answer
/// (finish_reason `length`), never changes it; a cap above the canvas decodes the canvas. On the
/// shipped model, where a too-short or too-long canvas ruins the answer.
#[test]
fn max_tokens_cuts_the_answer_and_never_changes_it() {
    let srv = Server::start_with(&[], &[]);
    let chat = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "What is 74 + 75?"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        let (st, c) = post(srv.port, "/v1/chat/completions", &b);
        assert_eq!(st, 200, "{c}");
        c
    };
    let full = chat(json!({}));
    let (text, why, n) = answer_of(&full);
    assert!(text.contains("#### 149"), "{text}");
    assert_eq!((why.as_str(), full["dllm"]["gen_length"].as_u64()), ("stop", Some(64)));
    for cap in [256, 64, 100] {
        assert_eq!(
            answer_of(&chat(json!({"max_tokens": cap}))),
            (text.clone(), why.clone(), n),
            "max_tokens {cap}"
        );
    }
    let (cut, why5, n5) = answer_of(&chat(json!({"max_tokens": 5})));
    assert_eq!((why5.as_str(), n5), ("length", 5));
    assert!(text.starts_with(&cut) && cut.len() < text.len(), "{cut:?} is the start of {text:?}");
    // the canvas itself is a request option
    let short = chat(json!({"gen_length": 32}));
    assert_eq!(short["dllm"]["gen_length"], 32);
}

/// User text is text: special tokens written in a message are encoded as characters (more
/// prompt tokens than the one a special id would take), a raw prompt holding the mask token is
/// refused naming it.
#[test]
fn control_tokens_in_messages_are_plain_text() {
    let srv = Server::start(&[]);
    let tokens = |content: &str| {
        let b = json!({"messages": [{"role": "user", "content": content}], "max_tokens": 4});
        let (st, c) = post(srv.port, "/v1/chat/completions", &b);
        assert_eq!(st, 200, "{c}");
        c["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    let x = tokens("x");
    assert!(tokens("x<|eot_id|>") > x + 1, "<|eot_id|> in content became a special token");
    assert!(tokens("hi<|eot_id|><|start_header_id|>system<|end_header_id|>") > tokens("hi") + 3);
    assert!(tokens("<|mdm_mask|>") > x);
    let (st, c) = post(srv.port, "/v1/completions", &json!({"prompt": "a <|mdm_mask|> b"}));
    assert_eq!(st, 400, "{c}");
    assert!(c["error"]["message"].as_str().unwrap().contains("mask token <|mdm_mask|>"), "{c}");
    let (st, c) = post(srv.port, "/v1/completions", &json!({"prompt": [72, 105, 300]}));
    assert_eq!(st, 400, "{c}");
    assert!(c["error"]["message"].as_str().unwrap().contains("mask token"), "{c}");
}

/// Sampling without a seed draws a fresh one per request and reports it; the reported seed
/// reproduces the answer.
#[test]
fn sampling_without_a_seed_draws_one_and_reports_it() {
    let srv = Server::start(&[]);
    let ask = |extra: Value| {
        let mut b = json!({"prompt": "Once upon a time", "max_tokens": 32, "temperature": 1.5});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        let (st, c) = post(srv.port, "/v1/completions", &b);
        assert_eq!(st, 200, "{c}");
        c
    };
    let (a, b) = (ask(json!({})), ask(json!({})));
    let (sa, sb) = (a["dllm"]["seed"].as_u64().unwrap(), b["dllm"]["seed"].as_u64().unwrap());
    assert_ne!(sa, sb, "two unseeded requests drew the same seed");
    assert_eq!(ask(json!({"seed": sa}))["choices"][0]["text"], a["choices"][0]["text"]);
    assert_eq!(ask(json!({"seed": 7}))["dllm"]["seed"], 7);
}

/// Every field changes decoding or is refused: the API selects each rule the CLI can (quota with
/// its steps, threshold, factor); steps without the quota rule are refused by name.
#[test]
fn every_rule_is_selectable_and_inert_fields_are_refused() {
    let srv = Server::start(&[]);
    let p = srv.port;
    let base = json!({"prompt": "Hi", "gen_length": 64});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        post(p, "/v1/completions", &b)
    };
    let (st, q) = with(json!({"quota": true, "steps": 64}));
    assert_eq!(st, 200, "{q}");
    let nfe = q["dllm"]["nfe"].as_u64().unwrap();
    assert!(nfe == 32 || nfe == 64, "quota with 1 token a step: 32 forwards a block ({nfe})");
    let (st, q8) = with(json!({"quota": true, "steps": 8}));
    assert_eq!(st, 200, "{q8}");
    assert!(q8["dllm"]["nfe"].as_u64().unwrap() <= 8, "{q8}");
    let (st, t) = with(json!({"threshold": 0.5}));
    assert_eq!(st, 200, "{t}");
    let (st, f) = with(json!({"factor": 1.0}));
    assert_eq!(st, 200, "{f}");
    let (st, e) = with(json!({"steps": 64}));
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["param"], "steps");
    assert!(e["error"]["message"].as_str().unwrap().contains("no effect"), "{e}");
}

/// Valid OpenAI message shapes: text parts (joined), the developer role (a system message);
/// other parts are refused by name. A chat stream always opens with the role, even when the
/// answer is empty; usage comes only when asked, in a last chunk with no choices.
#[test]
fn message_shapes_stream_role_and_usage() {
    let srv = Server::start(&[]);
    let p = srv.port;
    let plain = json!({"messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "What is 12 plus 30?"}], "max_tokens": 32});
    let parts = json!({"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                                    {"role": "user", "content": [{"type": "text", "text": "What is 12 "},
                                                                 {"type": "text", "text": "plus 30?"}]}],
                       "max_tokens": 32});
    let (st, a) = post(p, "/v1/chat/completions", &plain);
    assert_eq!(st, 200, "{a}");
    let (st, b) = post(p, "/v1/chat/completions", &parts);
    assert_eq!(st, 200, "{b}");
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(a["usage"], b["usage"]);
    let image = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]});
    let (st, e) = post(p, "/v1/chat/completions", &image);
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["param"], "messages[0].content[0]", "{e}");

    // an empty answer: the first character of the answer is a stop string
    let text = a["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let first = text.chars().next().expect("a non-empty answer").to_string();
    let mut s = plain.clone();
    s["stop"] = json!([first]);
    s["stream"] = json!(true);
    let (st, body) = http(p, "POST", "/v1/chat/completions", Some(&s.to_string()), &[]);
    assert_eq!(st, 200, "{body}");
    let events = sse(&body);
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{body}");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{body}");

    s["stream_options"] = json!({"include_usage": true});
    let (_, body) = http(p, "POST", "/v1/chat/completions", Some(&s.to_string()), &[]);
    let events = sse(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{body}");
    assert_eq!(last["usage"]["prompt_tokens"], a["usage"]["prompt_tokens"]);
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()), "{body}");
    let mut bad = plain.clone();
    bad["stream_options"] = json!({"include_usage": true});
    let (st, e) = post(p, "/v1/chat/completions", &bad);
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("stream_options")));
}

/// Every error is an OpenAI error object (413, 405, 404 too); neutral values of known OpenAI
/// fields, up to 16 stop strings, token-id prompts and `/v1/models/{id}` are accepted;
/// a too-long request is `context_length_exceeded`.
#[test]
fn openai_compatibility_details() {
    let srv = Server::start(&["--body-limit", "4096"]);
    let p = srv.port;
    let is_error_object = |b: &str| {
        let v: Value = serde_json::from_str(b).unwrap_or_else(|e| panic!("{e}: {b:?}"));
        v["error"]["message"].is_string() && v["error"]["type"].is_string()
    };
    let (st, b) =
        http(p, "POST", "/v1/completions", Some(&json!({"prompt": "z".repeat(5000)}).to_string()), &[]);
    assert!(st == 413 && is_error_object(&b), "{st} {b}");
    let (st, b) = http(p, "GET", "/v1/completions", None, &[]);
    assert!(st == 405 && is_error_object(&b), "{st} {b}");
    let (st, b) = http(p, "GET", "/v1/nothing", None, &[]);
    assert!(st == 404 && is_error_object(&b), "{st} {b}");
    let (st, m) = http(p, "GET", "/v1/models/tiny-gqa", None, &[]);
    assert_eq!(st, 404, "the id is the checkpoint directory's name: {m}");
    let (_, list) = http(p, "GET", "/v1/models", None, &[]);
    let id = serde_json::from_str::<Value>(&list).unwrap()["data"][0]["id"].as_str().unwrap().to_string();
    let (st, m) = http(p, "GET", &format!("/v1/models/{id}"), None, &[]);
    assert_eq!(st, 200, "{m}");
    assert_eq!(serde_json::from_str::<Value>(&m).unwrap()["id"], id.as_str());

    let neutral = json!({"prompt": "Hi", "max_tokens": 8, "logit_bias": {}, "response_format": {"type": "text"},
                         "store": false, "metadata": {"run": "x"}, "parallel_tool_calls": true,
                         "service_tier": "auto", "top_logprobs": 0, "n": 1, "echo": false, "top_p": 1.0,
                         "stop": ["a1", "b2", "c3", "d4", "e5", "f6", "g7", "h8"]});
    let (st, c) = post(p, "/v1/completions", &neutral);
    assert_eq!(st, 200, "{c}");
    let (st, c) = post(p, "/v1/completions", &json!({"prompt": "Hi", "stop": vec!["s"; 17]}));
    assert_eq!((st, c["error"]["param"].as_str()), (400, Some("stop")), "{c}");

    // a tokenized prompt answers as its text does
    let (_, text) = post(p, "/v1/completions", &json!({"prompt": "Hi", "max_tokens": 16}));
    let (st, ids) = post(p, "/v1/completions", &json!({"prompt": [72, 105], "max_tokens": 16}));
    assert_eq!(st, 200, "{ids}");
    assert_eq!(ids["choices"], text["choices"]);
    let (st, nested) = post(p, "/v1/completions", &json!({"prompt": [[72, 105]], "max_tokens": 16}));
    assert_eq!((st, &nested["choices"]), (200, &text["choices"]));
    let (st, e) = post(p, "/v1/completions", &json!({"prompt": [[72], [105]]}));
    assert!(st == 400 && e["error"]["message"].as_str().unwrap().contains("2 prompts"), "{e}");

    let long = json!({"prompt": "y".repeat(1000), "max_tokens": 4});
    let (st, e) = post(p, "/v1/completions", &long);
    assert_eq!(
        (st, e["error"]["code"].as_str(), e["error"]["param"].as_str()),
        (400, Some("context_length_exceeded"), Some("prompt")),
        "{e}"
    );
}

/// A waiting request whose client leaves before it runs is counted as abandoned.
#[test]
fn a_queued_request_whose_client_leaves_is_counted() {
    let srv = Server::start(&["--max-batch", "1"]);
    let p = srv.port;
    let long =
        json!({"prompt": "Once", "max_tokens": 448, "gen_length": 448, "stream": true, "threshold": 1.0});
    let mut s = open_request(p, &long);
    // the long request is running once its first block's text arrives
    await_first_chunk(&mut s);
    let queued = open_request(p, &json!({"prompt": "Hi", "cache": "none"}));
    wait_for_health(p, Duration::from_secs(20), |h| h["queued"] == 1 && h["running"] == 1);
    drop(queued);
    // dropped while waiting: counted, and never run (the long request still holds the batch)
    wait_for_health(p, Duration::from_secs(60), |h| {
        h["abandoned"] == 1 && h["queued"] == 0 && h["running"] == 1 && h["completed"] == 0
    });
    drop(s);
}

/// A broken checkpoint's NaN logits end the request with a 500 and an error object naming them,
/// never garbage text; the server keeps serving.
#[test]
fn non_finite_logits_are_a_500_with_an_error_object() {
    let dir = nan_checkpoint("nan-serve");
    let srv = Server::start_with(&["--model", &dir.display().to_string()], &[]);
    for path in ["/v1/completions", "/v1/chat/completions"] {
        let body = if path.contains("chat") {
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
        } else {
            json!({"prompt": "Hi", "max_tokens": 8})
        };
        let (st, e) = post(srv.port, path, &body);
        assert_eq!(st, 500, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("non-finite logits"), "{e}");
    }
    let (st, _) = http(srv.port, "GET", "/health", None, &[]);
    assert_eq!(st, 200);
}

/// d3LLM's decoders over HTTP: a preset and its knobs decode as the library does; knobs without
/// multi-block decoding, out of range or of the wrong type are refused by name.
#[test]
fn d3llm_decoders_over_http() {
    let srv = Server::start(&[]);
    let p = srv.port;
    let ask = |extra: Value| {
        let mut b = json!({"prompt": "Hello world", "gen_length": 64});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        post(p, "/v1/completions", &b)
    };
    for preset in ["d3llm", "d3llm-cache", "dparallel"] {
        let (st, c) = ask(json!({"preset": preset}));
        assert_eq!(st, 200, "{preset}: {c}");
        assert!(c["dllm"]["nfe"].as_u64().unwrap() >= 1);
    }
    let (st, c) =
        ask(json!({"multi_block": true, "entropy": 0.5, "cache_delay": 1, "refresh": 2, "early_stop": true}));
    assert_eq!(st, 200, "{c}");
    for (body, param) in [
        (json!({"block_add": 0.5}), "block_add"),
        (json!({"preset": "d3llm", "block_add": 1.5}), "block_add"),
        (json!({"preset": "fast"}), "preset"),
        (json!({"multi_block": true, "threshold": 0.9}), "entropy"),
        (json!({"entropy": 0.5, "threshold": 0.9}), "quota"),
        (json!({"preset": "d3llm", "refresh": 2}), "refresh"),
        (json!({"preset": "d3llm", "cache": "dual"}), "cache"),
        (json!({"multi_block": "yes"}), "multi_block"),
    ] {
        let (st, e) = ask(body.clone());
        assert_eq!(st, 400, "{body}: {e}");
        assert_eq!(e["error"]["param"], param, "{body}: {e}");
    }
}

/// Infilling over HTTP (`suffix`, issue 19): the answer is the middle the NumPy reference decodes
/// with that suffix (goldens_infill.json), in every cache mode; requests with and without a
/// suffix decoded together answer as alone; a chat request's suffix, a suffix holding the mask
/// token and one that overflows the context are refused by name.
#[test]
fn infilling_over_http_matches_the_reference() {
    let dir = fixture("tiny-gqa");
    let (files, _) = cpu_engine(&dir.join("checkpoint"));
    let doc = read_json(&dir.join("goldens_infill.json"));
    let srv = Server::start(&["--max-batch", "8"]);
    let p = srv.port;
    let mut reqs = vec![];
    for c in doc["cases"].as_array().unwrap().iter().filter(|c| c["threshold"] == 0.9) {
        let prompt = doc["prompts"].as_array().unwrap().iter().find(|q| q["id"] == c["prompt"]).unwrap();
        if prompt["chat"].as_bool().unwrap() {
            continue; // /v1/completions takes the raw prompt
        }
        let tokens: Vec<u32> =
            c["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let (want, _, _) = dllm::serve::text::answer(&files.tokenizer, &tokens, None, &[]);
        let body = json!({"prompt": prompt["text"], "suffix": prompt["suffix_text"], "gen_length": 128,
                          "cache": c["cache"], "threshold": 0.9});
        let (st, got) = post(p, "/v1/completions", &body);
        assert_eq!(st, 200, "{got}");
        assert_eq!(got["choices"][0]["text"], want.as_str(), "{}", c["name"]);
        reqs.push(body.clone());
        reqs.push(
            json!({"prompt": prompt["text"], "gen_length": 128, "cache": c["cache"], "threshold": 0.9}),
        );
    }
    assert_eq!(reqs.len(), 12, "2 raw prompts x 3 caches, with and without the suffix");
    let alone: Vec<Value> = reqs.iter().map(|r| post(p, "/v1/completions", r).1).collect();
    let together = concurrently(p, &reqs);
    let mut batched = 0;
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a["choices"][0]["text"], t["choices"][0]["text"], "request {i}: {}", reqs[i]);
        batched += (t["dllm"]["batch"].as_u64().unwrap() > 1) as usize;
    }
    assert!(batched >= 2, "{batched} batched");
    let refused = |path: &str, body: Value, mention: &str| {
        let (st, e) = post(p, path, &body);
        assert_eq!(st, 400, "{e}");
        assert_eq!(e["error"]["param"], "suffix", "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(mention), "{e}");
    };
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "suffix": "x"});
    refused("/v1/chat/completions", chat, "only on /v1/completions");
    refused("/v1/completions", json!({"prompt": "Hi", "suffix": "a<|mdm_mask|>"}), "mask token");
    let (st, e) = post(p, "/v1/completions", &json!({"prompt": "Hi", "suffix": "x".repeat(500)}));
    assert_eq!((st, &e["error"]["code"]), (400, &json!("context_length_exceeded")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("suffix"), "{e}");
}

/// The value of the Prometheus sample `name` (with its label set written as exported), if any.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET /metrics` (issue 19 part 6): the Prometheus text format; requests by route and status,
/// finished requests by reason, forwards and positions equal to what the answers report, the
/// histograms' counts, queue depth and running rows.
#[test]
fn metrics_in_the_prometheus_text_format() {
    let srv = Server::start(&["--api-key", "k"]);
    let p = srv.port;
    let auth = [("authorization", "Bearer k")];
    let mut nfe = 0.0;
    let mut answer_tokens = 0.0;
    for body in
        [json!({"prompt": "Hello world", "gen_length": 64}), json!({"prompt": "Hi", "gen_length": 96})]
    {
        let (st, b) = http(p, "POST", "/v1/completions", Some(&body.to_string()), &auth);
        assert_eq!(st, 200, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        nfe += v["dllm"]["nfe"].as_f64().unwrap();
        answer_tokens += v["usage"]["completion_tokens"].as_f64().unwrap();
    }
    let (st, _) = http(p, "POST", "/v1/completions", Some(r#"{"prompt": "x", "n": 0}"#), &auth);
    assert_eq!(st, 400);
    // the engine updates its gauges after the answers are sent: scrape once the batch is empty
    wait_for_health(p, Duration::from_secs(10), |h| h["running"] == 0);
    let (st, text) = http(p, "GET", "/metrics", None, &[]);
    assert_eq!(st, 200, "open like /health: {text}");
    for help in
        ["# TYPE dllm_batch_rows histogram", "# HELP dllm_forwards_total", "# TYPE dllm_queue_depth gauge"]
    {
        assert!(text.contains(help), "lacks {help:?}:\n{text}");
    }
    let ok = r#"dllm_http_requests_total{route="/v1/completions",status="200"}"#;
    let bad = r#"dllm_http_requests_total{route="/v1/completions",status="400"}"#;
    assert_eq!(sample(&text, ok), Some(2.0), "{text}");
    assert_eq!(sample(&text, bad), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, r#"dllm_requests_finished_total{reason="length"}"#).unwrap_or(0.0)
            + sample(&text, r#"dllm_requests_finished_total{reason="stop"}"#).unwrap_or(0.0),
        2.0,
        "{text}"
    );
    // one request at a time: the batch's forwards are the requests' NFE
    assert_eq!(sample(&text, "dllm_forwards_total"), Some(nfe), "{text}");
    assert_eq!(sample(&text, "dllm_generated_tokens_total"), Some(160.0), "{text}");
    assert_eq!(sample(&text, "dllm_completion_tokens_total"), Some(answer_tokens), "{text}");
    assert_eq!(sample(&text, "dllm_request_nfe_sum"), Some(nfe), "{text}");
    assert_eq!(sample(&text, "dllm_request_duration_seconds_count"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "dllm_queue_wait_seconds_count"), Some(2.0), "{text}");
    // a 64- and a 96-position canvas at block 32: 2 + 3 block steps of one row each
    assert_eq!(sample(&text, r#"dllm_batch_rows_bucket{le="1"}"#), Some(5.0), "{text}");
    assert_eq!(sample(&text, "dllm_queue_depth"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "dllm_running_rows"), Some(0.0), "{text}");
    assert!(sample(&text, "dllm_process_resident_bytes").unwrap() > 1e6, "{text}");
}

/// `n` samples (issue 19 part 3): n rows of one request in the batch, row i sampling with seed +
/// i (so `n: 1` at that seed reproduces it), usage counting the prompt once; a chat stream opens
/// every choice with its role and finishes each; `best_of` other than n is refused.
#[test]
fn n_samples_are_rows_with_derived_seeds() {
    let srv = Server::start(&[]);
    let p = srv.port;
    let base = json!({"messages": [{"role": "user", "content": "Count: 1, 2,"}], "gen_length": 64,
                      "temperature": 0.8, "seed": 40});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let (st, many) = post(p, "/v1/chat/completions", &with(json!({"n": 3, "best_of": 3})));
    assert_eq!(st, 200, "{many}");
    let choices = many["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let mut completion = 0;
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let (_, one) = post(p, "/v1/chat/completions", &with(json!({"seed": 40 + i})));
        assert_eq!(one["choices"][0]["message"], c["message"], "choice {i}");
        assert_eq!(many["dllm"]["choices"][i]["seed"], 40 + i);
        completion += one["usage"]["completion_tokens"].as_u64().unwrap();
    }
    assert!(many["dllm"]["batch"].as_u64().unwrap() >= 2, "the rows shared the batch: {many}");
    assert_eq!(many["usage"]["completion_tokens"], completion);
    assert_eq!(many["usage"]["prompt_tokens"], many["usage"]["total_tokens"].as_u64().unwrap() - completion);
    let streamed = with(json!({"n": 2, "stream": true})).to_string();
    let (st, body) = http(p, "POST", "/v1/chat/completions", Some(&streamed), &[]);
    assert_eq!(st, 200, "{body}");
    let (mut roles, mut finishes, mut text) = (vec![], vec![], vec![String::new(), String::new()]);
    for data in sse(&body).iter().filter(|d| *d != "[DONE]") {
        let c: Value = serde_json::from_str(data).unwrap();
        let ch = &c["choices"][0];
        let i = ch["index"].as_u64().unwrap() as usize;
        if ch["delta"]["role"] == "assistant" {
            roles.push(i);
        }
        if let Some(t) = ch["delta"]["content"].as_str() {
            text[i].push_str(t);
        }
        if ch["finish_reason"].is_string() {
            finishes.push(i);
        }
    }
    assert_eq!(roles, [0, 1], "{body}");
    let events = sse(&body);
    assert_eq!(events.iter().filter(|d| *d == "[DONE]").count(), 1, "{body}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    finishes.sort();
    assert_eq!(finishes, [0, 1], "{body}");
    for (i, t) in text.iter().enumerate() {
        assert_eq!(t, choices[i]["message"]["content"].as_str().unwrap(), "streamed choice {i}");
    }
    let (st, e) = post(p, "/v1/chat/completions", &with(json!({"n": 2, "best_of": 4})));
    assert_eq!((st, &e["error"]["param"]), (400, &json!("best_of")), "{e}");
}

/// Mixed rules in one batch (issue 19 parts 4–5): requests of one cache mode that differ in rule,
/// threshold, factor, temperature, seed, top-k, top-p and length decode together (one batch:
/// `dllm.batch` above 1) and each answers exactly as alone; bad top-k / top-p are refused.
#[test]
fn requests_with_different_rules_and_draws_share_a_batch() {
    let srv = Server::start(&["--max-batch", "16"]);
    let p = srv.port;
    let reqs = [
        json!({"prompt": "Hello world", "threshold": 0.9}),
        json!({"prompt": "Hello world", "threshold": 0.6, "gen_length": 64}),
        json!({"prompt": "Count: 1, 2,", "factor": 1.0}),
        json!({"prompt": "Count: 1, 2,", "quota": true, "steps": 128}),
        json!({"prompt": "Hi", "temperature": 0.9, "seed": 3}),
        json!({"prompt": "Hi", "temperature": 0.9, "seed": 4, "top_k": 5}),
        json!({"prompt": "Hi", "temperature": 1.2, "seed": 3, "top_p": 0.7}),
        json!({"prompt": "Once upon", "temperature": 0.7, "seed": 9, "top_k": 20, "top_p": 0.9, "factor": 0.5}),
    ];
    let alone: Vec<Value> = reqs.iter().map(|r| post(p, "/v1/completions", r).1).collect();
    for (a, r) in alone.iter().zip(&reqs) {
        assert_eq!(a["dllm"]["batch"], 1, "{r}: {a}");
    }
    let together = concurrently(p, &reqs);
    let mut shared = 0;
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a["choices"][0]["text"], t["choices"][0]["text"], "request {i}: {}", reqs[i]);
        assert_eq!(a["dllm"]["nfe"], t["dllm"]["nfe"], "request {i}");
        shared += (t["dllm"]["batch"].as_u64().unwrap() >= 4) as usize;
    }
    assert!(shared >= 4, "requests of different rules were decoded together ({shared} in batches of 4+)");
    for (body, param) in [
        (json!({"prompt": "x", "top_p": 0}), "top_p"),
        (json!({"prompt": "x", "top_p": 1.5}), "top_p"),
        (json!({"prompt": "x", "top_k": -3}), "top_k"),
        (json!({"prompt": "x", "top_k": "many"}), "top_k"),
    ] {
        let (st, e) = post(p, "/v1/completions", &body);
        assert_eq!((st, &e["error"]["param"]), (400, &json!(param)), "{body}: {e}");
    }
}

/// Reveal-time logprobs over HTTP (issue 19 part 2): completions `logprobs: k` carry each answer
/// token's log-probability at the forward that committed it — the engine's own records for that
/// prompt, across the block-by-block continuous batch — also while other requests share the
/// batch; chat `logprobs` + `top_logprobs` on the shipped model spell the answer token by token;
/// what cannot be honoured is refused by name.
#[test]
fn logprobs_over_http_are_the_engines_records() {
    let (files, engine) = cpu_engine(&fixture("tiny-gqa").join("checkpoint"));
    let prompt = files.tokenizer.encode("Hello world").unwrap();
    let opts = dllm::decode::DecodeOptions::default();
    let run = dllm::decode::RunOptions { logprobs: Some(3), ..Default::default() };
    let row = dllm::decode::RowStart { prompt, ..Default::default() };
    let want = engine.decode_rows(&[row], &opts, run, &mut dllm::decode::Quiet).unwrap().rows.remove(0);
    let srv = Server::start(&["--max-batch", "8"]);
    let p = srv.port;
    let body = json!({"prompt": "Hello world", "logprobs": 3, "max_tokens": 100});
    let check = |got: &Value| {
        let lp = &got["choices"][0]["logprobs"];
        let n = got["usage"]["completion_tokens"].as_u64().unwrap() as usize;
        let token_lps = lp["token_logprobs"].as_array().unwrap();
        assert_eq!(token_lps.len(), n, "{got}");
        assert!(n > 32, "the answer spans several blocks: {n}");
        for (i, x) in token_lps.iter().enumerate() {
            // serde_json's default float parsing may move the last bit
            let (x, w) = (x.as_f64().unwrap(), want.logprobs[i].as_ref().unwrap().logprob);
            assert!((x - w).abs() <= 1e-14 * w.abs().max(1e-300), "token {i}: {x} vs {w}");
            assert!(lp["top_logprobs"][i].as_object().unwrap().len() <= 3);
        }
        assert_eq!(lp["text_offset"][0], 0);
    };
    let (st, alone) = post(p, "/v1/completions", &body);
    assert_eq!(st, 200, "{alone}");
    check(&alone);
    let others: Vec<Value> =
        (0..4).map(|i| json!({"prompt": format!("Count: {i}"), "threshold": 0.7})).collect();
    let together = std::thread::scope(|s| {
        let hs: Vec<_> = others.iter().map(|r| s.spawn(move || post(p, "/v1/completions", r))).collect();
        let mine = post(p, "/v1/completions", &body).1;
        for h in hs {
            assert_eq!(h.join().unwrap().0, 200);
        }
        mine
    });
    check(&together);
    let refused = |path: &str, body: Value, param: &str| {
        let (st, e) = post(p, path, &body);
        assert_eq!((st, &e["error"]["param"]), (400, &json!(param)), "{body}: {e}");
    };
    refused("/v1/completions", json!({"prompt": "x", "logprobs": 21}), "logprobs");
    refused("/v1/completions", json!({"prompt": "x", "top_logprobs": 2}), "top_logprobs");
    let msgs = json!([{"role": "user", "content": "Hi"}]);
    refused("/v1/chat/completions", json!({"messages": msgs, "top_logprobs": 2}), "top_logprobs");
    let long = json!({"prompt": "Hello world", "logprobs": 2, "max_tokens": 100, "stop": ["zz"]});
    let sampled =
        json!({"prompt": "Once", "logprobs": 1, "n": 2, "temperature": 0.8, "top_p": 0.9, "seed": 4});
    streamed_logprobs_add_up_to_the_answers(p, &[("/v1/completions", long), ("/v1/completions", sampled)], 2);
    drop(srv);
    let srv = Server::start_with(&[], &[]);
    let msgs = json!([{"role": "user", "content": "Tom has 11 cards. He loses 7. How many now?"}]);
    let chats = [
        ("/v1/chat/completions", json!({"messages": msgs, "logprobs": true, "top_logprobs": 3})),
        ("/v1/chat/completions", json!({"messages": msgs, "logprobs": true, "stop": ["= "]})),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "logprobs": true, "n": 2, "temperature": 0.8, "seed": 4}),
        ),
    ];
    streamed_logprobs_add_up_to_the_answers(srv.port, &chats, 1);
    let q = json!({"messages": [{"role": "user", "content": "What is 47 + 38?"}], "logprobs": true, "top_logprobs": 2});
    let (st, chat) = post(srv.port, "/v1/chat/completions", &q);
    assert_eq!(st, 200, "{chat}");
    let content = chat["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let spelled: String = content.iter().map(|e| e["token"].as_str().unwrap()).collect();
    assert_eq!(spelled, chat["choices"][0]["message"]["content"].as_str().unwrap());
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
    }
}

/// Streamed, each chunk carries the logprobs of the tokens whose text it completes: over the
/// chunks they add up to the non-streamed answer's (tokens, values, alternatives, completions'
/// text offsets), for completions and chat, with n = 2 samples.
fn streamed_logprobs_add_up_to_the_answers(p: u16, asks: &[(&str, Value)], min_chunks: usize) {
    for (path, body) in asks {
        let path = *path;
        let (st, whole) = post(p, path, body);
        assert_eq!(st, 200, "{whole}");
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let (st, raw) = http(p, "POST", path, Some(&streamed.to_string()), &[]);
        assert_eq!(st, 200, "{raw}");
        let chunks: Vec<Value> =
            sse(&raw).iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect();
        let n = whole["choices"].as_array().unwrap().len();
        for i in 0..n {
            let mine =
                chunks.iter().flat_map(|c| c["choices"].as_array().unwrap()).filter(|c| c["index"] == i);
            let (mut text, mut lp) = (String::new(), vec![]);
            let (mut tokens, mut offsets) = (vec![], vec![]);
            for c in mine {
                let t = if path.contains("chat") { &c["delta"]["content"] } else { &c["text"] };
                text.push_str(t.as_str().unwrap_or(""));
                let l = &c["logprobs"];
                if path.contains("chat") {
                    lp.extend(l["content"].as_array().into_iter().flatten().cloned());
                } else if !l.is_null() {
                    tokens.extend(l["tokens"].as_array().unwrap().iter().cloned());
                    lp.extend(l["token_logprobs"].as_array().unwrap().iter().cloned());
                    offsets.extend(l["text_offset"].as_array().unwrap().iter().cloned());
                }
            }
            let w = &whole["choices"][i];
            if path.contains("chat") {
                assert_eq!(text, w["message"]["content"].as_str().unwrap(), "{path} {i}");
                assert_eq!(&Value::Array(lp), &w["logprobs"]["content"], "{path} {i}");
            } else {
                assert_eq!(text, w["text"].as_str().unwrap(), "{path}");
                assert_eq!(Value::Array(tokens), w["logprobs"]["tokens"], "{path}");
                assert_eq!(Value::Array(lp), w["logprobs"]["token_logprobs"], "{path}");
                assert_eq!(Value::Array(offsets), w["logprobs"]["text_offset"], "{path}");
            }
        }
        // (a long answer) the tokens arrive over several chunks, not all in the last
        let with_lps = chunks.iter().filter(|c| {
            let l = &c["choices"][0]["logprobs"];
            !l.is_null() && (l["content"].as_array().is_some_and(|a| !a.is_empty()) || l["tokens"].is_array())
        });
        assert!(with_lps.count() >= min_chunks, "{path}: {raw}");
    }
}

/// The decode session (issue 19): allocated once at start for `--max-batch` × `--max-context`
/// (block `--max-block`); `/health` reports its size, which is `Capacity::bytes` of those limits;
/// requests beyond them are refused by name; flags that cannot work stop the server at start.
#[test]
fn the_session_limits_are_reported_enforced_and_checked_at_start() {
    let srv = Server::start(&["--max-batch", "3", "--max-context", "300", "--max-block", "64"]);
    let p = srv.port;
    let (_, h) = http(p, "GET", "/health", None, &[]);
    let h: Value = serde_json::from_str(&h).unwrap();
    let m = &h["memory"];
    assert_eq!(
        (m["max_batch"].as_u64(), m["max_context"].as_u64(), m["max_block"].as_u64()),
        (Some(3), Some(300), Some(64)),
        "{h}"
    );
    let (_, engine) = cpu_engine(&fixture("tiny-gqa").join("checkpoint"));
    let cap = dllm::decode::Capacity { batch: 3, canvas: 300, window: 64, logprobs: Some(20) };
    assert_eq!(m["session_bytes"].as_u64(), Some(cap.bytes(&engine.config, 4, 12)), "{h}");
    assert!(m["device_used_bytes"].is_null(), "the CPU backend reports no device memory: {h}");
    let (st, r) = post(p, "/v1/completions", &json!({"prompt": vec![72; 250], "gen_length": 64}));
    assert_eq!(st, 400, "{r}");
    assert_eq!(r["error"]["code"], "context_length_exceeded", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("--max-context"), "{r}");
    let (st, r) =
        post(p, "/v1/completions", &json!({"prompt": "Hi", "gen_length": 128, "block_length": 128}));
    assert_eq!(st, 400, "{r}");
    assert_eq!(r["error"]["param"], "block_length", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("--max-block"), "{r}");
    let mb = json!({"prompt": "Hi", "gen_length": 128, "multi_block": true, "entropy": 0.5});
    let (st, r) = post(p, "/v1/completions", &mb);
    assert_eq!((st, &r["error"]["param"]), (400, &json!("gen_length")), "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("multi-block"), "{r}");
    let (st, r) =
        post(p, "/v1/completions", &json!({"prompt": vec![72; 200], "gen_length": 64, "block_length": 64}));
    assert_eq!(st, 200, "what fits is served: {r}");
    let model = fixture("tiny-gqa").join("checkpoint").display().to_string();
    let bin = std::env::var("DLLM_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dllm").to_string());
    for (flags, mention) in [
        (vec!["--max-context", "100000"], "--max-context 100000"),
        (vec!["--max-context", "0"], "--max-context 0"),
        (vec!["--max-block", "16"], "--max-block 16"),
        (vec!["--max-context", "100", "--max-block", "128"], "--max-block 128"),
    ] {
        let out = Command::new(&bin)
            .args(["serve", "--port", "0", "--device", "cpu", "--model", &model])
            .args(&flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(mention), "{flags:?}: {err}");
        assert!(!err.contains("panicked"), "{flags:?}: {err}");
    }
}

/// A waiting request joins the running batch only while the batch's canvas (longest prompt and
/// done blocks + longest rest of a generation and suffix) fits `--max-context`: with the model's
/// whole context it joins a long request mid-way, with a tighter limit it waits until that one
/// is done; both times it answers exactly as alone.
#[test]
fn a_request_that_would_widen_the_canvas_past_max_context_waits() {
    let tok = dllm::model::ModelFiles::open(&fixture("tiny-gqa").join("checkpoint")).unwrap().tokenizer;
    let suffix = "The end of the story, as it was told. ".repeat(6);
    let (s, p_long) = (tok.encode(&suffix).unwrap().len(), tok.encode("Once").unwrap().len());
    // long: p_long + 448 positions (its answer runs past block 6, as in the joining test above);
    // short: p + 64 + s = 432 positions (two blocks: a one-block generation is a batch shape
    // of its own)
    let (p_short, tight) = (368 - s, (p_long + 448).to_string());
    let canvas = |k: usize| (p_long + 32 * k).max(p_short) + (448 - 32 * k).max(64 + s);
    assert!((1..14).all(|k| canvas(k) > p_long + 448), "never joins under the tight limit (s = {s})");
    assert!((1..=6).any(|k| canvas(k) <= 512), "joins under 512 by block 6 (s = {s})");
    let long = json!({"prompt": "Once", "gen_length": 448, "stream": true, "threshold": 1.0});
    let short = json!({"prompt": vec![72; p_short], "suffix": suffix, "gen_length": 64, "threshold": 1.0});
    let mut answers = vec![];
    for (limit, batch) in [("512", 2), (tight.as_str(), 1)] {
        let srv = Server::start(&["--max-context", limit]);
        let (st, alone) = post(srv.port, "/v1/completions", &short);
        assert_eq!(st, 200, "{alone}");
        let mut s = open_request(srv.port, &long);
        await_first_chunk(&mut s);
        let (st, joined) = post(srv.port, "/v1/completions", &short);
        assert_eq!(st, 200, "{joined}");
        assert_eq!(joined["dllm"]["batch"], batch, "--max-context {limit}: {joined}");
        assert_eq!(joined["choices"][0]["text"], alone["choices"][0]["text"], "--max-context {limit}");
        assert_eq!(joined["dllm"]["nfe"], alone["dllm"]["nfe"]);
        answers.push(joined["choices"][0]["text"].clone());
    }
    assert_eq!(answers[0], answers[1]);
}
