//! A Hugging Face checkpoint directory, as it ships: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Files are memory-mapped; tensors are zero-copy views by name.
//!
//! Every file's header is parsed and bounds-checked when the directory is opened (a truncated or
//! corrupt file fails there, naming the file); the expected layout (names, shapes, one dtype) is
//! checked by [`Checkpoint::validate`] before any compute.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, TensorInfo};
use serde_json::Value;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// A tensor inside a mapped file: no copy until a backend uploads it.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub file: &'a Path,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
    /// The mapped file `bytes` lie in, and where: a backend may keep reading the weights from the
    /// map instead of copying them (the CPU backend does).
    pub map: &'a Arc<Mmap>,
    pub offset: usize,
}

impl TensorView<'_> {
    /// Widen to f32 (exact for every supported dtype).
    pub fn to_f32(&self) -> Vec<f32> {
        let b = self.bytes;
        match self.dtype {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::Bf16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            DType::E4m3 => b.iter().map(|&c| crate::fp8::e4m3_to_f32(c)).collect(),
        }
    }
}

struct Shard {
    path: PathBuf,
    map: Arc<Mmap>,
    /// Start of the data section (8-byte length + JSON header).
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// tensor name → shard index
    index: HashMap<String, usize>,
}

impl Checkpoint {
    /// Open a checkpoint directory: one `model.safetensors`, or the shards named by
    /// `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::file(dir, "not a checkpoint directory"));
        }
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut ck = Checkpoint { dir: dir.to_path_buf(), shards: vec![], index: HashMap::new() };
        if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| Error::file(&index_path, format!("not valid JSON: {e}")))?;
            let Some(map) = v.get("weight_map").and_then(Value::as_object) else {
                return Err(Error::file(&index_path, "no `weight_map` object"));
            };
            let mut shard_of_file: HashMap<String, usize> = HashMap::new();
            for (tensor, file) in map {
                let Some(file) = file.as_str() else {
                    return Err(Error::tensor(&index_path, tensor, "weight_map entry is not a file name"));
                };
                if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    return Err(Error::tensor(&index_path, tensor, format!("bad shard name `{file}`")));
                }
                let si = match shard_of_file.get(file) {
                    Some(&i) => i,
                    None => {
                        ck.shards.push(Shard::open(&dir.join(file))?);
                        shard_of_file.insert(file.to_string(), ck.shards.len() - 1);
                        ck.shards.len() - 1
                    }
                };
                if !ck.shards[si].tensors.contains_key(tensor) {
                    return Err(Error::tensor(
                        &ck.shards[si].path,
                        tensor,
                        "listed in model.safetensors.index.json but not in this shard",
                    ));
                }
                ck.index.insert(tensor.clone(), si);
            }
        } else if single.is_file() {
            ck.shards.push(Shard::open(&single)?);
            for name in ck.shards[0].tensors.keys() {
                ck.index.insert(name.clone(), 0);
            }
        } else {
            return Err(Error::file(
                dir,
                "no model.safetensors or model.safetensors.index.json in this directory",
            ));
        }
        Ok(ck)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// A zero-copy view of one tensor.
    pub fn get(&self, name: &str) -> Result<TensorView<'_>> {
        let Some(&si) = self.index.get(name) else {
            return Err(Error::tensor(&self.dir, name, "missing from the checkpoint"));
        };
        let shard = &self.shards[si];
        let info = &shard.tensors[name];
        let (a, b) = info.data_offsets;
        Ok(TensorView {
            name: self.index.get_key_value(name).map(|(k, _)| k.as_str()).unwrap_or_default(),
            file: &shard.path,
            dtype: dtype_of(info.dtype).expect("checked when the shard was opened"),
            shape: &info.shape,
            bytes: &shard.map[shard.data_start + a..shard.data_start + b],
            map: &shard.map,
            offset: shard.data_start + a,
        })
    }

    /// Check that the checkpoint holds exactly `layout` (names and shapes) in one dtype, and
    /// return that dtype: it becomes the activation dtype (spec §8). A tensor `fp8_ok` accepts
    /// (the linears of a quantized checkpoint) may instead be F8_E4M3 with its per-row scales
    /// beside it, `<name>_scale` of shape `[rows, 1]` (compressed-tensors, `model::quant`).
    pub fn validate(&self, layout: &[(String, Vec<usize>)], fp8_ok: &dyn Fn(&str) -> bool) -> Result<DType> {
        let mut dtype: Option<(DType, &str)> = None;
        let mut expected: std::collections::HashSet<String> = layout.iter().map(|(n, _)| n.clone()).collect();
        for (name, shape) in layout {
            let t = self.get(name)?;
            if t.shape != shape.as_slice() {
                return Err(Error::tensor(
                    t.file,
                    name,
                    format!("shape {:?}, but the config implies {:?}", t.shape, shape),
                ));
            }
            if t.dtype == DType::E4m3 {
                if !fp8_ok(name) {
                    return Err(Error::tensor(
                        t.file,
                        name,
                        "F8_E4M3, but only the linear weights of a checkpoint with a quantization_config may be",
                    ));
                }
                self.fp8_scales(name, shape[0])?;
                expected.insert(format!("{name}_scale"));
                continue;
            }
            match dtype {
                None => dtype = Some((t.dtype, t.name)),
                Some((d, first)) if d != t.dtype => {
                    return Err(Error::tensor(
                        t.file,
                        name,
                        format!(
                            "dtype {} differs from {} of `{first}`: mixed dtypes are not supported",
                            t.dtype.name(),
                            d.name()
                        ),
                    ));
                }
                _ => {}
            }
        }
        let mut extra: Vec<&str> = self.names().filter(|n| !expected.contains(*n)).collect();
        extra.sort();
        if let Some(first) = extra.first() {
            return Err(Error::tensor(
                &self.dir,
                first,
                format!("unexpected tensor ({} not in the layout this config describes)", extra.len()),
            ));
        }
        dtype.map(|(d, _)| d).ok_or_else(|| Error::file(&self.dir, "empty layout"))
    }

    /// The per-row scales of the FP8 weight `name` (`rows` rows): `<name>_scale`, shape `[rows, 1]`
    /// or `[rows]`, a float dtype, every value finite and positive.
    pub fn fp8_scales(&self, name: &str, rows: usize) -> Result<Vec<f32>> {
        let sname = format!("{name}_scale");
        let s = self.get(&sname)?;
        if s.shape != [rows, 1] && s.shape != [rows] {
            return Err(Error::tensor(
                s.file,
                &sname,
                format!("shape {:?}, expected [{rows}, 1] (one scale per row)", s.shape),
            ));
        }
        if s.dtype == DType::E4m3 {
            return Err(Error::tensor(s.file, &sname, "F8_E4M3 scales: expected F32, BF16 or F16"));
        }
        let v = s.to_f32();
        if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !(x.is_finite() && **x > 0.0)) {
            return Err(Error::tensor(
                s.file,
                &sname,
                format!("row {i} has scale {x}: scales must be finite and positive"),
            ));
        }
        Ok(v)
    }
}

fn dtype_of(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::BF16 => Some(DType::Bf16),
        Dtype::F16 => Some(DType::F16),
        Dtype::F8_E4M3 => Some(DType::E4m3),
        _ => None,
    }
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a checkpoint rewritten while dllm runs is outside what we
        // can defend against (as for every mmap-based loader).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        // read_metadata checks the header and that the offsets cover the file exactly: a
        // truncated or padded file is rejected here.
        let (n, meta) = SafeTensors::read_metadata(&map)
            .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
        let mut tensors = HashMap::new();
        for (name, info) in meta.tensors() {
            if dtype_of(info.dtype).is_none() {
                return Err(Error::tensor(
                    path,
                    &name,
                    format!("dtype {:?} is not supported (F32, BF16, F16, F8_E4M3 are)", info.dtype),
                ));
            }
            tensors.insert(name, info.clone());
        }
        Ok(Shard { path: path.to_path_buf(), map: Arc::new(map), data_start: 8 + n, tensors })
    }
}
