//! The small trained model that ships inside dllm: it loads through the normal checkpoint path,
//! its config validates, and `dllm eval` on its held-out problems scores what it scored when it
//! was trained (docs/perf.md, README).

mod common;

use dllm::model::{embedded, ModelFiles};

#[test]
fn embedded_checkpoint_loads_and_validates() {
    let dir = embedded::model_dir().unwrap();
    let files = ModelFiles::open(&dir).unwrap();
    let c = &files.config;
    assert_eq!((c.d_model, c.n_layers, c.n_heads, c.mlp_hidden), (128, 4, 4, 384));
    assert_eq!(files.dtype, dllm::model::DType::F32);
    assert_eq!(files.max_new_tokens, Some(64));
    assert_eq!(files.tokenizer.special.mask, 280);
    // a second call reuses the written files
    assert_eq!(embedded::model_dir().unwrap(), dir);
    let size: u64 = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(size < 20 << 20, "the shipped model must stay under 20 MB ({size} bytes)");
    assert_eq!(embedded::test_set().unwrap().len(), 500);
    assert_eq!(embedded::fewshot_set().unwrap().len(), 8);
    // held-out and few-shot problems are disjoint
    let test: std::collections::HashSet<String> =
        embedded::test_set().unwrap().into_iter().map(|p| p.question).collect();
    assert!(embedded::fewshot_set().unwrap().iter().all(|p| !test.contains(&p.question)));
}
