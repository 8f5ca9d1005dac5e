//! What a checkpoint of each family holds: the tensor names (spec §2 for LLaDA, spec §3 for
//! Dream) and shapes a config implies, and the check of a checkpoint against them.

use crate::dtype::DType;
use crate::error::Result;
use crate::model::checkpoint::Checkpoint;
use crate::model::config::{Arch, ModelConfig};

/// One tensor of a checkpoint, named per family by [`tensor_name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Embed,
    FinalNorm,
    LmHead,
    AttnNorm,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    O,
    FfNorm,
    Gate,
    Up,
    Down,
}

/// The checkpoint name of `part` (of layer `layer` for per-layer parts): spec §2 for LLaDA,
/// spec §3 for Dream.
pub fn tensor_name(arch: Arch, part: Part, layer: usize) -> String {
    use Part::*;
    match arch {
        Arch::Llada => {
            let p = "model.transformer.";
            let n = match part {
                Embed => return format!("{p}wte.weight"),
                FinalNorm => return format!("{p}ln_f.weight"),
                LmHead => return format!("{p}ff_out.weight"),
                AttnNorm => "attn_norm",
                Q => "q_proj",
                K => "k_proj",
                V => "v_proj",
                QBias | KBias | VBias => unreachable!("LLaDA has no biases"),
                O => "attn_out",
                FfNorm => "ff_norm",
                Gate => "ff_proj",
                Up => "up_proj",
                Down => "ff_out",
            };
            format!("{p}blocks.{layer}.{n}.weight")
        }
        Arch::Dream => {
            let n = match part {
                Embed => return "model.embed_tokens.weight".into(),
                FinalNorm => return "model.norm.weight".into(),
                LmHead => return "lm_head.weight".into(),
                AttnNorm => "input_layernorm.weight",
                Q => "self_attn.q_proj.weight",
                K => "self_attn.k_proj.weight",
                V => "self_attn.v_proj.weight",
                QBias => "self_attn.q_proj.bias",
                KBias => "self_attn.k_proj.bias",
                VBias => "self_attn.v_proj.bias",
                O => "self_attn.o_proj.weight",
                FfNorm => "post_attention_layernorm.weight",
                Gate => "mlp.gate_proj.weight",
                Up => "mlp.up_proj.weight",
                Down => "mlp.down_proj.weight",
            };
            format!("model.layers.{layer}.{n}")
        }
    }
}

/// Every tensor a checkpoint of `cfg`'s family must hold, with its shape (spec §2, §3).
pub fn layout(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    use Part::*;
    let (d, v, m, q, kv) =
        (cfg.d_model, cfg.n_logits, cfg.mlp_hidden, cfg.n_heads * cfg.head_dim, cfg.kv_dim());
    let name = |p, i| tensor_name(cfg.arch, p, i);
    let mut out = vec![(name(Embed, 0), vec![v, d])];
    for i in 0..cfg.n_layers {
        out.extend([
            (name(AttnNorm, i), vec![d]),
            (name(Q, i), vec![q, d]),
            (name(K, i), vec![kv, d]),
            (name(V, i), vec![kv, d]),
        ]);
        if cfg.arch == Arch::Dream {
            out.extend([(name(QBias, i), vec![q]), (name(KBias, i), vec![kv]), (name(VBias, i), vec![kv])]);
        }
        out.extend([
            (name(O, i), vec![d, q]),
            (name(FfNorm, i), vec![d]),
            (name(Gate, i), vec![m, d]),
            (name(Up, i), vec![m, d]),
            (name(Down, i), vec![d, m]),
        ]);
    }
    out.push((name(FinalNorm, 0), vec![d]));
    out.push((name(LmHead, 0), vec![v, d]));
    out
}

/// The parts that are linear weights: what FP8 quantizes (issue 17).
pub const LINEARS: [Part; 8] =
    [Part::Q, Part::K, Part::V, Part::O, Part::Gate, Part::Up, Part::Down, Part::LmHead];

/// Check a checkpoint against the layout of `cfg`'s family; returns its dtype (the activation
/// dtype). With a `quantization_config`, linear weights may be F8_E4M3 with their scales.
pub fn validate(ck: &Checkpoint, cfg: &ModelConfig) -> Result<DType> {
    let linears: std::collections::HashSet<String> =
        (0..cfg.n_layers).flat_map(|i| LINEARS.iter().map(move |&p| tensor_name(cfg.arch, p, i))).collect();
    let quantized = cfg.quantization.is_some();
    // The embedding is never a linear, so the returned (activation) dtype is never e4m3.
    ck.validate(&layout(cfg), &|name| quantized && linears.contains(name))
}
