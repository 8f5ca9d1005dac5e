//! `dllm bench`: the flags become `bench`'s arguments (scaled down on a CPU), then it runs.

use dllm::backend::Backend;
use dllm::bench;
use dllm::dtype::DType;
use dllm::{Error, Result};

use super::args::BenchArgs;
use super::device::{dispatch, OnBackend};

pub(crate) fn run(a: BenchArgs) -> Result<()> {
    let dtype: DType = a.dtype.into();
    // fail on a bad preset or scale before touching any device
    bench::preset(&a.synthetic, a.scale.unwrap_or(16))?;
    dispatch(&a.dev, dtype, Job(&a))
}

/// One `bench` run, ready for a backend.
struct Job<'a>(&'a BenchArgs);

impl OnBackend for Job<'_> {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let a = self.0;
        let gpu = !backend.name().starts_with("cpu");
        let args = bench::BenchArgs {
            preset: a.synthetic.clone(),
            scale: a.scale.unwrap_or(if gpu { 1 } else { 16 }),
            workload_scale: a.workload_scale.unwrap_or(if gpu { 1 } else { 4 }),
            variants: a.variants.clone(),
            profile: a.profile,
            cuda_graphs: !a.no_graphs,
            seed: a.seed,
            weights: a.dev.weights.into(),
        };
        let json = bench::run(backend, &args, gpu)?;
        if let Some(path) = &a.json {
            std::fs::write(path, serde_json::to_string_pretty(&json).unwrap_or_default() + "\n")
                .map_err(|e| Error::io(path, e))?;
        }
        Ok(())
    }
}
