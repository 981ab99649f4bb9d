//! Feature preparation: normalization, the NaN policy and forward fill. Files, live lines
//! and training all turn raw values into model inputs here, so a model is trained on
//! exactly the f32 values it is later served (`train_run::training_sees_exactly_the_values_
//! serving_sees` holds the two paths to it, bit for bit).

use super::columns::Columns;
use crate::vocab::{NanPolicy, Normalize};

/// One step's raw feature values (f64, NaN for a null) to the f32 values the model sees.
#[derive(Debug, Clone)]
pub struct Prep {
    norm: Option<Normalize>,
    nan: NanPolicy,
}

impl Prep {
    /// The preparation `columns` asks for.
    pub fn new(columns: &Columns) -> Prep {
        Prep {
            norm: columns.normalize.clone(),
            nan: columns.nan,
        }
    }

    /// Feature `j`'s model input for the raw value `x` (NaN for a null): `(x - mean) / std` in
    /// f64 (as the statistics were computed; f32 would cost ~1e-7 relative per input), then
    /// rounded to f32. The one formula every path uses.
    #[inline]
    pub fn value(&self, j: usize, x: f64) -> f32 {
        match &self.norm {
            Some(n) => ((x - n.mean[j]) / n.std[j]) as f32,
            None => x as f32,
        }
    }

    /// Applies the NaN policy to one step's prepared values: a value that is not finite
    /// becomes 0 under `zero`, stays NaN under `ffill` (filled per key in time order by
    /// [`fill_forward`]), and under `error` and `skip` makes this return the feature's index.
    #[inline]
    pub fn policy(&self, row: &mut [f32]) -> Result<(), usize> {
        for (j, v) in row.iter_mut().enumerate() {
            if !v.is_finite() {
                match self.nan {
                    NanPolicy::Error | NanPolicy::Skip => return Err(j),
                    NanPolicy::Zero => *v = 0.0,
                    NanPolicy::Ffill => *v = f32::NAN,
                }
            }
        }
        Ok(())
    }

    /// [`Prep::value`] of every feature's raw value `raw(j)` into `out`, then
    /// [`Prep::policy`].
    #[inline]
    pub fn row(&self, raw: impl Fn(usize) -> f64, out: &mut [f32]) -> Result<(), usize> {
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.value(j, raw(j));
        }
        self.policy(out)
    }
}

/// Forward fill of one step of a key, in time order: a NaN takes the key's last finite
/// value of that feature (`last`, zero before the first), a finite value becomes the last.
#[inline]
pub fn fill_forward(row: &mut [f32], last: &mut [f32]) {
    for (v, l) in row.iter_mut().zip(last.iter_mut()) {
        if v.is_finite() {
            *l = *v;
        } else {
            *v = *l;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(nan: NanPolicy, norm: Option<Normalize>) -> Columns {
        Columns {
            key: "k".into(),
            time: "t".into(),
            features: vec!["a".into(), "b".into()],
            normalize: norm,
            nan,
        }
    }

    #[test]
    fn normalizes_in_f64_then_applies_the_policy() {
        let norm = Normalize {
            mean: vec![1.0, 0.0],
            std: vec![4.0, 1e-40],
        };
        let p = Prep::new(&cols(NanPolicy::Zero, Some(norm.clone())));
        let mut out = [9.0f32; 2];
        // 1e-39 / 1e-40 = 10 in f64; b's division overflows f32 for 1.0 -> zero.
        p.row(|j| [3.0, 1e-39][j], &mut out).unwrap();
        assert_eq!(out, [0.5, 10.0]);
        p.row(|j| [3.0, 1.0][j], &mut out).unwrap();
        assert_eq!(out, [0.5, 0.0]);
        let p = Prep::new(&cols(NanPolicy::Skip, Some(norm)));
        assert_eq!(p.row(|j| [f64::NAN, f64::NAN][j], &mut out), Err(0));
        let p = Prep::new(&cols(NanPolicy::Ffill, None));
        p.row(|j| [f64::NAN, 2.0][j], &mut out).unwrap();
        assert!(out[0].is_nan() && out[1] == 2.0);
        let mut last = [7.0, 0.0];
        fill_forward(&mut out, &mut last);
        assert_eq!((out, last), ([7.0, 2.0], [7.0, 2.0]));
    }
}
