//! Shared helpers of the integration tests: fixtures, golden cases, tensors.
#![allow(dead_code, unused_imports)] // each test binary uses a part

pub mod fixtures;
pub mod goldens;
pub mod tensors;

pub use fixtures::*;
pub use goldens::*;
pub use tensors::*;
