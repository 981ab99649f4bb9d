//! `seqflow inspect MODEL --trace STEPS`: what every recurrent cell computes at each step of
//! one short input sequence: its gates (activated), its cell state (LSTM) and its output.
//! It reads them from the tape of the model's training twin (f64, the formulas the gradient
//! and PyTorch tests hold), so a newcomer can watch a forget gate keep a cell state, or an
//! input gate open on a pulse, with the model's own weights.

use std::fmt;
use std::path::Path;

use super::net::{build, NetLayer};
use super::seq::Seq;
use crate::error::{Error, Result};
use crate::model::config::{CellKind, ModelConfig};
use crate::model::weights::WeightStore;

/// One recurrent cell (a layer and direction of a stack), step by step.
#[derive(Debug, Clone)]
pub struct CellTrace {
    /// `#1 (lstm "lstm"), layer 0, forward`.
    pub label: String,
    /// The cell kind.
    pub kind: CellKind,
    /// Hidden units.
    pub hidden: usize,
    /// Per step: the activated gates (`gates * hidden`, gate-major as PyTorch's rows).
    pub gates: Vec<Vec<f64>>,
    /// LSTM: per step, the cell state after it.
    pub cell: Vec<Vec<f64>>,
    /// Per step, the output after it.
    pub out: Vec<Vec<f64>>,
}

/// The trace of one input sequence through a model.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The model's input rows.
    pub inputs: Vec<Vec<f64>>,
    /// Every recurrent cell, in model order.
    pub cells: Vec<CellTrace>,
}

/// Parses `STEPS`: steps separated by spaces or semicolons, features by commas
/// (`"1 0 0"` for one feature, `"1,0.5; 0,0"` for two).
pub fn parse_steps(text: &str, input_size: usize) -> Result<Vec<Vec<f64>>> {
    let err = |msg: String| Error::Runtime(format!("--trace: {msg}"));
    let steps: Vec<Vec<f64>> = text
        .split([' ', ';'])
        .filter(|s| !s.trim().is_empty())
        .enumerate()
        .map(|(i, s)| {
            s.split(',')
                .map(|v| {
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| err(format!("step {i}: `{v}` is not a number")))
                })
                .collect::<Result<Vec<f64>>>()
        })
        .collect::<Result<_>>()?;
    if steps.is_empty() {
        return Err(err("no step given (e.g. --trace \"1 0 0\")".into()));
    }
    if let Some((i, s)) = steps.iter().enumerate().find(|(_, s)| s.len() != input_size) {
        return Err(err(format!(
            "step {i} has {} value(s); the model takes {input_size} feature(s) per step (commas between them)",
            s.len()
        )));
    }
    if steps.len() > 10_000 {
        return Err(err(format!(
            "{} steps; a trace is for short sequences (at most 10,000)",
            steps.len()
        )));
    }
    Ok(steps)
}

/// Runs `steps` through the model at `path` and reads every recurrent cell's tape.
pub fn trace(path: &Path, steps: &[Vec<f64>]) -> Result<Trace> {
    let config = ModelConfig::load(path)?;
    let weights = config.weights.clone().ok_or_else(|| {
        Error::Runtime(format!(
            "{}: --trace needs the model's weights (`weights = \"FILE.safetensors\"`)",
            path.display()
        ))
    })?;
    let store = WeightStore::load(&weights)?;
    let (_, net, values) = build(config, store)?;
    let mut x = Seq::zeros(&[steps.len()], net.input_size);
    for (t, s) in steps.iter().enumerate() {
        x.row_mut(t, 0).copy_from_slice(s);
    }
    let tape = net.forward(&values, x, net.layers.len(), None);
    let mut cells = Vec::new();
    for (i, layer) in net.layers.iter().enumerate() {
        let (NetLayer::Rec(spec), Some(rt)) = (layer, tape.recurrent(i)) else {
            continue;
        };
        let (h, g) = (spec.hidden, spec.cell.gates());
        for (ci, ct) in rt.cells().iter().enumerate() {
            let (k, d) = (ci / spec.dirs, ci % spec.dirs);
            let mut c = CellTrace {
                label: format!(
                    "{}, layer {k}{}",
                    net.labels[i],
                    match (spec.dirs, d) {
                        (1, _) => "",
                        (_, 0) => ", forward",
                        _ => ", reverse",
                    }
                ),
                kind: spec.cell,
                hidden: h,
                gates: Vec::new(),
                cell: Vec::new(),
                out: Vec::new(),
            };
            for t in 0..steps.len() {
                let gates = ct.gates()[t * g * h..(t + 1) * g * h].to_vec();
                let out = match spec.cell {
                    CellKind::Rnn(_) => gates.clone(),
                    CellKind::Lstm => {
                        let cell = &ct.cell()[t * h..(t + 1) * h];
                        c.cell.push(cell.to_vec());
                        (0..h).map(|u| gates[3 * h + u] * cell[u].tanh()).collect()
                    }
                    CellKind::Gru => {
                        let prev = &ct.hprev()[t * spec.hout..(t + 1) * spec.hout];
                        (0..h)
                            .map(|u| (1.0 - gates[h + u]) * gates[2 * h + u] + gates[h + u] * prev[u])
                            .collect()
                    }
                };
                c.gates.push(gates);
                c.out.push(out);
            }
            cells.push(c);
        }
    }
    Ok(Trace {
        inputs: steps.to_vec(),
        cells,
    })
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cells.is_empty() {
            return writeln!(f, "trace: the model has no recurrent layer");
        }
        for c in &self.cells {
            let names: &[&str] = match c.kind {
                CellKind::Rnn(_) => &[],
                CellKind::Lstm => &["i", "f", "g", "o"],
                CellKind::Gru => &["r", "z", "n"],
            };
            let state = if c.kind == CellKind::Lstm {
                " c (cell state),"
            } else {
                ""
            };
            writeln!(
                f,
                "trace of {}: activated gates,{state} h (output) after each step",
                c.label
            )?;
            write!(f, "  {:>4}  {:<10}", "step", "input")?;
            if c.hidden > 1 {
                write!(f, " {:>4}", "unit")?;
            }
            for n in names {
                write!(f, " {n:>9}")?;
            }
            if c.kind == CellKind::Lstm {
                write!(f, " {:>9}", "c")?;
            }
            writeln!(f, " {:>9}", "h")?;
            for (t, x) in self.inputs.iter().enumerate() {
                let input: Vec<String> = x.iter().map(|v| format!("{v}")).collect();
                for u in 0..c.hidden {
                    let shown = if u == 0 { input.join(",") } else { String::new() };
                    write!(
                        f,
                        "  {:>4}  {shown:<10}",
                        if u == 0 { t.to_string() } else { String::new() }
                    )?;
                    if c.hidden > 1 {
                        write!(f, " {u:>4}")?;
                    }
                    for gi in 0..names.len() {
                        write!(f, " {:>9.6}", c.gates[t][gi * c.hidden + u])?;
                    }
                    if let Some(cell) = c.cell.get(t) {
                        write!(f, " {:>9.6}", cell[u])?;
                    }
                    writeln!(f, " {:>9.6}", c.out[t][u])?;
                }
            }
        }
        Ok(())
    }
}
