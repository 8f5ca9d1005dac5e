//! `dllm quantize --fp8 IN OUT`: `model::quantize` with a line per shard and a summary.

use dllm::model::quantize::quantize_fp8;
use dllm::Result;

use super::args::QuantizeArgs;

pub(crate) fn run(a: QuantizeArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let s = quantize_fp8(&a.input, &a.output, &mut |shard| eprintln!("wrote {shard}"))?;
    eprintln!(
        "{}: {} linear weights in FP8 e4m3, {} tensors as stored, {} shard(s), {:.2} GB in {:.1} s",
        a.output.display(),
        s.quantized,
        s.copied,
        s.shards,
        s.bytes as f64 / 1e9,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
