//! The embedded model's held-out problems and few-shot examples, compiled into dllm.

use std::path::Path;

use super::gsm8k::{parse_jsonl, Problem};
use crate::error::Result;
use crate::model::embedded;

/// The 500 held-out problems the embedded model was never trained on.
pub fn test_set() -> Result<Vec<Problem>> {
    parse_jsonl(Path::new("data/arith/test.jsonl (embedded)"), embedded::TEST_JSONL)
}

/// Worked examples for few-shot prompts (also never trained on).
pub fn fewshot_set() -> Result<Vec<Problem>> {
    parse_jsonl(Path::new("data/arith/fewshot.jsonl (embedded)"), embedded::FEWSHOT_JSONL)
}
