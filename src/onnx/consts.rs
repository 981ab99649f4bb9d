//! Constant folding over the small side computations exporters emit around a model's data
//! path: pad amounts built by `ConstantOfShape -> Concat -> Reshape -> Slice -> Transpose ->
//! Cast` chains, axes lists, zero initial states. Only what such chains use is evaluated;
//! anything else is "not a constant" and the caller decides.

use std::collections::HashMap;

use super::proto::{dtype, NodeProto, TensorProto};

/// The most elements a folded constant may have.
const MAX_FOLD: usize = 1 << 24;

/// A constant tensor: its shape and values (floats, or integers for shapes and indices).
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// Dimensions.
    pub dims: Vec<usize>,
    /// Values, row-major.
    pub data: Data,
}

/// Values of a constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// Floating point (f16, bf16, f32, f64 all land here).
    F(Vec<f64>),
    /// Integers (int32, int64, bool).
    I(Vec<i64>),
}

impl Value {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
        }
    }

    /// The values as integers (floats truncated).
    pub fn ints(&self) -> Vec<i64> {
        match &self.data {
            Data::F(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I(v) => v.clone(),
        }
    }

    /// The values as f64.
    pub fn floats(&self) -> Vec<f64> {
        match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every value is zero.
    pub fn all_zero(&self) -> bool {
        match &self.data {
            Data::F(v) => v.iter().all(|&x| x == 0.0),
            Data::I(v) => v.iter().all(|&x| x == 0),
        }
    }

    fn with(&self, dims: Vec<usize>, pick: impl Fn(usize) -> usize, n: usize) -> Value {
        let data = match &self.data {
            Data::F(v) => Data::F((0..n).map(|i| v[pick(i)]).collect()),
            Data::I(v) => Data::I((0..n).map(|i| v[pick(i)]).collect()),
        };
        Value { dims, data }
    }
}

/// Decodes a tensor's values (inline, raw little-endian, or already read external bytes in
/// `raw`). `None` for a type an import has no use for (strings, complex, 8-bit...).
pub fn decode(t: &TensorProto, raw: &[u8]) -> Option<Value> {
    let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    let data = match t.data_type {
        dtype::FLOAT if !raw.is_empty() => Data::F(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect(),
        ),
        dtype::FLOAT => Data::F(t.float_data.iter().map(|&x| x as f64).collect()),
        dtype::DOUBLE if !raw.is_empty() => Data::F(
            raw.chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        ),
        dtype::DOUBLE => Data::F(t.double_data.clone()),
        dtype::FLOAT16 | dtype::BFLOAT16 => {
            let bits: Vec<u16> = if !raw.is_empty() {
                raw.chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect()
            } else {
                // Stored in int32_data, one value per element.
                t.int32_data.iter().map(|&x| x as u16).collect()
            };
            Data::F(
                bits.iter()
                    .map(|&b| match t.data_type {
                        dtype::FLOAT16 => half::f16::from_bits(b).to_f64(),
                        _ => half::bf16::from_bits(b).to_f64(),
                    })
                    .collect(),
            )
        }
        dtype::INT64 if !raw.is_empty() => Data::I(
            raw.chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        ),
        dtype::INT64 => Data::I(t.int64_data.clone()),
        dtype::INT32 | dtype::BOOL if !raw.is_empty() => {
            let width = if t.data_type == dtype::BOOL { 1 } else { 4 };
            Data::I(
                raw.chunks_exact(width)
                    .map(|b| match width {
                        1 => b[0] as i64,
                        _ => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
                    })
                    .collect(),
            )
        }
        dtype::INT32 | dtype::BOOL => Data::I(t.int32_data.iter().map(|&x| x as i64).collect()),
        _ => return None,
    };
    let v = Value { dims, data };
    (v.len() == n).then_some(v)
}

/// Attribute lookup on a node.
pub fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a super::proto::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

/// An integer attribute, or `default`.
pub fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}

/// An integer-list attribute (empty when absent).
pub fn attr_ints(n: &NodeProto, name: &str) -> Vec<i64> {
    attr(n, name).map_or_else(Vec::new, |a| a.ints.clone())
}

/// A string attribute, or `default`.
pub fn attr_s(n: &NodeProto, name: &str, default: &str) -> String {
    attr(n, name).map_or(default.to_string(), |a| {
        String::from_utf8_lossy(&a.s).into_owned()
    })
}

/// Evaluates node `n` if every input it reads is in `known`; `None` when it cannot.
pub fn eval(n: &NodeProto, known: &HashMap<String, Value>) -> Option<Value> {
    let input = |i: usize| -> Option<&Value> {
        let name = n.input.get(i)?;
        if name.is_empty() {
            return None;
        }
        known.get(name)
    };
    let axes_of = |idx: usize| -> Option<Vec<i64>> {
        match input(idx) {
            Some(v) => Some(v.ints()),
            None => attr(n, "axes").map(|a| a.ints.clone()),
        }
    };
    match n.op_type.as_str() {
        "Constant" => {
            if let Some(t) = attr(n, "value").and_then(|a| a.t.as_ref()) {
                return decode(t, &t.raw_data);
            }
            if let Some(a) = attr(n, "value_ints") {
                return Some(Value {
                    dims: vec![a.ints.len()],
                    data: Data::I(a.ints.clone()),
                });
            }
            if let Some(a) = attr(n, "value_int") {
                return Some(Value {
                    dims: vec![],
                    data: Data::I(vec![a.i]),
                });
            }
            if let Some(a) = attr(n, "value_float") {
                return Some(Value {
                    dims: vec![],
                    data: Data::F(vec![a.f as f64]),
                });
            }
            None
        }
        "ConstantOfShape" => {
            let dims: Vec<usize> = input(0)?.ints().iter().map(|&d| d.max(0) as usize).collect();
            // Side computations are small; a huge one is not folded (nor allocated).
            let n_el = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .filter(|&n| n <= MAX_FOLD)?;
            let fill = attr(n, "value")
                .and_then(|a| a.t.as_ref())
                .and_then(|t| decode(t, &t.raw_data));
            let data = match fill.map(|f| f.data) {
                Some(Data::I(v)) => Data::I(vec![v.first().copied().unwrap_or(0); n_el]),
                Some(Data::F(v)) => Data::F(vec![v.first().copied().unwrap_or(0.0); n_el]),
                None => Data::F(vec![0.0; n_el]),
            };
            Some(Value { dims, data })
        }
        "Identity" | "Cast" => {
            let v = input(0)?.clone();
            let to = attr_i(n, "to", 0) as i32;
            Some(match (n.op_type.as_str(), to) {
                ("Cast", dtype::FLOAT | dtype::DOUBLE | dtype::FLOAT16 | dtype::BFLOAT16) => Value {
                    data: Data::F(v.floats()),
                    dims: v.dims,
                },
                ("Cast", _) => Value {
                    data: Data::I(v.ints()),
                    dims: v.dims,
                },
                _ => v,
            })
        }
        "Concat" => {
            let vals: Vec<&Value> = (0..n.input.len()).map(input).collect::<Option<_>>()?;
            // 1-D concatenation is all an exporter's shape arithmetic needs.
            if vals.iter().any(|v| v.dims.len() > 1) {
                return None;
            }
            let total = vals.iter().map(|v| v.len()).sum();
            let data = if vals.iter().all(|v| matches!(v.data, Data::I(_))) {
                Data::I(vals.iter().flat_map(|v| v.ints()).collect())
            } else {
                Data::F(vals.iter().flat_map(|v| v.floats()).collect())
            };
            Some(Value {
                dims: vec![total],
                data,
            })
        }
        "Reshape" => {
            let v = input(0)?;
            let shape = input(1)?.ints();
            let mut dims: Vec<i64> = shape
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d == 0 {
                        v.dims.get(i).map_or(0, |&x| x as i64)
                    } else {
                        d
                    }
                })
                .collect();
            let known: i64 = dims.iter().filter(|&&d| d > 0).product();
            if let Some(m) = dims.iter_mut().find(|d| **d == -1) {
                *m = if known == 0 { 0 } else { v.len() as i64 / known };
            }
            let dims: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
            (dims.iter().product::<usize>() == v.len()).then(|| Value {
                dims,
                data: v.data.clone(),
            })
        }
        "Unsqueeze" | "Squeeze" => {
            let v = input(0)?;
            let axes = axes_of(1).unwrap_or_default();
            let mut dims = v.dims.clone();
            if n.op_type == "Unsqueeze" {
                let rank = (dims.len() + axes.len()) as i64;
                let mut axes: Vec<usize> = axes
                    .iter()
                    .map(|&a| (if a < 0 { a + rank } else { a }) as usize)
                    .collect();
                axes.sort_unstable();
                for a in axes {
                    dims.insert(a.min(dims.len()), 1);
                }
            } else if axes.is_empty() {
                dims.retain(|&d| d != 1);
            } else {
                let rank = dims.len() as i64;
                let drop: Vec<usize> = axes
                    .iter()
                    .map(|&a| (if a < 0 { a + rank } else { a }) as usize)
                    .collect();
                dims = dims
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !drop.contains(i))
                    .map(|(_, &d)| d)
                    .collect();
            }
            Some(Value {
                dims,
                data: v.data.clone(),
            })
        }
        "Slice" => {
            let v = input(0)?;
            let rank = v.dims.len();
            let (starts, ends) = match (input(1), input(2)) {
                (Some(s), Some(e)) => (s.ints(), e.ints()),
                _ => (attr_ints(n, "starts"), attr_ints(n, "ends")),
            };
            let axes = match input(3) {
                Some(a) => a.ints(),
                None => match attr(n, "axes") {
                    Some(a) => a.ints.clone(),
                    None => (0..starts.len() as i64).collect(),
                },
            };
            let steps = input(4).map_or_else(|| vec![1; starts.len()], |s| s.ints());
            // Per axis, the indices kept (all of an axis not sliced).
            let mut keep: Vec<Vec<usize>> = v.dims.iter().map(|&d| (0..d).collect()).collect();
            for (k, &a) in axes.iter().enumerate() {
                let a = if a < 0 { a + rank as i64 } else { a } as usize;
                let len = *v.dims.get(a)? as i64;
                let (s, e, step) = (*starts.get(k)?, *ends.get(k)?, *steps.get(k).unwrap_or(&1));
                if step == 0 {
                    return None;
                }
                let idx: Vec<usize> = if step > 0 {
                    let c = |x: i64| if x < 0 { (x + len).max(0) } else { x.min(len) };
                    (c(s)..c(e)).step_by(step as usize).map(|i| i as usize).collect()
                } else {
                    let s = if s < 0 { s + len } else { s.min(len - 1) };
                    let e = if e < 0 { (e + len).max(-1) } else { e.min(len - 1) };
                    let mut out = Vec::new();
                    let mut i = s;
                    while i > e {
                        out.push(i as usize);
                        i += step;
                    }
                    out
                };
                keep[a] = idx;
            }
            let dims: Vec<usize> = keep.iter().map(Vec::len).collect();
            let total: usize = dims.iter().product();
            let strides: Vec<usize> = (0..rank).map(|a| v.dims[a + 1..].iter().product()).collect();
            let pick = |mut flat: usize| {
                let mut at = 0;
                for a in (0..rank).rev() {
                    let i = flat % dims[a];
                    flat /= dims[a];
                    at += keep[a][i] * strides[a];
                }
                at
            };
            Some(v.with(dims.clone(), pick, total))
        }
        "Transpose" => {
            let v = input(0)?;
            match v.dims.len() {
                0 | 1 => Some(v.clone()),
                2 => {
                    let (r, c) = (v.dims[0], v.dims[1]);
                    Some(v.with(vec![c, r], |i| (i % r) * c + i / r, r * c))
                }
                _ => None,
            }
        }
        "Gather" => {
            let v = input(0)?;
            let idx = input(1)?;
            if v.dims.len() != 1 || attr_i(n, "axis", 0) != 0 {
                return None;
            }
            let len = v.len() as i64;
            let at: Vec<usize> = idx
                .ints()
                .iter()
                .map(|&i| (if i < 0 { i + len } else { i }) as usize)
                .collect();
            if at.iter().any(|&i| i >= v.len()) {
                return None;
            }
            Some(v.with(idx.dims.clone(), |i| at[i], at.len()))
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let (a, b) = (input(0)?, input(1)?);
            let n_el = a.len().max(b.len());
            if a.is_empty() || b.is_empty() || !(a.len() == b.len() || a.len() == 1 || b.len() == 1) {
                return None;
            }
            let dims = if a.len() >= b.len() {
                a.dims.clone()
            } else {
                b.dims.clone()
            };
            let op = n.op_type.as_str();
            let data = match (&a.data, &b.data) {
                (Data::I(x), Data::I(y)) => Data::I(broadcast(x, y, n_el, |p, q| match op {
                    "Add" => p.wrapping_add(q),
                    "Sub" => p.wrapping_sub(q),
                    "Mul" => p.wrapping_mul(q),
                    _ => p.checked_div(q).unwrap_or(0),
                })),
                _ => Data::F(broadcast(&a.floats(), &b.floats(), n_el, |p, q| match op {
                    "Add" => p + q,
                    "Sub" => p - q,
                    "Mul" => p * q,
                    _ => p / q,
                })),
            };
            Some(Value { dims, data })
        }
        _ => None,
    }
}

/// `f` over `x` and `y` elementwise, a one-element side repeated (both non-empty).
fn broadcast<T: Copy>(x: &[T], y: &[T], n: usize, f: impl Fn(T, T) -> T) -> Vec<T> {
    (0..n).map(|i| f(x[i % x.len()], y[i % y.len()])).collect()
}
