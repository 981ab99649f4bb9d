//! Helpers shared by integration tests.
#![allow(dead_code)]

pub mod pipeline;

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

/// The directory of golden fixtures written by `tests/fixtures/make_golden.py`.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

/// A tensor read from a fixture: shape and values (f32 as is, i64 converted).
pub struct Fixture {
    pub shape: Vec<usize>,
    pub f32s: Vec<f32>,
    pub i64s: Vec<i64>,
}

/// Reads every tensor of a safetensors file.
pub fn read_tensors(path: &Path) -> std::collections::BTreeMap<String, Fixture> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("fixture parses");
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let raw = v.data();
            let mut f = Fixture {
                shape: v.shape().to_vec(),
                f32s: vec![],
                i64s: vec![],
            };
            match v.dtype() {
                Dtype::F32 => {
                    f.f32s = raw
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect()
                }
                Dtype::I64 => {
                    f.i64s = raw
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                        .collect()
                }
                d => panic!("unexpected fixture dtype {d:?}"),
            }
            (name, f)
        })
        .collect()
}

/// Largest absolute difference; panics on length mismatch.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
