//! The 72 outputs of the official Fast-dLLM code on its tiny f32 checkpoint
//! (tests/fixtures/official, copied from ../shared/reference/llada-tiny), reproduced token for
//! token, with NFE equal to `nfe_checkfirst` (spec §8: no forward once a block is done).

mod common;
use common::*;

#[test]
fn all_72_official_cases_token_for_token() {
    let dir = fixture("official");
    let cases = cases(&dir.join("official_tokens.json"), "nfe_checkfirst");
    assert_eq!(cases.len(), 72);
    let (_, engine) = cpu_engine(&dir.join("checkpoint"));
    let bad = mismatches(&engine, &cases);
    assert!(bad.is_empty(), "{} of 72 official cases differ:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn forward_kinds_match_the_official_loop_where_no_forward_was_wasted() {
    // The official prefix/dual loops forward once more after a block finished by its block-start
    // forward (nfe > nfe_checkfirst); elsewhere the sequence of forward kinds must be identical.
    let dir = fixture("official");
    let doc = read_json(&dir.join("official_tokens.json"));
    let all = cases(&dir.join("official_tokens.json"), "nfe_checkfirst");
    let (_, engine) = cpu_engine(&dir.join("checkpoint"));
    let mut compared = 0;
    for (c, raw) in all.iter().zip(doc["cases"].as_array().unwrap()) {
        if raw["nfe"] != raw["nfe_checkfirst"] {
            continue;
        }
        let out = engine.generate(std::slice::from_ref(&c.prompt), &c.opts).unwrap();
        assert_eq!(out.rows[0].kinds, c.kinds, "{}", c.name);
        assert_eq!(out.rows[0].commits, c.commits, "{}", c.name);
        compared += 1;
    }
    assert!(compared >= 60, "only {compared} cases compared");
}

#[test]
fn official_prompts_tokenize_as_the_reference_did() {
    let dir = fixture("official");
    let doc = read_json(&dir.join("official_tokens.json"));
    let (files, _) = cpu_engine(&dir.join("checkpoint"));
    let tok = &files.tokenizer;
    assert_prompts_tokenize(&doc, tok, "official");
    for p in doc["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        if p["chat"].as_bool().unwrap() {
            assert_eq!(tok.chat_prompt(text), p["templated"].as_str().unwrap());
        }
    }
    // special ids come from the checkpoint's files, not from LLaDA-8B's numbers
    assert_eq!(tok.special.mask, 294);
    assert_eq!(tok.special.eos, 257);
    assert_eq!(tok.special.bos, Some(256));
    assert_eq!(tok.special.stop, vec![257, 298]);
}
