//! Building models in code: layer by layer, weights initialized the way PyTorch initializes
//! each module (uniform in `±1/sqrt(fan_in)` for conv and linear, `±1/sqrt(hidden)` for
//! recurrent layers), with PyTorch's tensor names. Used by benchmarks, data generators and
//! training; [`ModelBuilder::save`] writes the same model TOML + safetensors a user would.

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::config::ModelConfig;
use super::weights::{Tensor, WeightStore};
use super::Model;
use crate::error::{Error, Result};
use crate::vocab::SplitMix;

/// Accumulates a model TOML and its tensors.
#[derive(Debug, Clone)]
pub struct ModelBuilder {
    input_size: usize,
    width: usize,
    layers: String,
    tensors: Vec<(String, Tensor)>,
    rng: SplitMix,
}

impl ModelBuilder {
    pub fn new(input_size: usize, seed: u64) -> ModelBuilder {
        ModelBuilder {
            input_size,
            width: input_size,
            layers: String::new(),
            tensors: Vec::new(),
            rng: SplitMix::new(seed),
        }
    }

    fn tensor(&mut self, name: String, shape: Vec<usize>, bound: f32) {
        let n = shape.iter().product();
        let data = (0..n).map(|_| self.rng.uniform(bound)).collect();
        self.tensors.push((name, Tensor { shape, data }));
    }

    /// `nn.Conv1d(width, out, kernel, stride, dilation)` with the given padding mode.
    pub fn conv1d(
        mut self,
        name: &str,
        out: usize,
        kernel: usize,
        stride: usize,
        dilation: usize,
        padding: &str,
    ) -> Self {
        let bound = 1.0 / ((self.width * kernel) as f32).sqrt();
        self.tensor(format!("{name}.weight"), vec![out, self.width, kernel], bound);
        self.tensor(format!("{name}.bias"), vec![out], bound);
        self.layers.push_str(&format!(
            "\n[[layers]]\ntype = \"conv1d\"\nname = \"{name}\"\nstride = {stride}\ndilation = {dilation}\npadding = \"{padding}\"\n"
        ));
        self.width = out;
        self
    }

    /// `nn.Linear(width, out)`.
    pub fn linear(mut self, name: &str, out: usize) -> Self {
        let bound = 1.0 / (self.width as f32).sqrt();
        self.tensor(format!("{name}.weight"), vec![out, self.width], bound);
        self.tensor(format!("{name}.bias"), vec![out], bound);
        self.layers
            .push_str(&format!("\n[[layers]]\ntype = \"linear\"\nname = \"{name}\"\n"));
        self.width = out;
        self
    }

    /// An activation (`relu`, `tanh`, `sigmoid`, `identity`, `softmax`) or pooling without weights,
    /// given as the TOML body after `type = ...`.
    pub fn plain(mut self, kind: &str, options: &str) -> Self {
        self.layers
            .push_str(&format!("\n[[layers]]\ntype = \"{kind}\"\n{options}\n"));
        self
    }

    /// `nn.RNN` / `nn.LSTM` / `nn.GRU` (`kind` = `rnn`, `lstm`, `gru`), unidirectional.
    pub fn recurrent(mut self, kind: &str, name: &str, hidden: usize, num_layers: usize) -> Self {
        let gates = match kind {
            "lstm" => 4,
            "gru" => 3,
            _ => 1,
        };
        let bound = 1.0 / (hidden as f32).sqrt();
        for l in 0..num_layers {
            let in_w = if l == 0 { self.width } else { hidden };
            self.tensor(
                format!("{name}.weight_ih_l{l}"),
                vec![gates * hidden, in_w],
                bound,
            );
            self.tensor(
                format!("{name}.weight_hh_l{l}"),
                vec![gates * hidden, hidden],
                bound,
            );
            self.tensor(format!("{name}.bias_ih_l{l}"), vec![gates * hidden], bound);
            self.tensor(format!("{name}.bias_hh_l{l}"), vec![gates * hidden], bound);
        }
        self.layers
            .push_str(&format!("\n[[layers]]\ntype = \"{kind}\"\nname = \"{name}\"\n"));
        self.width = hidden;
        self
    }

    /// The model file text, naming `weights` as its safetensors file.
    pub fn toml(&self, weights: &str) -> String {
        format!(
            "weights = \"{weights}\"\ninput_size = {}\n{}",
            self.input_size, self.layers
        )
    }

    /// Builds the model in memory.
    pub fn build(&self) -> Result<Model> {
        let path = Path::new("<built>.toml");
        let config = ModelConfig::parse(&self.toml("<built>.safetensors"), path)?;
        Model::from_parts(config, WeightStore::from_tensors(path, self.tensors.clone()))
    }

    /// Writes `dir/stem.toml` and `dir/stem.safetensors`, loadable by `Model::load` and by
    /// PyTorch's `load_state_dict`.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let weights = dir.join(format!("{stem}.safetensors"));
        write_safetensors(&weights, &self.tensors)?;
        let toml = dir.join(format!("{stem}.toml"));
        std::fs::write(&toml, self.toml(&format!("{stem}.safetensors"))).map_err(|e| Error::io(&toml, e))
    }
}

/// Writes f32 tensors as a safetensors file (creating its directory).
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
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
    let data = safetensors::serialize(views, None).map_err(|e| Error::Output {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    use std::io::Write as _;
    crate::sink::create_file(path)?
        .write_all(&data)
        .map_err(|e| Error::io(path, e))
}
