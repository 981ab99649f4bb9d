//! What `seqflow inspect` prints: layers, shapes, parameters, receptive field, delay and
//! whether the model can stream. Computed from the loaded model, never from the file alone,
//! so it shows exactly what will run.

use std::fmt;

use super::config::{CellKind, Nonlinearity, Padding};
use super::{Layer, Model};
use crate::vocab::group_digits;

/// Timing of a model's outputs relative to its input steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Input steps one output depends on; `None` when a recurrent layer makes it unbounded.
    pub receptive_field: Option<usize>,
    /// Index of the input step that completes the first output (0 = from the first step).
    pub first_output: usize,
    /// Outputs are emitted every `stride` input steps after the first.
    pub stride: usize,
    /// Steps of the future an output needs (`same` padding); 0 for causal models.
    pub lookahead: usize,
}

impl Model {
    /// Receptive field, delay and output stride, composed over the layers.
    pub fn timing(&self) -> Timing {
        let mut t = Timing {
            receptive_field: Some(1),
            first_output: 0,
            stride: 1,
            lookahead: 0,
        };
        for (_, layer) in self.layers() {
            if let Layer::Recurrent(r) = layer {
                t.receptive_field = None;
                if r.bidirectional {
                    t.lookahead = usize::MAX;
                }
            }
            if let Some(w) = layer.window() {
                let span = w.span();
                t.receptive_field = t.receptive_field.map(|rf| rf + (span - 1) * t.stride);
                if w.lookahead {
                    let ahead = (span - 1 - w.back) * t.stride;
                    t.lookahead = t.lookahead.saturating_add(ahead);
                }
                t.first_output += w.delay * t.stride;
                t.stride *= w.stride;
            }
        }
        t
    }

    /// Total number of parameters.
    pub fn params(&self) -> usize {
        self.layers().map(|(_, l)| l.params()).sum()
    }

    /// Bytes of streamed state one key costs.
    pub fn state_bytes_per_key(&self) -> usize {
        self.new_arena().bytes_per_slot()
    }
}

fn layer_detail(layer: &Layer) -> String {
    match layer {
        Layer::Conv(c) => {
            let pad = match c.padding {
                Padding::Causal => "causal",
                Padding::Valid => "valid",
                Padding::Same => "same",
            };
            format!(
                "kernel {}, stride {}, dilation {}, padding {pad}; weight [{}, {}, {}]{}",
                c.kernel,
                c.stride,
                c.dilation,
                c.out_ch,
                c.in_ch,
                c.kernel,
                if c.has_bias() {
                    format!(", bias [{}]", c.out_ch)
                } else {
                    ", no bias".into()
                }
            )
        }
        Layer::Pool(p) => format!("kernel {}, stride {}", p.kernel, p.stride),
        Layer::Linear(l) => format!(
            "weight [{}, {}]{}",
            l.out_features,
            l.in_features,
            if l.has_bias() {
                format!(", bias [{}]", l.out_features)
            } else {
                ", no bias".into()
            }
        ),
        Layer::Activation(_) => String::new(),
        Layer::Recurrent(r) => {
            let mut s = format!(
                "hidden {}, {} layer{}{}{}",
                r.hidden,
                r.num_layers,
                if r.num_layers == 1 { "" } else { "s" },
                if r.bidirectional { ", bidirectional" } else { "" },
                if r.has_bias { "" } else { ", no bias" }
            );
            if let Some(p) = r.proj {
                s.push_str(&format!(", proj {p}"));
            }
            if let CellKind::Rnn(Nonlinearity::Relu) = r.cell {
                s.push_str(", relu");
            }
            s
        }
    }
}

/// The `inspect` report.
pub struct Summary<'a>(pub &'a Model);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        writeln!(f, "model {}", m.path().display())?;
        writeln!(
            f,
            "input {} feature{} -> output {} value{} per emitted step",
            m.input_size(),
            if m.input_size() == 1 { "" } else { "s" },
            m.output_size(),
            if m.output_size() == 1 { "" } else { "s" },
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "  {:<28} {:>13} {:>10} {:>11}  details",
            "layer", "in -> out", "params", "state/key"
        )?;
        for (i, (lc, layer)) in m.layers().enumerate() {
            let state = layer.state_spec(m.width_at(i));
            let bytes = state.floats * 4 + if state.counter { 8 } else { 0 };
            let row = format!(
                "  {:<28} {:>13} {:>10} {:>11}  {}",
                lc.label(),
                format!("{} -> {}", m.width_at(i), m.width_at(i + 1)),
                group_digits(layer.params()),
                if bytes == 0 {
                    "-".to_string()
                } else {
                    format!("{bytes} B")
                },
                layer_detail(layer)
            );
            // Layers without details (activations) would end in spaces.
            writeln!(f, "{}", row.trim_end())?;
        }
        writeln!(f)?;
        let t = m.timing();
        writeln!(f, "parameters       {}", group_digits(m.params()))?;
        match t.receptive_field {
            Some(rf) => writeln!(f, "receptive field  {rf} input steps")?,
            None => writeln!(f, "receptive field  unbounded (recurrent)")?,
        }
        writeln!(
            f,
            "delay            first output at input step {} (0-based){}",
            t.first_output,
            if t.first_output == 0 {
                ", i.e. from the first step"
            } else {
                ""
            }
        )?;
        if t.stride == 1 {
            writeln!(f, "output rate      one output per input step")?;
        } else {
            writeln!(f, "output rate      one output every {} input steps", t.stride)?;
        }
        match m.check_streamable() {
            Ok(()) => writeln!(
                f,
                "streamable       yes (every_step, sequence_end, window); state {} bytes per key",
                m.state_bytes_per_key()
            )?,
            Err(e) => {
                let why = e.to_string();
                let why = why
                    .split(": this model cannot run step by step: ")
                    .last()
                    .unwrap_or(&why);
                writeln!(
                    f,
                    "streamable       no: {why}; use emit = \"sequence_end\" or \"window\""
                )?
            }
        }
        Ok(())
    }
}
