//! `dllm quantize --fp8`: a checkpoint rewritten with FP8 e4m3 linears in the compressed-tensors
//! layout (issue 17, `model::quant`): each linear weight as F8_E4M3 codes beside
//! `<name>_scale` (F32, `[rows, 1]`, `crate::fp8`'s per-row scales), every other tensor as stored,
//! `quantization_config` added to config.json, the other files copied. dllm (and vLLM or any
//! compressed-tensors reader) loads the result as it ships.
//!
//! Shards of at most [`SHARD_BYTES`] are written one at a time, so memory holds one shard's
//! quantized codes beside the mapped input, and listed in `model.safetensors.index.json`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView as StView};
use serde_json::{json, Value};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fp8;
use crate::model::layout::{layout, tensor_name, LINEARS};
use crate::model::{quant, ModelFiles};

/// The largest shard written, in bytes (Hugging Face's default is 5 GB).
pub const SHARD_BYTES: usize = 4 << 30;

/// What [`quantize_fp8`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Linear weights quantized (stacked parts count one each).
    pub quantized: usize,
    /// Tensors copied as stored (embeddings, norms, biases).
    pub copied: usize,
    pub shards: usize,
    /// Bytes of tensor data written.
    pub bytes: usize,
}

/// One output tensor: its name, dtype, shape and bytes.
struct Out {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Quantize the checkpoint in `input` into the new directory `output` (which must not exist or
/// be empty); `progress` gets each shard's name as it is written. Errors: an invalid input
/// checkpoint (as `ModelFiles::open`), one quantized already, an output directory with files in
/// it, I/O.
pub fn quantize_fp8(input: &Path, output: &Path, progress: &mut dyn FnMut(&str)) -> Result<Summary> {
    quantize_fp8_sharded(input, output, SHARD_BYTES, progress)
}

/// [`quantize_fp8`] with shards of at most `shard_bytes` (a tensor larger than that gets a
/// shard of its own).
pub fn quantize_fp8_sharded(
    input: &Path,
    output: &Path,
    shard_bytes: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<Summary> {
    let files = ModelFiles::open(input)?;
    if files.config.quantization.is_some() {
        let cpath = input.join("config.json");
        return Err(Error::config(
            &cpath,
            "quantization_config",
            "present: the checkpoint is quantized already",
        ));
    }
    prepare_output(output)?;
    let cfg = &files.config;
    let linears: HashSet<String> =
        (0..cfg.n_layers).flat_map(|i| LINEARS.iter().map(move |&p| tensor_name(cfg.arch, p, i))).collect();
    let mut sum = Summary { quantized: 0, copied: 0, shards: 0, bytes: 0 };
    let mut shard: Vec<Out> = vec![];
    let mut weight_map = BTreeMap::new();
    let mut names = vec![];
    for (name, shape) in layout(cfg) {
        let t = files.checkpoint.get(&name)?;
        let mut outs = vec![];
        if linears.contains(&name) {
            let (codes, scales) = fp8::quantize_rows(&t.to_f32(), shape[0], shape[1]);
            outs.push(Out { name: name.clone(), dtype: Dtype::F8_E4M3, shape: shape.clone(), data: codes });
            let data = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
            outs.push(Out {
                name: format!("{name}_scale"),
                dtype: Dtype::F32,
                shape: vec![shape[0], 1],
                data,
            });
            sum.quantized += 1;
        } else {
            outs.push(Out {
                name: name.clone(),
                dtype: st_dtype(t.dtype),
                shape: shape.clone(),
                data: t.bytes.to_vec(),
            });
            sum.copied += 1;
        }
        let size: usize = outs.iter().map(|o| o.data.len()).sum();
        if !shard.is_empty() && shard.iter().map(|o| o.data.len()).sum::<usize>() + size > shard_bytes {
            names.push(flush(output, &mut shard, &mut sum, &mut weight_map)?);
            progress(names.last().map_or("", String::as_str));
        }
        shard.extend(outs);
    }
    names.push(flush(output, &mut shard, &mut sum, &mut weight_map)?);
    finish(input, output, &names, weight_map, sum.bytes)?;
    Ok(sum)
}

/// `output` must be a new or empty directory: nothing of another checkpoint is overwritten.
fn prepare_output(output: &Path) -> Result<()> {
    if output.exists() {
        let mut entries = std::fs::read_dir(output).map_err(|e| Error::io(output, e))?;
        if entries.next().is_some() {
            return Err(Error::file(output, "the output directory is not empty"));
        }
    }
    std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))
}

fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::Bf16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::E4m3 => Dtype::F8_E4M3,
    }
}

/// Write the pending tensors as the next shard (a temporary name, renamed in [`finish`]).
fn flush(
    output: &Path,
    shard: &mut Vec<Out>,
    sum: &mut Summary,
    weight_map: &mut BTreeMap<String, usize>,
) -> Result<String> {
    let file = format!("shard-{}.safetensors", sum.shards);
    let path = output.join(&file);
    let views = shard
        .iter()
        .map(|o| StView::new(o.dtype, o.shape.clone(), &o.data).map(|v| (o.name.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::file(&path, format!("cannot lay out the shard: {e}")))?;
    safetensors::serialize_to_file(views, None, &path)
        .map_err(|e| Error::file(&path, format!("cannot write: {e}")))?;
    // readable like the other files of a checkpoint (the writer creates it owner-only)
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(&path, e))?;
    }
    for o in shard.iter() {
        weight_map.insert(o.name.clone(), sum.shards);
        sum.bytes += o.data.len();
    }
    sum.shards += 1;
    shard.clear();
    Ok(file)
}

/// Name the shards as Hugging Face does (one `model.safetensors`, or `model-0000i-of-0000n`
/// with an index), write config.json with its `quantization_config`, copy the other files.
fn finish(
    input: &Path,
    output: &Path,
    shards: &[String],
    weight_map: BTreeMap<String, usize>,
    bytes: usize,
) -> Result<()> {
    let n = shards.len();
    let final_name = |i: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        }
    };
    for (i, s) in shards.iter().enumerate() {
        std::fs::rename(output.join(s), output.join(final_name(i)))
            .map_err(|e| Error::io(&output.join(s), e))?;
    }
    if n > 1 {
        let map: serde_json::Map<String, Value> =
            weight_map.into_iter().map(|(k, i)| (k, Value::String(final_name(i)))).collect();
        let index = json!({"metadata": {"total_size": bytes}, "weight_map": map});
        write_json(&output.join("model.safetensors.index.json"), &index)?;
    }
    let cpath = input.join("config.json");
    let text = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
    let mut config: Value = serde_json::from_str(&text)
        .map_err(|e| Error::config(&cpath, "(json)", format!("not valid JSON: {e}")))?;
    if let Some(obj) = config.as_object_mut() {
        obj.insert("quantization_config".into(), quant::config_json());
    }
    write_json(&output.join("config.json"), &config)?;
    copy_other_files(input, output)
}

/// Every file of the input directory but config.json and the weights (tokenizer, generation
/// config, chat template, …).
fn copy_other_files(input: &Path, output: &Path) -> Result<()> {
    for e in std::fs::read_dir(input).map_err(|e| Error::io(input, e))? {
        let p = e.map_err(|e| Error::io(input, e))?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        if p.is_file() && !weights && name != "config.json" {
            std::fs::copy(&p, output.join(&name)).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::file(path, e.to_string()))? + "\n";
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}
