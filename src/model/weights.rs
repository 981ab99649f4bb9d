//! Reading a safetensors file into f32 tensors, converting f16 / bf16 / f64, and keeping
//! track of which tensors the layers consumed so leftovers can be reported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// One tensor converted to f32, row-major as stored.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Shape, as stored.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl From<&crate::onnx::Tensor> for Tensor {
    fn from(t: &crate::onnx::Tensor) -> Tensor {
        Tensor {
            shape: t.shape.clone(),
            data: t.data.clone(),
        }
    }
}

/// All tensors of a weights file, by name, with a record of which were taken.
#[derive(Debug, Clone)]
pub struct WeightStore {
    /// The file, for messages.
    pub path: PathBuf,
    tensors: BTreeMap<String, Tensor>,
    taken: BTreeSet<String>,
}

impl WeightStore {
    /// Reads and converts every tensor of `path`. Truncated or corrupt files fail here,
    /// before any layer is built.
    pub fn load(path: &Path) -> Result<WeightStore> {
        let bytes = crate::outfiles::read_regular(path)?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses safetensors bytes; `path` is used in messages only.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<WeightStore> {
        let file_err = |msg: String| Error::WeightsFile {
            path: path.to_path_buf(),
            msg,
        };
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            file_err(format!(
                "not a readable safetensors file ({e}); it may be truncated or corrupt \
                 ({} bytes); export with safetensors.torch.save_file(model.state_dict(), ...)",
                bytes.len()
            ))
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => raw
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => raw
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::F64 => raw
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8-byte chunk")) as f32)
                    .collect(),
                other => {
                    return Err(file_err(format!(
                        "tensor `{name}` has dtype {other:?}; seqflow reads F32, F16, BF16 and F64"
                    )))
                }
            };
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(file_err(format!(
                    "tensor `{name}` holds a non-finite value ({}) at flat index {i}",
                    data[i]
                )));
            }
            tensors.insert(
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(WeightStore {
            path: path.to_path_buf(),
            tensors,
            taken: BTreeSet::new(),
        })
    }

    /// An empty store, for models without weight-bearing layers.
    pub fn empty(path: &Path) -> WeightStore {
        WeightStore {
            path: path.to_path_buf(),
            tensors: BTreeMap::new(),
            taken: BTreeSet::new(),
        }
    }

    /// Builds a store from in-memory tensors (tests, training).
    pub fn from_tensors(path: &Path, tensors: impl IntoIterator<Item = (String, Tensor)>) -> WeightStore {
        WeightStore {
            path: path.to_path_buf(),
            tensors: tensors.into_iter().collect(),
            taken: BTreeSet::new(),
        }
    }

    /// Whether a tensor of this name exists (taken or not).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Looks at a tensor without marking it used.
    pub fn peek(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Takes a tensor, marking it used. `None` if absent.
    pub fn take(&mut self, name: &str) -> Option<&Tensor> {
        let t = self.tensors.get(name)?;
        self.taken.insert(name.to_string());
        Some(t)
    }

    /// Names of tensors no layer took, sorted.
    pub fn leftovers(&self) -> Vec<&str> {
        self.tensors
            .keys()
            .filter(|k| !self.taken.contains(*k))
            .map(String::as_str)
            .collect()
    }

    /// The names of the tensors starting with `prefix`, sorted, for "did you mean" hints.
    pub fn names_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.tensors
            .keys()
            .filter(move |k| k.starts_with(prefix))
            .map(String::as_str)
    }
}

/// `[4, 8, 3]`-style rendering of a shape for messages.
pub fn shape_str(shape: &[usize]) -> String {
    format!(
        "[{}]",
        shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
    )
}
