//! Fixture paths and files, engines on them, and damaged or changed copies of them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use dllm::backend::cpu::Cpu;
use dllm::decode::Engine;
use dllm::model::ModelFiles;

use super::tensors::{f32s, from_f32s, read_tensors, write_tensors};

/// A file under tests/fixtures. Test binaries staged onto another machine (the GPU check) run
/// from the repository root there, where the build machine's path does not exist.
pub fn fixture(rel: &str) -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let root = if built.is_dir() { built } else { PathBuf::from("tests/fixtures") };
    root.join(rel)
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn cpu_engine(dir: &Path) -> (ModelFiles, Engine<Cpu>) {
    let files = ModelFiles::open(dir).unwrap_or_else(|e| panic!("{e}"));
    let engine = Engine::new(Cpu::new(files.dtype, None), &files).unwrap();
    (files, engine)
}

/// A fresh copy of a fixture checkpoint in a temporary directory, for tests that damage or
/// change it.
pub fn temp_copy(src: &Path, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("dllm-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    dst
}

/// A copy of the tiny-mha checkpoint whose final norm is NaN: a broken model whose logits are
/// all NaN.
pub fn nan_checkpoint(tag: &str) -> PathBuf {
    let dir = temp_copy(&fixture("tiny-mha").join("checkpoint"), tag);
    let f = dir.join("model.safetensors");
    let mut t = read_tensors(&f);
    let name = "model.transformer.ln_f.weight".to_string();
    let n = f32s(&t[&name]).len();
    t.insert(name, from_f32s(&[n], &vec![f32::NAN; n]));
    write_tensors(&f, &t);
    dir
}
