//! The CUDA backend's knobs: every setting that changes how it runs, in one place, with the
//! environment variable that sets it.

/// How the CUDA backend runs its kernels. [`Cuda::new`](super::Cuda::new) reads them with
/// [`CudaOptions::from_env`]; tests and tuning change a backend's options through its setters
/// ([`Cuda::force_attention_splits`](super::Cuda::force_attention_splits),
/// [`Cuda::disable_tensor_core_attention`](super::Cuda::disable_tensor_core_attention),
/// [`Cuda::force_simt_fp8_gemm`](super::Cuda::force_simt_fp8_gemm)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    /// `DLLM_ATTENTION_SPLITS=N` (N > 0): every attention call splits its keys N ways, still
    /// capped by the partial-record workspace and by one key tile a split. None (unset, 0 or not
    /// a number): `attention_splits` decides.
    pub attention_splits: Option<usize>,
    /// bf16 attention of head_dim 128 runs on tensor cores (kernels/attention_tc.cu);
    /// `DLLM_ATTENTION=simt` keeps it on the CUDA-core kernel.
    pub tensor_core_attention: bool,
    /// The residual add and the norm after it run as one kernel (add_rmsnorm); `DLLM_UNFUSED=1`
    /// runs them as two (bit-identical; for same-machine comparisons).
    pub fused_norm: bool,
    /// FP8 linears (issue 17) run through cuBLASLt where the shape and the GPU allow
    /// (src/backend/cuda/fp8.rs); `DLLM_FP8_GEMM=simt` keeps every one on the SIMT kernel
    /// (kernels/linear_fp8.cu), the reference path.
    pub fp8_cublaslt: bool,
}

impl Default for CudaOptions {
    /// What an environment without the variables gives.
    fn default() -> Self {
        CudaOptions {
            attention_splits: None,
            tensor_core_attention: true,
            fused_norm: true,
            fp8_cublaslt: true,
        }
    }
}

impl CudaOptions {
    /// The options the process environment sets.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`CudaOptions::from_env`] over any lookup of the variables (None: unset or not Unicode).
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        CudaOptions {
            attention_splits: var("DLLM_ATTENTION_SPLITS").and_then(|v| v.parse().ok()).filter(|&n| n > 0),
            tensor_core_attention: var("DLLM_ATTENTION").as_deref() != Some("simt"),
            fused_norm: var("DLLM_UNFUSED").as_deref() != Some("1"),
            fp8_cublaslt: var("DLLM_FP8_GEMM").as_deref() != Some("simt"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CudaOptions;

    fn with(vars: &[(&str, &str)]) -> CudaOptions {
        CudaOptions::from_vars(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn no_variables_give_the_defaults() {
        assert_eq!(with(&[]), CudaOptions::default());
        let d = CudaOptions::default();
        assert!(d.attention_splits.is_none() && d.tensor_core_attention && d.fused_norm && d.fp8_cublaslt);
    }

    #[test]
    fn each_variable_sets_its_knob_and_only_its_exact_values_count() {
        assert_eq!(with(&[("DLLM_ATTENTION_SPLITS", "5")]).attention_splits, Some(5));
        for v in ["0", "-3", "five", ""] {
            assert_eq!(with(&[("DLLM_ATTENTION_SPLITS", v)]).attention_splits, None, "{v:?}");
        }
        assert!(!with(&[("DLLM_ATTENTION", "simt")]).tensor_core_attention);
        assert!(with(&[("DLLM_ATTENTION", "SIMT")]).tensor_core_attention);
        assert!(!with(&[("DLLM_UNFUSED", "1")]).fused_norm);
        assert!(with(&[("DLLM_UNFUSED", "true")]).fused_norm);
        assert!(!with(&[("DLLM_FP8_GEMM", "simt")]).fp8_cublaslt);
        assert!(with(&[("DLLM_FP8_GEMM", "cublaslt")]).fp8_cublaslt);
    }
}
