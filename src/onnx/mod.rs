//! ONNX import: a graph exported by `torch.onnx.export` (either exporter), Keras converters
//! or written by hand, turned into a seqflow layer stack with PyTorch-named weights.
//!
//! How: the graph's one data input is followed node by node to the graph output it reaches.
//! Each tensor on that path carries the role of each of its axes (batch, time, features,
//! RNN directions), so the glue exporters put around layers (`Transpose`, `Squeeze`,
//! `Unsqueeze`, `Reshape` of `[T, B, D, H]` to `[T, B, D*H]`, `Identity`, `Dropout`, `Cast`)
//! folds into nothing, and layers check that their input is laid out as they read it. The
//! input's batch and time axes are found by the first layer that reads them (an RNN reads
//! `[T, B, F]`, a convolution `[B, F, T]`). Side computations (pad amounts, zero initial
//! states built from the input's shape) are folded by [`consts`]. Anything else on the
//! path, a branch, or a recurrence started from a non-zero state is refused, naming the node.
//!
//! Weights get PyTorch's names: the module path comes from the node (TorchScript exports
//! name nodes `/encoder/lstm/LSTM_1`; dynamo exports record `pkg.torch.onnx.name_scopes`),
//! consecutive recurrent nodes of one module become its layers `_l0`, `_l1`, ..., and the
//! gates are reordered (ONNX LSTM `i o f c` -> PyTorch `i f g o`, GRU `z r h` -> `r z n`;
//! ONNX `B` holds both biases).

pub mod consts;
pub mod proto;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};
use consts::{attr, attr_i, attr_ints, attr_s, Value};
use proto::{GraphProto, ModelProto, NodeProto, TensorProto};

/// A tensor of the imported weights: shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Shape (PyTorch's).
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// A model read from an ONNX file.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The model file's `[[layers]]` (and `input_size`), without a `weights` line.
    pub layers_toml: String,
    /// The weights, PyTorch names.
    pub tensors: Vec<(String, Tensor)>,
    /// What the import chose, for the user: which output, which input layout.
    pub notes: Vec<String>,
}

impl Imported {
    /// The whole model file, naming `weights` (relative to the file).
    pub fn model_toml(&self, source: &Path, weights: &str) -> String {
        format!(
            "# Imported from {} by `seqflow import`.\nweights = \"{weights}\"\n{}",
            source.display(),
            self.layers_toml
        )
    }
}

/// Reads and converts an ONNX file.
pub fn import(path: &Path) -> Result<Imported> {
    let bytes = crate::outfiles::read_regular(path)?;
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| Error::Unsupported {
        path: path.to_path_buf(),
        msg: format!("not an ONNX model (protobuf: {e})"),
    })?;
    let graph = model.graph.as_ref().ok_or_else(|| Error::Unsupported {
        path: path.to_path_buf(),
        msg: "the ONNX file holds no graph".into(),
    })?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version);
    // A malformed graph must give a message, never take the process down: the walker
    // checks what it reads, and anything it missed is caught here.
    crate::guard::catch(|| Walker::new(path, graph, opset)?.run()).unwrap_or_else(|panic| {
        Err(Error::Unsupported {
            path: path.to_path_buf(),
            msg: format!("a malformed graph ({panic})"),
        })
    })
}

/// The role of one axis of a tensor on the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ax {
    /// Batch (keys).
    B,
    /// Time (steps).
    T,
    /// Features (a step's values).
    F,
    /// An RNN's directions.
    D,
    /// Batch and time flattened into one axis (a `[B*T, F]` reshape), in this order.
    N(bool),
    /// An axis of size 1 added by `Unsqueeze`.
    One,
    /// One of the input's axes whose role (batch or time) is not known yet.
    U(u8),
}

/// One direction of one recurrent layer: `(weight_ih, weight_hh, bias_ih, bias_hh)`, in
/// PyTorch's gate order.
type Direction = (Tensor, Tensor, Option<Tensor>, Option<Tensor>);

/// What a node on the data path makes: the tensor, the roles of its axes, and its width
/// (values per step along the features axis) when known.
type Flow = (String, Vec<Ax>, Option<usize>);

/// A layer of the stack being built.
#[derive(Debug, Clone)]
enum Layer {
    Conv {
        module: Option<String>,
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        dilation: usize,
        padding: &'static str,
    },
    Pool {
        max: bool,
        kernel: usize,
        stride: usize,
    },
    Linear {
        module: Option<String>,
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Act(&'static str),
    Rnn {
        cell: &'static str,
        relu: bool,
        /// GRU with ONNX's `linear_before_reset = 0`.
        reset_before: bool,
        /// `direction = "reverse"`.
        reverse: bool,
        module: Option<String>,
        hidden: usize,
        bidirectional: bool,
        /// Per layer: its directions.
        layers: Vec<Vec<Direction>>,
    },
}

struct Walker<'g> {
    path: PathBuf,
    graph: &'g GraphProto,
    opset: i64,
    /// Constants known so far: initializers, then folded nodes.
    consts: HashMap<String, Value>,
    /// Which node produces each tensor.
    producer: HashMap<&'g str, usize>,
    /// Which nodes read each tensor.
    consumers: HashMap<&'g str, Vec<usize>>,
    layers: Vec<Layer>,
    notes: Vec<String>,
    /// A `Pad` waiting for the convolution it belongs to: (node name, time begin, end).
    pad: Option<(String, usize, usize)>,
    /// The input's axes, resolved as layers read them.
    input_roles: [Option<Ax>; 3],
    /// Outputs of recurrent nodes other than Y (final states).
    state_outputs: Vec<String>,
    /// Ranks of the tensors on the data path (for `Shape` chains that read them).
    ranks: HashMap<String, usize>,
    /// How deep the folding of side chains has gone.
    depth: usize,
    /// External data files, read once each.
    external: HashMap<PathBuf, Vec<u8>>,
}

/// How many nodes back a side chain is followed.
const MAX_DEPTH: usize = 64;

impl<'g> Walker<'g> {
    fn new(path: &Path, graph: &'g GraphProto, opset: i64) -> Result<Walker<'g>> {
        let mut w = Walker {
            path: path.to_path_buf(),
            graph,
            opset,
            consts: HashMap::new(),
            producer: HashMap::new(),
            consumers: HashMap::new(),
            layers: Vec::new(),
            notes: Vec::new(),
            pad: None,
            input_roles: [None; 3],
            state_outputs: Vec::new(),
            ranks: HashMap::new(),
            depth: 0,
            external: HashMap::new(),
        };
        for t in &graph.initializer {
            let raw = w.raw_bytes(t)?;
            if let Some(v) = consts::decode(t, &raw) {
                w.consts.insert(t.name.clone(), v);
            }
        }
        for (i, n) in graph.node.iter().enumerate() {
            for o in &n.output {
                w.producer.insert(o.as_str(), i);
            }
            for inp in n.input.iter().filter(|s| !s.is_empty()) {
                w.consumers.entry(inp.as_str()).or_default().push(i);
            }
        }
        Ok(w)
    }

    fn refuse(&self, msg: impl Into<String>) -> Error {
        Error::Unsupported {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    fn refuse_node(&self, n: &NodeProto, why: impl std::fmt::Display) -> Error {
        let name = if n.name.is_empty() {
            n.output.first().cloned().unwrap_or_default()
        } else {
            n.name.clone()
        };
        self.refuse(format!("node `{name}` ({}): {why}", n.op_type))
    }

    /// A tensor's bytes: inline `raw_data`, or its external file (relative to the model).
    fn raw_bytes(&mut self, t: &TensorProto) -> Result<Vec<u8>> {
        if t.data_location != 1 {
            return Ok(t.raw_data.clone());
        }
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.clone())
        };
        let loc = get("location")
            .ok_or_else(|| self.refuse(format!("tensor `{}` is external but names no location", t.name)))?;
        let file = self.path.parent().unwrap_or(Path::new("")).join(&loc);
        if !self.external.contains_key(&file) {
            let bytes = crate::outfiles::read_regular(&file)?;
            self.external.insert(file.clone(), bytes);
        }
        let bytes = &self.external[&file];
        let offset = get("offset").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
        let len = get("length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(bytes.len().saturating_sub(offset));
        bytes
            .get(offset..offset.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                self.refuse(format!(
                    "tensor `{}`: {} holds {} bytes, not {offset}+{len}",
                    t.name,
                    file.display(),
                    bytes.len()
                ))
            })
    }

    /// `f`, one level deeper into a side chain, or `bail` past [`MAX_DEPTH`]: exporters'
    /// side chains are short, and a deep (or cyclic) one is not followed.
    fn bounded<T>(&mut self, bail: T, f: impl FnOnce(&mut Self) -> T) -> T {
        if self.depth >= MAX_DEPTH {
            return bail;
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    /// The constant value of tensor `name`, folding the nodes that make it if they can be.
    fn constant(&mut self, name: &str) -> Option<Value> {
        self.bounded(None, |w| w.constant_at(name))
    }

    fn constant_at(&mut self, name: &str) -> Option<Value> {
        if name.is_empty() {
            return None;
        }
        if let Some(v) = self.consts.get(name) {
            return Some(v.clone());
        }
        let &i = self.producer.get(name)?;
        let n = &self.graph.node[i];
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            self.constant(inp);
        }
        let v = consts::eval(n, &self.consts)?;
        // Single-output ops only.
        self.consts.insert(name.to_string(), v.clone());
        Some(v)
    }

    /// Whether tensor `name` is all zeros whatever the input's shape: a zero constant, a
    /// `ConstantOfShape` of 0, or a zero reshaped, sliced, expanded, cast.
    fn is_zero(&mut self, name: &str) -> bool {
        self.bounded(false, |w| w.is_zero_at(name))
    }

    fn is_zero_at(&mut self, name: &str) -> bool {
        if let Some(v) = self.constant(name) {
            return v.all_zero();
        }
        let Some(&i) = self.producer.get(name) else {
            return false;
        };
        let n = &self.graph.node[i];
        match n.op_type.as_str() {
            "ConstantOfShape" => attr(n, "value")
                .and_then(|a| a.t.as_ref())
                .and_then(|t| consts::decode(t, &t.raw_data))
                .is_none_or(|v| v.all_zero()),
            "Slice" | "Expand" | "Unsqueeze" | "Squeeze" | "Reshape" | "Identity" | "Cast" | "Transpose"
            | "Tile" => {
                let first = n.input.first().cloned().unwrap_or_default();
                self.is_zero(&first)
            }
            _ => false,
        }
    }

    /// A float constant input of node `n` as a tensor, or a refusal naming it.
    fn weight(&mut self, n: &NodeProto, i: usize, what: &str) -> Result<Tensor> {
        let name = n.input.get(i).cloned().unwrap_or_default();
        match self.constant(&name) {
            Some(v) => Ok(Tensor {
                shape: v.dims.clone(),
                data: v.floats().iter().map(|&x| x as f32).collect(),
            }),
            None => Err(self.refuse_node(n, format!("its {what} (`{name}`) is not a constant"))),
        }
    }

    /// The module path of a node: dynamo's name scopes, or a TorchScript node name
    /// `/encoder/lstm/LSTM_1`; `None` for hand-named nodes. `Some("")`: the top level.
    fn module_of(n: &NodeProto) -> Option<String> {
        if let Some(p) = n
            .metadata_props
            .iter()
            .find(|p| p.key == "pkg.torch.onnx.name_scopes")
        {
            let parts: Vec<String> = p
                .value
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|s| s.trim().trim_matches('\'').trim_matches('"').to_string())
                .collect();
            // Each entry is a whole dotted path (`['', 'conv', 'conv.conv', 'conv1d']`): the
            // module is the one before the operator's own name.
            if parts.len() >= 2 {
                return Some(parts[parts.len() - 2].clone());
            }
        }
        if n.name.starts_with('/') {
            let parts: Vec<&str> = n.name.split('/').collect();
            return Some(parts[1..parts.len() - 1].join("."));
        }
        None
    }

    /// Whether node `i` only feeds shape computations: `Shape`/`Size`, or glue whose outputs
    /// reach nothing but those (TorchScript exports transpose the data once more just to
    /// read its batch size for the zero initial states).
    fn shape_only(&self, i: usize, depth: usize) -> bool {
        let n = &self.graph.node[i];
        if matches!(n.op_type.as_str(), "Shape" | "Size") {
            return true;
        }
        if depth > 8
            || !matches!(
                n.op_type.as_str(),
                "Transpose" | "Reshape" | "Squeeze" | "Unsqueeze" | "Identity" | "Cast"
            )
        {
            return false;
        }
        n.output.iter().all(|o| {
            !self.graph.output.iter().any(|g| &g.name == o)
                && self
                    .consumers
                    .get(o.as_str())
                    .is_some_and(|us| us.iter().all(|&u| self.shape_only(u, depth + 1)))
        })
    }

    /// Makes position `p` of `axes` have role `want`, resolving an input axis if needed.
    fn expect(&mut self, n: &NodeProto, axes: &mut [Ax], p: usize, want: Ax) -> Result<()> {
        match axes.get(p).copied() {
            Some(a) if a == want => Ok(()),
            Some(Ax::U(k)) if matches!(want, Ax::B | Ax::T) => {
                let taken = self.input_roles.iter().flatten().any(|r| *r == want);
                if taken {
                    return Err(self.refuse_node(
                        n,
                        format!("reads the input's axes in an order it cannot have ({axes:?})"),
                    ));
                }
                self.input_roles[k as usize] = Some(want);
                for a in axes.iter_mut() {
                    if *a == Ax::U(k) {
                        *a = want;
                    }
                }
                Ok(())
            }
            got => Err(self.refuse_node(
                n,
                format!(
                    "expects {} at axis {p}, but the data there is {} (layout {axes:?})",
                    role_name(want),
                    got.map_or("nothing".to_string(), |g| role_name(g).to_string())
                ),
            )),
        }
    }

    fn run(mut self) -> Result<Imported> {
        let g = self.graph;
        let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<_> = g
            .input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(self.refuse(format!(
                "the graph has {} data inputs ({}); seqflow runs graphs of one input, [batch, time, features] or [time, batch, features]",
                inputs.len(),
                inputs.iter().map(|i| format!("`{}`", i.name)).collect::<Vec<_>>().join(", ")
            )));
        };
        let dims: Vec<(i64, String)> = input
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .and_then(|t| t.shape.as_ref())
            .map(|s| s.dim.iter().map(|d| (d.dim_value, d.dim_param.clone())).collect())
            .unwrap_or_default();
        if dims.len() != 3 {
            return Err(self.refuse(format!(
                "input `{}` has {} axes; seqflow reads sequences as [batch, time, features] or [time, batch, features]",
                input.name,
                dims.len()
            )));
        }
        let mut axes = vec![Ax::U(0), Ax::U(1), Ax::U(2)];
        // The feature axis is the one layers read as features; sizes come with it.
        let mut width: Option<usize> = None;
        let mut cur = input.name.clone();
        self.ranks.insert(cur.clone(), 3);
        let mut steps = 0;
        loop {
            steps += 1;
            if steps > g.node.len() + 1 {
                return Err(self.refuse("the data path loops"));
            }
            let users: Vec<usize> = self
                .consumers
                .get(cur.as_str())
                .map(|v| v.iter().copied().filter(|&i| !self.shape_only(i, 0)).collect())
                .unwrap_or_default();
            let is_output = g.output.iter().any(|o| o.name == cur);
            match users.as_slice() {
                [] if is_output => break,
                [] => {
                    return Err(self.refuse(format!(
                        "tensor `{cur}` on the data path is neither read nor a graph output"
                    )))
                }
                [one] => {
                    if is_output {
                        self.notes.push(format!(
                            "graph output `{cur}` is an intermediate result and is not emitted"
                        ));
                    }
                    let n = &g.node[*one];
                    let (next, new_axes, new_width) = self.step(n, &cur, axes, width)?;
                    self.ranks.insert(next.clone(), new_axes.len());
                    cur = next;
                    axes = new_axes;
                    width = new_width;
                }
                many => {
                    let names: Vec<String> = many
                        .iter()
                        .map(|&i| format!("`{}` ({})", g.node[i].name, g.node[i].op_type))
                        .collect();
                    return Err(self.refuse(format!(
                        "tensor `{cur}` feeds {} nodes ({}): a graph with branches is not a layer stack",
                        many.len(),
                        names.join(", ")
                    )));
                }
            }
        }
        if let Some((name, ..)) = &self.pad {
            return Err(self.refuse(format!("node `{name}` (Pad): no convolution follows it")));
        }
        if self.layers.is_empty() {
            return Err(
                self.refuse("the graph has no layer seqflow runs (no LSTM, GRU, RNN, Conv, MatMul or Gemm)")
            );
        }
        // The output: [*, *, F] in some order of batch and time.
        if axes.len() != 3
            || !axes.contains(&Ax::F)
            || axes.iter().any(|a| matches!(a, Ax::D | Ax::N(_) | Ax::One))
        {
            return Err(self.refuse(format!(
                "output `{cur}` has layout {axes:?}; seqflow emits [batch, time, features] or [time, batch, features]"
            )));
        }
        // Input axes no layer named: torch's convention, batch first.
        let f_at = self.input_roles.iter().position(|r| *r == Some(Ax::F));
        let unresolved: Vec<usize> = (0..3).filter(|&k| self.input_roles[k].is_none()).collect();
        if !unresolved.is_empty() {
            let named = |k: usize| dims[k].1.to_lowercase();
            let looks_time = |k: usize| {
                ["time", "seq", "step", "len", "t"]
                    .iter()
                    .any(|w| named(k).contains(w))
            };
            let mut order: Vec<Ax> = vec![Ax::B, Ax::T];
            if unresolved.len() == 2 && looks_time(unresolved[0]) && !looks_time(unresolved[1]) {
                order = vec![Ax::T, Ax::B];
            }
            let taken: Vec<Ax> = self.input_roles.iter().flatten().copied().collect();
            let mut free = order.into_iter().filter(|r| !taken.contains(r));
            for k in unresolved {
                if f_at.is_none() && Some(k) == Some(2) {
                    self.input_roles[k] = Some(Ax::F);
                    continue;
                }
                self.input_roles[k] = free.next();
            }
            self.notes.push("no layer fixes which input axis is batch and which is time; read as batch first (PyTorch's convention)".into());
        }
        let layout = |roles: &[Option<Ax>]| -> String {
            roles
                .iter()
                .map(|r| match r {
                    Some(Ax::B) => "batch",
                    Some(Ax::T) => "time",
                    Some(Ax::F) => "features",
                    _ => "?",
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.notes.insert(
            0,
            format!("input `{}` read as [{}]", input.name, layout(&self.input_roles)),
        );
        self.notes
            .insert(1, format!("per-step output: graph output `{cur}`"));
        let others: Vec<String> = g
            .output
            .iter()
            .filter(|o| o.name != cur)
            .map(|o| format!("`{}`", o.name))
            .collect();
        if !others.is_empty() {
            self.notes.insert(
                2,
                format!(
                    "not emitted: {} (final states and other outputs)",
                    others.join(", ")
                ),
            );
        }
        let input_size = width_of_input(&self.input_roles, &dims)
            .ok_or_else(|| self.refuse(format!("input `{}` has no fixed feature size", input.name)))?;
        self.finish(input_size)
    }

    /// One node on the data path: the tensor it makes, that tensor's axes, and its width.
    fn step(&mut self, n: &'g NodeProto, cur: &str, mut axes: Vec<Ax>, width: Option<usize>) -> Result<Flow> {
        let out0 = out_of(n);
        if n.input.first().map(String::as_str) != Some(cur) && !matches!(n.op_type.as_str(), "Add" | "Mul") {
            return Err(self.refuse_node(n, "reads the data as other than its first input"));
        }
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            return Err(self.refuse_node(n, format!("operator domain `{}` is not ONNX's", n.domain)));
        }
        let rank = axes.len();
        let norm = |a: i64, r: usize| -> usize { (if a < 0 { a + r as i64 } else { a }).max(0) as usize };
        match n.op_type.as_str() {
            "Identity" | "Dropout" => Ok((out0, axes, width)),
            "Cast" => {
                let to = attr_i(n, "to", 1) as i32;
                if !matches!(to, proto::dtype::FLOAT | proto::dtype::DOUBLE | proto::dtype::FLOAT16) {
                    return Err(self.refuse_node(n, "casts the data to a non-float type"));
                }
                Ok((out0, axes, width))
            }
            "Transpose" => {
                self.no_pending_pad(n)?;
                let perm = attr_ints(n, "perm");
                let perm: Vec<usize> = if perm.is_empty() {
                    (0..rank).rev().collect()
                } else {
                    perm.iter().map(|&p| norm(p, rank)).collect()
                };
                if perm.len() != rank || perm.iter().any(|&p| p >= rank) {
                    return Err(self.refuse_node(n, "its permutation does not fit the data's rank"));
                }
                Ok((out0, perm.iter().map(|&p| axes[p]).collect(), width))
            }
            "Squeeze" | "Unsqueeze" => {
                let ax = match n.input.get(1).filter(|s| !s.is_empty()) {
                    Some(name) => {
                        let name = name.clone();
                        self.constant(&name)
                            .map(|v| v.ints())
                            .ok_or_else(|| self.refuse_node(n, "its axes are not a constant"))?
                    }
                    None => attr_ints(n, "axes"),
                };
                if n.op_type == "Squeeze" {
                    let drop: Vec<usize> = ax.iter().map(|&a| norm(a, rank)).collect();
                    for &d in &drop {
                        let ok = matches!(axes.get(d), Some(Ax::One))
                            || (matches!(axes.get(d), Some(Ax::D)) && self.dirs_of_last() == Some(1));
                        if !ok {
                            return Err(self.refuse_node(n, format!("removes axis {d} ({:?}), which is not of size 1", axes.get(d))));
                        }
                    }
                    let kept = axes.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, a)| *a).collect();
                    Ok((out0, kept, width))
                } else {
                    let new_rank = rank + ax.len();
                    let mut at: Vec<usize> = ax.iter().map(|&a| norm(a, new_rank)).collect();
                    at.sort_unstable();
                    for a in at {
                        axes.insert(a.min(axes.len()), Ax::One);
                    }
                    Ok((out0, axes, width))
                }
            }
            "Reshape" | "Flatten" => self.reshape(n, out0, axes, width),
            "LSTM" | "GRU" | "RNN" => self.recurrent(n, axes, width),
            "Pad" => {
                self.no_pending_pad(n)?;
                if axes.len() != 3 {
                    return Err(self.refuse_node(n, "pads other than a convolution's [batch, channels, time]"));
                }
                self.channels_first(n, &mut axes)?;
                if n.input.get(3).is_some_and(|s| !s.is_empty()) {
                    return Err(self.refuse_node(n, "an `axes` input (pad the time axis through `pads` alone)"));
                }
                if attr(n, "value").is_some_and(|a| a.f != 0.0) {
                    return Err(self.refuse_node(n, "pads with a value other than 0"));
                }
                let mode = attr_s(n, "mode", "constant");
                let pads = match n.input.get(1).filter(|s| !s.is_empty()) {
                    Some(name) => {
                        let name = name.clone();
                        self.constant(&name).map(|v| v.ints())
                    }
                    None => Some(attr_ints(n, "pads")),
                }
                .ok_or_else(|| self.refuse_node(n, "its pads are not a constant"))?;
                if mode != "constant" {
                    return Err(self.refuse_node(n, format!("mode `{mode}`: only zero padding folds into a convolution")));
                }
                if let Some(v) = n.input.get(2).filter(|s| !s.is_empty()) {
                    let v = v.clone();
                    if !self.constant(&v).is_some_and(|c| c.all_zero()) {
                        return Err(self.refuse_node(n, "pads with a value other than 0"));
                    }
                }
                if pads.len() != 2 * rank {
                    return Err(self.refuse_node(n, "its pads do not fit the data's rank"));
                }
                // Only the last axis (time, in a convolution's [B, C, T]) may be padded.
                for i in 0..rank {
                    if i != rank - 1 && (pads[i] != 0 || pads[rank + i] != 0) {
                        return Err(self.refuse_node(n, format!("pads axis {i}, not only time")));
                    }
                }
                if pads[rank - 1] < 0 || pads[2 * rank - 1] < 0 {
                    return Err(self.refuse_node(n, "negative padding (cropping)"));
                }
                self.pad = Some((n.name.clone(), pads[rank - 1] as usize, pads[2 * rank - 1] as usize));
                Ok((out0, axes, width))
            }
            "Conv" => self.conv(n, axes, width),
            "MaxPool" | "AveragePool" => self.pool(n, axes, width),
            "MatMul" | "Gemm" => self.linear(n, axes, width),
            "Add" => self.add(n, cur, axes, width),
            "Relu" | "Tanh" | "Sigmoid" => {
                self.no_pending_pad(n)?;
                self.layers.push(Layer::Act(match n.op_type.as_str() {
                    "Relu" => "relu",
                    "Tanh" => "tanh",
                    _ => "sigmoid",
                }));
                Ok((out0, axes, width))
            }
            "Softmax" => {
                self.no_pending_pad(n)?;
                let axis = norm(attr_i(n, "axis", if self.opset >= 13 { -1 } else { 1 }), rank);
                if self.opset < 13 && axis != rank - 1 {
                    return Err(self.refuse_node(n, "softmax over more than the last axis (opset < 13 flattens)"));
                }
                let mut a = axes.clone();
                if a.get(axis).copied() != Some(Ax::F) {
                    if let Some(Ax::U(_)) = a.get(axis) {
                        self.mark_features(&mut a, axis);
                    } else {
                        return Err(self.refuse_node(n, "softmax over another axis than the features"));
                    }
                }
                self.layers.push(Layer::Act("softmax"));
                Ok((out0, a, width))
            }
            other => Err(self.refuse_node(
                n,
                format!("`{other}` on the data path has no seqflow layer (supported: LSTM, GRU, RNN, Conv, MaxPool, AveragePool, Gemm, MatMul + Add, Relu, Tanh, Sigmoid, Softmax, and Transpose/Squeeze/Unsqueeze/Reshape glue)"),
            )),
        }
    }

    fn no_pending_pad(&self, n: &NodeProto) -> Result<()> {
        match &self.pad {
            Some((p, ..)) => Err(self.refuse_node(
                n,
                format!("follows Pad `{p}`, which only folds into a convolution"),
            )),
            None => Ok(()),
        }
    }

    fn dirs_of_last(&self) -> Option<usize> {
        match self.layers.last() {
            Some(Layer::Rnn { bidirectional, .. }) => Some(if *bidirectional { 2 } else { 1 }),
            _ => None,
        }
    }

    /// Marks axis `p` (an unresolved input axis) as the features.
    fn mark_features(&mut self, axes: &mut [Ax], p: usize) {
        if let Ax::U(k) = axes[p] {
            self.input_roles[k as usize] = Some(Ax::F);
            for a in axes.iter_mut() {
                if *a == Ax::U(k) {
                    *a = Ax::F;
                }
            }
        }
    }

    /// A convolution's or pooling's layout, `[batch, features, time]`.
    fn channels_first(&mut self, n: &NodeProto, axes: &mut [Ax]) -> Result<()> {
        self.expect(n, axes, 0, Ax::B)?;
        self.expect(n, axes, 2, Ax::T)?;
        if axes[1] != Ax::F {
            self.mark_features(axes, 1);
        }
        Ok(())
    }

    /// Makes the last axis the features (linear layers, softmax, activations' consumers).
    fn features_last(&mut self, n: &NodeProto, axes: &mut [Ax]) -> Result<()> {
        let last = axes.len() - 1;
        match axes[last] {
            Ax::F => Ok(()),
            Ax::U(_) => {
                self.mark_features(axes, last);
                Ok(())
            }
            other => Err(self.refuse_node(
                n,
                format!(
                    "reads features from the last axis, which holds {}",
                    role_name(other)
                ),
            )),
        }
    }

    fn reshape(&mut self, n: &NodeProto, out0: String, axes: Vec<Ax>, width: Option<usize>) -> Result<Flow> {
        let rank = axes.len();
        let target = if n.op_type == "Flatten" {
            // Only Flatten(axis = rank - 1), [X, Y, F] -> [X*Y, F], keeps the steps apart.
            if attr_i(n, "axis", 1) != rank as i64 - 1 && attr_i(n, "axis", 1) != -1 {
                return Err(self.refuse_node(n, "flattens features together with batch or time"));
            }
            Some(2)
        } else {
            let name = n.input.get(1).cloned().unwrap_or_default();
            self.shape_len(&name)
        };
        let Some(target) = target else {
            return Err(self.refuse_node(n, "its target shape's length cannot be worked out"));
        };
        let err = |w: &Self, what: &str| {
            Err(w.refuse_node(n, format!("reshapes {axes:?} to {target} axes: {what}")))
        };
        match (rank, target) {
            // [.., D, H] -> [.., D*H]: a bidirectional RNN's halves side by side.
            (4, 3) => {
                if axes[2] == Ax::D && axes[3] == Ax::F {
                    let dirs = self.dirs_of_last().unwrap_or(1);
                    Ok((
                        out0,
                        axes[..2].iter().copied().chain([Ax::F]).collect(),
                        width.map(|w| w * dirs),
                    ))
                } else {
                    err(self, "only an RNN output's directions merge into its features")
                }
            }
            // [X, Y, F] -> [X*Y, F].
            (3, 2) => {
                let mut a = axes.clone();
                self.features_last(n, &mut a)?;
                match (a[0], a[1]) {
                    (Ax::B, Ax::T) => Ok((out0, vec![Ax::N(true), Ax::F], width)),
                    (Ax::T, Ax::B) => Ok((out0, vec![Ax::N(false), Ax::F], width)),
                    (Ax::U(_), _) | (_, Ax::U(_)) => {
                        // Flattening before any layer named them: batch first.
                        let (x, y) = (a[0], a[1]);
                        let mut b = a.clone();
                        if let Ax::U(_) = x {
                            self.expect(n, &mut b, 0, Ax::B)?;
                        }
                        if let Ax::U(_) = y {
                            self.expect(n, &mut b, 1, Ax::T)?;
                        }
                        Ok((out0, vec![Ax::N(b[0] == Ax::B), Ax::F], width))
                    }
                    _ => err(self, "only batch and time flatten together"),
                }
            }
            (2, 3) => match axes[0] {
                Ax::N(batch_first) if axes[1] == Ax::F => Ok((
                    out0,
                    if batch_first {
                        vec![Ax::B, Ax::T, Ax::F]
                    } else {
                        vec![Ax::T, Ax::B, Ax::F]
                    },
                    width,
                )),
                _ => err(self, "only a flattened [batch*time, features] unflattens"),
            },
            (r, t) if r == t => {
                // Same rank: allowed when the features stay whole in place (`[0, 0, -1]`).
                let name = n.input.get(1).cloned().unwrap_or_default();
                match self.constant(&name).map(|v| v.ints()) {
                    Some(s) if s.iter().take(r - 1).all(|&d| d == 0) => Ok((out0, axes, width)),
                    _ => err(self, "a reshape of the same rank that is not [0, .., 0, -1]"),
                }
            }
            _ => err(self, "not one of the layouts seqflow folds"),
        }
    }

    /// The length of a 1-D shape tensor: constant, or assembled by `Concat` from pieces of
    /// known length (slices of a `Shape`, unsqueezed scalars, ...).
    fn shape_len(&mut self, name: &str) -> Option<usize> {
        self.bounded(None, |w| w.shape_len_at(name))
    }

    fn shape_len_at(&mut self, name: &str) -> Option<usize> {
        if let Some(v) = self.constant(name) {
            return Some(v.len());
        }
        let &i = self.producer.get(name)?;
        let n = &self.graph.node[i];
        match n.op_type.as_str() {
            "Concat" => {
                let inputs = n.input.clone();
                inputs.iter().map(|x| self.shape_len(x)).sum()
            }
            "Unsqueeze" => Some(1),
            "Cast" | "Identity" => {
                let x = n.input.first().cloned()?;
                self.shape_len(&x)
            }
            "Slice" => {
                let (s, e) = (n.input.get(1).cloned()?, n.input.get(2).cloned()?);
                let (s, e) = (self.constant(&s)?.ints(), self.constant(&e)?.ints());
                let (s, e) = (*s.first()?, *e.first()?);
                let src = n.input.first().cloned()?;
                let len = self.shape_len(&src).map(|l| l as i64);
                let fix = |x: i64| match (x < 0, len) {
                    (true, Some(l)) => Some(x + l),
                    (true, None) => None,
                    (false, Some(l)) => Some(x.min(l)),
                    (false, None) => Some(x),
                };
                Some((fix(e)? - fix(s)?).max(0) as usize)
            }
            "Shape" => {
                // Of a data tensor: its rank, cut by the start/end attributes.
                let rank = *self.ranks.get(n.input.first()?.as_str())? as i64;
                let fix = |x: i64| if x < 0 { (x + rank).max(0) } else { x.min(rank) };
                let (s, e) = (fix(attr_i(n, "start", 0)), fix(attr_i(n, "end", rank)));
                Some((e - s).max(0) as usize)
            }
            "Reshape" => {
                let s = n.input.get(1).cloned()?;
                let dims = self.constant(&s)?.ints();
                match dims.as_slice() {
                    [k] if *k > 0 => Some(*k as usize),
                    [-1] => {
                        let x = n.input.first().cloned()?;
                        self.shape_len(&x)
                    }
                    _ => None,
                }
            }
            "Mul" | "Add" | "Sub" | "Div" => {
                let (a, b) = (n.input.first().cloned()?, n.input.get(1).cloned()?);
                Some(self.shape_len(&a)?.max(self.shape_len(&b)?))
            }
            _ => None,
        }
    }

    fn recurrent(&mut self, n: &NodeProto, mut axes: Vec<Ax>, width: Option<usize>) -> Result<Flow> {
        self.no_pending_pad(n)?;
        let op = n.op_type.as_str();
        let batch_first = attr_i(n, "layout", 0) == 1;
        if axes.len() != 3 {
            return Err(self.refuse_node(n, format!("reads 3 axes, the data has {axes:?}")));
        }
        let (t_at, b_at) = if batch_first { (1, 0) } else { (0, 1) };
        self.expect(n, &mut axes, t_at, Ax::T)?;
        self.expect(n, &mut axes, b_at, Ax::B)?;
        if axes[2] != Ax::F {
            self.mark_features(&mut axes, 2);
        }
        let direction = attr_s(n, "direction", "forward");
        let dirs = match direction.as_str() {
            "forward" => 1,
            "bidirectional" => 2,
            "reverse" => 1,
            d => return Err(self.refuse_node(n, format!("direction `{d}`"))),
        };
        let hidden = attr_i(n, "hidden_size", 0);
        if hidden <= 0 {
            return Err(self.refuse_node(n, "no hidden_size"));
        }
        let hidden = hidden as usize;
        if attr(n, "clip").is_some() {
            return Err(self.refuse_node(n, "`clip` (cell clipping) has no PyTorch equivalent"));
        }
        if attr(n, "activation_alpha").is_some() || attr(n, "activation_beta").is_some() {
            return Err(self.refuse_node(n, "activation_alpha / activation_beta"));
        }
        let acts: Vec<String> = attr(n, "activations")
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).to_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        let (cell, relu, gates, order): (&'static str, bool, usize, &[usize]) = match op {
            "LSTM" => {
                if attr_i(n, "input_forget", 0) != 0 {
                    return Err(self.refuse_node(n, "input_forget = 1 (coupled input and forget gates)"));
                }
                let default = ["sigmoid", "tanh", "tanh"];
                if !acts.is_empty() && acts.chunks(3).any(|c| c != default) {
                    return Err(self.refuse_node(
                        n,
                        format!("activations {acts:?}; seqflow's LSTM uses Sigmoid, Tanh, Tanh"),
                    ));
                }
                // ONNX i o f c -> PyTorch i f g o.
                ("lstm", false, 4, &[0, 2, 3, 1])
            }
            "GRU" => {
                let default = ["sigmoid", "tanh"];
                if !acts.is_empty() && acts.chunks(2).any(|c| c != default) {
                    return Err(self.refuse_node(
                        n,
                        format!("activations {acts:?}; seqflow's GRU uses Sigmoid, Tanh"),
                    ));
                }
                // ONNX z r h -> PyTorch r z n.
                ("gru", false, 3, &[1, 0, 2])
            }
            _ => {
                let relu = match acts.first().map(String::as_str) {
                    None | Some("tanh") => false,
                    Some("relu") => true,
                    Some(a) => {
                        return Err(
                            self.refuse_node(n, format!("activation `{a}`; seqflow's RNN uses tanh or relu"))
                        )
                    }
                };
                if acts.len() > 1 && acts[1] != acts[0] {
                    return Err(self.refuse_node(n, "different activations per direction"));
                }
                ("rnn", relu, 1, &[0])
            }
        };
        // Inputs: X W R B sequence_lens initial_h (initial_c P).
        let get = |i: usize| n.input.get(i).cloned().unwrap_or_default();
        if !get(4).is_empty() {
            return Err(self.refuse_node(
                n,
                "sequence_lens: seqflow's sequences end where their key's steps end",
            ));
        }
        for (i, what) in [(5, "initial_h"), (6, "initial_c")] {
            let name = get(i);
            if !name.is_empty() && !self.is_zero(&name) {
                return Err(self.refuse_node(
                    n,
                    format!("{what} (`{name}`) is not zero: a recurrence with a non-zero initial state"),
                ));
            }
        }
        if op == "LSTM" && !get(7).is_empty() {
            return Err(self.refuse_node(n, "peephole weights (P)"));
        }
        let w = self.weight(n, 1, "W")?;
        let r = self.weight(n, 2, "R")?;
        let b = if get(3).is_empty() {
            None
        } else {
            Some(self.weight(n, 3, "B")?)
        };
        let input_w = width.unwrap_or(*w.shape.last().unwrap_or(&0));
        let gh = gates * hidden;
        if w.shape != [dirs, gh, input_w] || r.shape != [dirs, gh, hidden] {
            return Err(self.refuse_node(
                n,
                format!(
                    "W {:?} and R {:?} do not fit {dirs} direction(s), hidden {hidden}, input {input_w}",
                    w.shape, r.shape
                ),
            ));
        }
        if let Some(b) = &b {
            if b.shape != [dirs, 2 * gh] {
                return Err(self.refuse_node(n, format!("B {:?} does not fit {dirs} x {}", b.shape, 2 * gh)));
            }
        }
        let reorder = |src: &[f32], cols: usize| -> Vec<f32> {
            let mut out = Vec::with_capacity(src.len());
            for &g in order {
                out.extend_from_slice(&src[g * hidden * cols..(g + 1) * hidden * cols]);
            }
            out
        };
        let mut per_dir = Vec::new();
        for d in 0..dirs {
            let wd = &w.data[d * gh * input_w..(d + 1) * gh * input_w];
            let rd = &r.data[d * gh * hidden..(d + 1) * gh * hidden];
            let t = |shape: Vec<usize>, data: Vec<f32>| Tensor { shape, data };
            let (bi, bh) = match &b {
                Some(b) => {
                    let bd = &b.data[d * 2 * gh..(d + 1) * 2 * gh];
                    (
                        Some(t(vec![gh], reorder(&bd[..gh], 1))),
                        Some(t(vec![gh], reorder(&bd[gh..], 1))),
                    )
                }
                None => (None, None),
            };
            per_dir.push((
                t(vec![gh, input_w], reorder(wd, input_w)),
                t(vec![gh, hidden], reorder(rd, hidden)),
                bi,
                bh,
            ));
        }
        let module = Self::module_of(n);
        let bidirectional = dirs == 2;
        let reset_before = op == "GRU" && attr_i(n, "linear_before_reset", 0) == 0;
        let reverse = direction == "reverse";
        match self.layers.last_mut() {
            Some(Layer::Rnn {
                cell: c,
                relu: rl,
                reset_before: rb,
                reverse: rv,
                module: Some(m),
                hidden: h,
                bidirectional: bd,
                layers,
            }) if *c == cell
                && *rl == relu
                && *rb == reset_before
                && *rv == reverse
                && module.as_deref() == Some(m.as_str())
                && *h == hidden
                && *bd == bidirectional =>
            {
                layers.push(per_dir);
            }
            _ => self.layers.push(Layer::Rnn {
                cell,
                relu,
                reset_before,
                reverse,
                module,
                hidden,
                bidirectional,
                layers: vec![per_dir],
            }),
        }
        for o in n.output.iter().skip(1).filter(|o| !o.is_empty()) {
            self.state_outputs.push(o.clone());
        }
        let y = n.output.first().cloned().unwrap_or_default();
        if y.is_empty()
            || !self.consumers.contains_key(y.as_str()) && !self.graph.output.iter().any(|o| o.name == y)
        {
            return Err(self.refuse_node(
                n,
                "only its final state is used: seqflow emits every step's output; export the per-step output (and use emit = \"sequence_end\" for the last)",
            ));
        }
        let out_axes = if batch_first {
            vec![Ax::B, Ax::T, Ax::D, Ax::F]
        } else {
            vec![Ax::T, Ax::D, Ax::B, Ax::F]
        };
        Ok((y, out_axes, Some(hidden)))
    }

    fn conv(&mut self, n: &NodeProto, mut axes: Vec<Ax>, width: Option<usize>) -> Result<Flow> {
        if axes.len() != 3 {
            return Err(self.refuse_node(n, "a convolution over more than one axis"));
        }
        self.channels_first(n, &mut axes)?;
        if attr_i(n, "group", 1) != 1 {
            return Err(self.refuse_node(n, "grouped convolution"));
        }
        let w = self.weight(n, 1, "weight")?;
        let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(_) => Some(self.weight(n, 2, "bias")?),
            None => None,
        };
        let [out_c, in_c, k] = w.shape[..] else {
            return Err(self.refuse_node(n, format!("weight {:?} is not [out, in, kernel]", w.shape)));
        };
        if width.is_some_and(|wd| wd != in_c) {
            return Err(self.refuse_node(n, format!("weight takes {in_c} channels, the data has {width:?}")));
        }
        let stride = attr_ints(n, "strides").first().copied().unwrap_or(1) as usize;
        let dilation = attr_ints(n, "dilations").first().copied().unwrap_or(1) as usize;
        let auto = attr_s(n, "auto_pad", "NOTSET");
        let mut pads = attr_ints(n, "pads");
        if pads.is_empty() {
            pads = vec![0, 0];
        }
        let (mut begin, mut end) = match auto.as_str() {
            "NOTSET" | "" => (pads[0] as usize, pads.get(1).copied().unwrap_or(0) as usize),
            "VALID" => (0, 0),
            "SAME_UPPER" | "SAME_LOWER" if stride == 1 => {
                let total = (k - 1) * dilation;
                let small = total / 2;
                if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            }
            other => return Err(self.refuse_node(n, format!("auto_pad {other} with stride {stride}"))),
        };
        if let Some((_, b, e)) = self.pad.take() {
            begin += b;
            end += e;
        }
        let total = (k - 1) * dilation;
        let padding = if begin == 0 && end == 0 {
            "valid"
        } else if begin == total && end == 0 {
            "causal"
        } else if begin == total / 2 && end == total - total / 2 && stride == 1 {
            "same"
        } else {
            return Err(self.refuse_node(
                n,
                format!("pads time by ({begin}, {end}); seqflow's conv1d pads causally ({total}, 0), valid (0, 0) or same ({}, {})", total / 2, total - total / 2),
            ));
        };
        let _ = out_c;
        self.layers.push(Layer::Conv {
            module: Self::module_of(n),
            weight: w,
            bias,
            stride,
            dilation,
            padding,
        });
        Ok((out_of(n), axes, Some(out_c)))
    }

    fn pool(&mut self, n: &NodeProto, mut axes: Vec<Ax>, width: Option<usize>) -> Result<Flow> {
        self.no_pending_pad(n)?;
        if axes.len() != 3 {
            return Err(self.refuse_node(n, "pooling over more than one axis"));
        }
        self.channels_first(n, &mut axes)?;
        let kernel = attr_ints(n, "kernel_shape");
        let [kernel] = kernel[..] else {
            return Err(self.refuse_node(n, "kernel_shape is not one size"));
        };
        let stride = attr_ints(n, "strides").first().copied().unwrap_or(1);
        let pads = attr_ints(n, "pads");
        if pads.iter().any(|&p| p != 0)
            || !matches!(attr_s(n, "auto_pad", "NOTSET").as_str(), "NOTSET" | "VALID" | "")
        {
            return Err(self.refuse_node(n, "padded pooling; seqflow pools like PyTorch without padding"));
        }
        if attr_i(n, "ceil_mode", 0) != 0 {
            return Err(self.refuse_node(n, "ceil_mode = 1"));
        }
        if attr_ints(n, "dilations").iter().any(|&d| d != 1) {
            return Err(self.refuse_node(n, "dilated pooling"));
        }
        if n.output.len() > 1 && !n.output[1].is_empty() {
            return Err(self.refuse_node(n, "its Indices output is used"));
        }
        self.layers.push(Layer::Pool {
            max: n.op_type == "MaxPool",
            kernel: kernel as usize,
            stride: stride as usize,
        });
        Ok((out_of(n), axes, width))
    }

    fn linear(&mut self, n: &NodeProto, mut axes: Vec<Ax>, width: Option<usize>) -> Result<Flow> {
        self.no_pending_pad(n)?;
        self.features_last(n, &mut axes)?;
        let w = self.weight(n, 1, "weight")?;
        let (din, dout, weight) = if n.op_type == "Gemm" {
            if attr_i(n, "transA", 0) != 0 {
                return Err(self.refuse_node(n, "transA = 1"));
            }
            if attr(n, "alpha").is_some_and(|a| a.f != 1.0) || attr(n, "beta").is_some_and(|a| a.f != 1.0) {
                return Err(self.refuse_node(n, "alpha or beta other than 1"));
            }
            let [r, c] = w.shape[..] else {
                return Err(self.refuse_node(n, "its weight is not a matrix"));
            };
            if attr_i(n, "transB", 0) == 1 {
                (c, r, w)
            } else {
                (r, c, transpose(&w))
            }
        } else {
            let [r, c] = w.shape[..] else {
                return Err(self.refuse_node(n, "its weight is not a matrix"));
            };
            (r, c, transpose(&w))
        };
        if width.is_some_and(|wd| wd != din) {
            return Err(self.refuse_node(n, format!("weight takes {din} features, the data has {width:?}")));
        }
        let bias = if n.op_type == "Gemm" && n.input.get(2).is_some_and(|s| !s.is_empty()) {
            let b = self.weight(n, 2, "bias")?;
            if b.data.len() != dout {
                return Err(
                    self.refuse_node(n, format!("bias of {} values for {dout} outputs", b.data.len()))
                );
            }
            Some(Tensor {
                shape: vec![dout],
                data: b.data,
            })
        } else {
            None
        };
        self.layers.push(Layer::Linear {
            module: Self::module_of(n),
            weight,
            bias,
        });
        Ok((out_of(n), axes, Some(dout)))
    }

    /// `Add` of a constant right after a `MatMul`: the linear layer's bias.
    fn add(&mut self, n: &NodeProto, cur: &str, axes: Vec<Ax>, width: Option<usize>) -> Result<Flow> {
        if axes.last() != Some(&Ax::F) {
            return Err(self.refuse_node(n, "an addition over another axis than the features"));
        }
        let other = n
            .input
            .iter()
            .find(|i| i.as_str() != cur)
            .cloned()
            .unwrap_or_default();
        let c = self.constant(&other);
        let dout = width.unwrap_or(0);
        match (self.layers.last_mut(), c) {
            (Some(Layer::Linear { bias: b @ None, .. }), Some(v))
                if v.len() == dout && v.dims.iter().rev().skip(1).all(|&d| d == 1) =>
            {
                *b = Some(Tensor {
                    shape: vec![dout],
                    data: v.floats().iter().map(|&x| x as f32).collect(),
                });
                Ok((out_of(n), axes, width))
            }
            _ => Err(self.refuse_node(
                n,
                "an addition that is not a linear layer's bias (a residual connection or a branch)",
            )),
        }
    }

    /// The model file's layers and the PyTorch-named tensors.
    fn finish(mut self, input_size: usize) -> Result<Imported> {
        let mut toml = format!("input_size = {input_size}\n");
        let mut tensors = Vec::new();
        let mut used: HashMap<String, usize> = HashMap::new();
        let layers = std::mem::take(&mut self.layers);
        let weighted = layers
            .iter()
            .filter(|l| !matches!(l, Layer::Act(_) | Layer::Pool { .. }))
            .count();
        for (i, layer) in layers.into_iter().enumerate() {
            let mut name_for = |module: &Option<String>, what: &str| -> Option<String> {
                let base = match module {
                    // Top-level tensors only for a model with one weighted layer (a bare
                    // nn.LSTM); otherwise two layers would share names.
                    Some(m) if m.is_empty() && weighted == 1 => return None,
                    Some(m) if m.is_empty() => format!("{what}{i}"),
                    Some(m) => m.clone(),
                    None => format!("{what}{i}"),
                };
                let k = used.entry(base.clone()).or_insert(0);
                *k += 1;
                Some(if *k == 1 { base } else { format!("{base}_{k}") })
            };
            let prefix = |name: &Option<String>, t: &str| match name {
                Some(n) => format!("{n}.{t}"),
                None => t.to_string(),
            };
            toml.push_str("\n[[layers]]\n");
            match layer {
                Layer::Conv {
                    module,
                    weight,
                    bias,
                    stride,
                    dilation,
                    padding,
                } => {
                    let name = name_for(&module, "conv");
                    toml.push_str("type = \"conv1d\"\n");
                    if let Some(n) = &name {
                        toml.push_str(&format!("name = \"{n}\"\n"));
                    }
                    toml.push_str(&format!("padding = \"{padding}\"\n"));
                    if dilation != 1 {
                        toml.push_str(&format!("dilation = {dilation}\n"));
                    }
                    if stride != 1 {
                        toml.push_str(&format!("stride = {stride}\n"));
                    }
                    tensors.push((prefix(&name, "weight"), weight));
                    if let Some(b) = bias {
                        tensors.push((prefix(&name, "bias"), b));
                    }
                }
                Layer::Pool { max, kernel, stride } => {
                    toml.push_str(&format!(
                        "type = \"{}\"\nkernel = {kernel}\nstride = {stride}\n",
                        if max { "maxpool1d" } else { "avgpool1d" }
                    ));
                }
                Layer::Linear { module, weight, bias } => {
                    let name = name_for(&module, "linear");
                    toml.push_str("type = \"linear\"\n");
                    if let Some(n) = &name {
                        toml.push_str(&format!("name = \"{n}\"\n"));
                    }
                    tensors.push((prefix(&name, "weight"), weight));
                    if let Some(b) = bias {
                        tensors.push((prefix(&name, "bias"), b));
                    }
                }
                Layer::Act(a) => toml.push_str(&format!("type = \"{a}\"\n")),
                Layer::Rnn {
                    cell,
                    relu,
                    reset_before,
                    reverse,
                    module,
                    layers,
                    ..
                } => {
                    let name = name_for(&module, cell);
                    toml.push_str(&format!("type = \"{cell}\"\n"));
                    if let Some(n) = &name {
                        toml.push_str(&format!("name = \"{n}\"\n"));
                    }
                    if cell == "rnn" {
                        toml.push_str(&format!(
                            "nonlinearity = \"{}\"\n",
                            if relu { "relu" } else { "tanh" }
                        ));
                    }
                    if reset_before {
                        toml.push_str("linear_before_reset = false\n");
                    }
                    if reverse {
                        toml.push_str("reverse = true\n");
                    }
                    for (k, dirs) in layers.into_iter().enumerate() {
                        for (d, (wi, wh, bi, bh)) in dirs.into_iter().enumerate() {
                            let sfx = if d == 1 { "_reverse" } else { "" };
                            tensors.push((prefix(&name, &format!("weight_ih_l{k}{sfx}")), wi));
                            tensors.push((prefix(&name, &format!("weight_hh_l{k}{sfx}")), wh));
                            if let Some(b) = bi {
                                tensors.push((prefix(&name, &format!("bias_ih_l{k}{sfx}")), b));
                            }
                            if let Some(b) = bh {
                                tensors.push((prefix(&name, &format!("bias_hh_l{k}{sfx}")), b));
                            }
                        }
                    }
                }
            }
        }
        if !toml.ends_with('\n') {
            toml.push('\n');
        }
        Ok(Imported {
            layers_toml: toml,
            tensors,
            notes: self.notes,
        })
    }
}

/// A node's first output (empty for a node without outputs: the walk then stops there with
/// a message, as that tensor is read by nothing).
fn out_of(n: &NodeProto) -> String {
    n.output.first().cloned().unwrap_or_default()
}

fn transpose(w: &Tensor) -> Tensor {
    let (r, c) = (w.shape[0], w.shape[1]);
    let mut data = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            data[j * r + i] = w.data[i * c + j];
        }
    }
    Tensor {
        shape: vec![c, r],
        data,
    }
}

fn role_name(a: Ax) -> &'static str {
    match a {
        Ax::B => "batch",
        Ax::T => "time",
        Ax::F => "features",
        Ax::D => "RNN directions",
        Ax::N(_) => "batch x time",
        Ax::One => "a size-1 axis",
        Ax::U(_) => "an input axis",
    }
}

/// The input's feature size: the fixed size of its feature axis.
fn width_of_input(roles: &[Option<Ax>; 3], dims: &[(i64, String)]) -> Option<usize> {
    let k = roles.iter().position(|r| *r == Some(Ax::F))?;
    (dims[k].0 > 0).then_some(dims[k].0 as usize)
}
