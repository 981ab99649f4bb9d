//! Building models in code: a model file written layer by layer with its sizes, and weights
//! drawn as PyTorch's constructors draw them by [`tensors::init`] (the same initialization
//! `seqflow train` uses). Used by benchmarks, data generators and tests;
//! [`ModelBuilder::save`] writes the same model TOML + safetensors a user would.

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::config::{ModelConfig, Precision};
use super::tensors;
use super::weights::{Tensor, WeightStore};
use super::Model;
use crate::error::{Error, Result};

/// Accumulates a model file's layers.
#[derive(Debug, Clone)]
pub struct ModelBuilder {
    input_size: usize,
    layers: String,
    seed: u64,
    precision: Precision,
}

impl ModelBuilder {
    /// A model taking `input_size` features, with weights drawn from `seed`.
    pub fn new(input_size: usize, seed: u64) -> ModelBuilder {
        ModelBuilder {
            input_size,
            layers: String::new(),
            seed,
            precision: Precision::F32,
        }
    }

    /// `precision = "..."` at the top of the model file.
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Appends `[[layers]]` with `type = kind` and the given TOML body.
    pub fn layer(mut self, kind: &str, body: &str) -> Self {
        self.layers
            .push_str(&format!("\n[[layers]]\ntype = \"{kind}\"\n{body}\n"));
        self
    }

    /// Adds `key = value` to the last layer (e.g. `bidirectional`, `proj_size`, `bias`).
    pub fn with(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.layers.push_str(&format!("{key} = {value}\n"));
        self
    }

    /// `nn.Conv1d(width, out, kernel, stride, dilation)` with the given padding mode.
    pub fn conv1d(
        self,
        name: &str,
        out: usize,
        kernel: usize,
        stride: usize,
        dilation: usize,
        padding: &str,
    ) -> Self {
        self.layer(
            "conv1d",
            &format!(
                "name = \"{name}\"\nout_channels = {out}\nkernel_size = {kernel}\nstride = {stride}\n\
                 dilation = {dilation}\npadding = \"{padding}\""
            ),
        )
    }

    /// `nn.Linear(width, out)`.
    pub fn linear(self, name: &str, out: usize) -> Self {
        self.layer("linear", &format!("name = \"{name}\"\nout_features = {out}"))
    }

    /// An activation (`relu`, `tanh`, `sigmoid`, `identity`, `softmax`) or pooling without
    /// weights, given as the TOML body after `type = ...`.
    pub fn plain(self, kind: &str, options: &str) -> Self {
        self.layer(kind, options)
    }

    /// `nn.RNN` / `nn.LSTM` / `nn.GRU` (`kind` = `rnn`, `lstm`, `gru`); add
    /// `.with("bidirectional", true)`, `.with("proj_size", p)` or `.with("bias", false)`.
    pub fn recurrent(self, kind: &str, name: &str, hidden: usize, num_layers: usize) -> Self {
        self.layer(
            kind,
            &format!("name = \"{name}\"\nhidden_size = {hidden}\nnum_layers = {num_layers}"),
        )
    }

    /// The model file text, naming `weights` as its safetensors file.
    pub fn toml(&self, weights: &str) -> String {
        let precision = match self.precision {
            Precision::F32 => String::new(),
            p => format!("precision = \"{}\"\n", p.as_str()),
        };
        format!(
            "weights = \"{weights}\"\ninput_size = {}\n{precision}{}",
            self.input_size, self.layers
        )
    }

    fn parts(&self, path: &Path, weights: &str) -> Result<(ModelConfig, Vec<(String, Tensor)>)> {
        let config = ModelConfig::parse(&self.toml(weights), path)?;
        let tensors = tensors::init(&config, self.input_size, self.seed)?;
        Ok((config, tensors))
    }

    /// Builds the model in memory.
    pub fn build(&self) -> Result<Model> {
        let path = Path::new("<built>.toml");
        let (config, tensors) = self.parts(path, "<built>.safetensors")?;
        Model::from_parts(config, WeightStore::from_tensors(path, tensors))
    }

    /// Writes `dir/stem.toml` and `dir/stem.safetensors`, loadable by `Model::load` and by
    /// PyTorch's `load_state_dict`.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let weights = format!("{stem}.safetensors");
        let toml = dir.join(format!("{stem}.toml"));
        let (_, tensors) = self.parts(&toml, &weights)?;
        write_safetensors(&dir.join(&weights), &tensors)?;
        std::fs::write(&toml, self.toml(&weights)).map_err(|e| Error::io(&toml, e))
    }
}

/// Writes f32 tensors as a safetensors file (creating its directory).
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let data = safetensors_bytes(path, tensors)?;
    use std::io::Write as _;
    crate::outfiles::write_file(path, |f| f.write_all(&data))
}

/// f32 tensors in the safetensors format; `path` names the file in messages.
pub fn safetensors_bytes(path: &Path, tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Output {
                    path: path.to_path_buf(),
                    msg: format!("tensor `{name}`: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::Output {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_bidirectional_projected_and_biasless_layers() {
        let m = ModelBuilder::new(3, 1)
            .recurrent("lstm", "enc", 6, 2)
            .with("bidirectional", true)
            .with("proj_size", 4)
            .linear("head", 2)
            .with("bias", false)
            .build()
            .unwrap();
        assert_eq!((m.input_size(), m.output_size()), (3, 2));
        // Per layer and direction: w_ih [24, in], w_hh [24, 4], two biases [24], w_hr [4, 6];
        // layer 0 reads 3 features, layer 1 both directions' 4; the head has no bias.
        let lstm = 2 * (24 * 3 + 24 * 4 + 48 + 24) + 2 * (24 * 8 + 24 * 4 + 48 + 24);
        assert_eq!(m.params(), lstm + 2 * 8);
        assert!(m.check_streamable().is_err(), "bidirectional");
    }
}
