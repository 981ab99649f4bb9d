//! Parameters as one flat f64 vector with PyTorch names and shapes, so that the optimizer,
//! gradient clipping and the data-parallel gradient sum are loops over one slice, and saving
//! is a walk over named ranges.

use std::ops::Range;
use std::path::Path;

use crate::error::Result;
use crate::model::builder::write_safetensors;
use crate::model::weights::Tensor;

/// One named tensor inside the flat vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The tensor's PyTorch state_dict name.
    pub name: String,
    /// Its PyTorch shape; values are stored row-major.
    pub shape: Vec<usize>,
    /// Start of its values in the flat vector.
    pub offset: usize,
    /// Number of values: the product of `shape`.
    pub len: usize,
}

/// Names, shapes and offsets of every parameter; the values live in a separate `Vec<f64>`
/// (one for parameters, one per gradient buffer, two for Adam's moments).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamLayout {
    /// Every tensor, in state_dict order; a [`ParamId`] indexes this.
    pub entries: Vec<Entry>,
    /// Length of the flat vector: the sum of the entries' `len`.
    pub total: usize,
}

/// Index of an entry in a [`ParamLayout`].
pub type ParamId = usize;

impl ParamLayout {
    /// Appends a tensor after the last one and returns its id.
    pub fn add(&mut self, name: String, shape: Vec<usize>) -> ParamId {
        let len = shape.iter().product();
        self.entries.push(Entry {
            name,
            shape,
            offset: self.total,
            len,
        });
        self.total += len;
        self.entries.len() - 1
    }

    /// Where tensor `id`'s values are in the flat vector.
    #[inline]
    pub fn range(&self, id: ParamId) -> Range<usize> {
        let e = &self.entries[id];
        e.offset..e.offset + e.len
    }

    /// The id of the tensor named `name`, if any.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.entries.iter().position(|e| e.name == name)
    }

    /// The named f32 tensors of `values`, in layout order (the model's state_dict order).
    pub fn tensors(&self, values: &[f64]) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|e| {
                let data = values[e.offset..e.offset + e.len]
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                (
                    e.name.clone(),
                    Tensor {
                        shape: e.shape.clone(),
                        data,
                    },
                )
            })
            .collect()
    }

    /// Writes `values` as an f32 safetensors file with PyTorch names.
    pub fn save(&self, values: &[f64], path: &Path) -> Result<()> {
        write_safetensors(path, &self.tensors(values))
    }
}

/// Read-only view of parameter values with their layout.
#[derive(Clone, Copy)]
pub struct Params<'a> {
    /// Where each tensor is in `values`.
    pub layout: &'a ParamLayout,
    /// The flat parameter vector.
    pub values: &'a [f64],
}

impl<'a> Params<'a> {
    /// Tensor `id`'s values.
    #[inline]
    pub fn get(&self, id: ParamId) -> &'a [f64] {
        &self.values[self.layout.range(id)]
    }

    /// An optional tensor's values (e.g. a bias).
    pub fn opt(&self, id: Option<ParamId>) -> Option<&'a [f64]> {
        id.map(|i| self.get(i))
    }
}
