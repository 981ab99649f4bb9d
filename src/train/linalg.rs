//! f64 matrix products for training, on faer. Training runs in f64 so that gradients can be
//! checked against finite differences to 1e-6 and so that long sums (a weight gradient over
//! every step of a batch) do not lose the small terms.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// How an operand is read: as stored (`[rows x cols]` row-major) or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// As stored.
    N,
    /// Transposed.
    T,
}

/// `out[m x n] (+)= op(a)[m x k] * op(b)[k x n]`, all row-major slices.
///
/// `a` is stored `[m x k]` for `Op::N` and `[k x m]` for `Op::T`; likewise `b`.
#[allow(clippy::too_many_arguments)]
pub fn mm(out: &mut [f64], add: bool, a: &[f64], ta: Op, b: &[f64], tb: Op, m: usize, k: usize, n: usize) {
    debug_assert_eq!(out.len(), m * n);
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), k * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !add {
            out.fill(0.0);
        }
        return;
    }
    let dst = MatMut::from_row_major_slice_mut(out, m, n);
    let lhs = match ta {
        Op::N => MatRef::from_row_major_slice(a, m, k),
        Op::T => MatRef::from_row_major_slice(a, k, m).transpose(),
    };
    let rhs = match tb {
        Op::N => MatRef::from_row_major_slice(b, k, n),
        Op::T => MatRef::from_row_major_slice(b, n, k).transpose(),
    };
    let accum = if add { Accum::Add } else { Accum::Replace };
    matmul(dst, accum, lhs, rhs, 1.0f64, Par::Seq);
}

/// Adds `bias` to every row.
pub fn add_rows(rows: &mut [f64], bias: &[f64]) {
    if bias.is_empty() {
        return;
    }
    for row in rows.chunks_exact_mut(bias.len()) {
        for (r, b) in row.iter_mut().zip(bias) {
            *r += b;
        }
    }
}

/// `acc[j] += sum over rows of rows[., j]`.
pub fn sum_rows(acc: &mut [f64], rows: &[f64]) {
    if acc.is_empty() {
        return;
    }
    for row in rows.chunks_exact(acc.len()) {
        for (a, r) in acc.iter_mut().zip(row) {
            *a += r;
        }
    }
}

/// The logistic function `1 / (1 + e^-x)`.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_operands() {
        // a = [[1,2],[3,4]], b = [[5,6],[7,8]]
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0];
        let mut o = [0.0; 4];
        mm(&mut o, false, &a, Op::N, &b, Op::N, 2, 2, 2);
        assert_eq!(o, [19.0, 22.0, 43.0, 50.0]);
        mm(&mut o, false, &a, Op::T, &b, Op::N, 2, 2, 2);
        assert_eq!(o, [26.0, 30.0, 38.0, 44.0]);
        mm(&mut o, false, &a, Op::N, &b, Op::T, 2, 2, 2);
        assert_eq!(o, [17.0, 23.0, 39.0, 53.0]);
        mm(&mut o, true, &a, Op::N, &b, Op::T, 2, 2, 2);
        assert_eq!(o, [34.0, 46.0, 78.0, 106.0]);
    }
}
