//! Where a command runs: `--device` picks a backend, and work generic over the backend runs on
//! it; the checkpoint (or the embedded one) and the engine's loading line.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

use dllm::backend::cpu::Cpu;
#[cfg(feature = "cuda")]
use dllm::backend::cuda::Cuda;
use dllm::backend::Backend;
use dllm::decode::Engine;
use dllm::dtype::DType;
use dllm::model::{embedded, ModelFiles};
use dllm::transformer::WeightFormat;
use dllm::{Error, Result};

use super::args::{DeviceArg, DeviceArgs};

/// Work that runs on whichever backend `--device` picks.
pub(crate) trait OnBackend {
    fn run<B: Backend>(self, backend: B) -> Result<()>;
}

/// `auto`: CUDA when it works (saying why not otherwise), else the CPU.
pub(crate) fn dispatch(dev: &DeviceArgs, dtype: DType, work: impl OnBackend) -> Result<()> {
    if dev.threads == Some(0) {
        return Err(Error::options("--threads must be at least 1"));
    }
    let cpu = || Cpu::new(dtype, dev.threads);
    match dev.device {
        DeviceArg::Cpu => work.run(cpu()),
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda => work.run(Cuda::new(0, dtype)?),
        #[cfg(feature = "cuda")]
        DeviceArg::Auto => match Cuda::new(0, dtype) {
            Ok(gpu) => work.run(gpu),
            Err(e) => {
                eprintln!("CUDA unavailable ({e}); using the CPU");
                work.run(cpu())
            }
        },
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Cuda => Err(Error::Device(
            "--device cuda: this build of dllm has no CUDA backend (built without the `cuda` feature)".into(),
        )),
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Auto => work.run(cpu()),
    }
}

/// The checkpoint of `--model`, or the embedded one.
pub(crate) fn open_model(model: &Option<PathBuf>) -> Result<ModelFiles> {
    match model {
        Some(dir) => ModelFiles::open(dir),
        None => ModelFiles::open(&embedded::model_dir()?),
    }
}

/// Upload the weights (linears in `format`), with a progress bar on a terminal.
pub(crate) fn load_engine<B: Backend>(
    backend: B,
    files: &ModelFiles,
    format: WeightFormat,
) -> Result<Engine<B>> {
    eprintln!("device: {}", backend.name());
    let t0 = std::time::Instant::now();
    let bar = progress_bar(files.config.n_layers, "loading weights", "layers");
    let engine =
        Engine::load_with_progress(backend, files, format, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let fp8 = if engine.config.quantization.is_some() { " (FP8 e4m3 linears)" } else { "" };
    eprintln!("loaded weights: {} layers in {:.2} s{fp8}", files.config.n_layers, t0.elapsed().as_secs_f64());
    Ok(engine)
}

/// A progress bar on stderr of `len` `unit`s, hidden when stderr is not a terminal (logs and
/// pipes get the summary lines only).
pub(crate) fn progress_bar(len: usize, what: &str, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style =
        ProgressStyle::with_template(&format!("{{msg}} {{bar:30}} {{pos}}/{{len}} {unit} {{elapsed}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(len as u64).with_style(style).with_message(what.to_string())
}
