//! A batch of sequences for training: padded, time-major, f64.
//!
//! Row `t * b + i` is step `t` of sequence `i`; rows at or past a sequence's length are
//! padding and are kept at zero by every layer (forward values and gradients), which is what
//! makes a padded batch give each sequence exactly what it would give alone: a `same`
//! convolution sees zeros past the end (PyTorch's right padding) and a reverse-direction
//! recurrence starts from a zero state at each sequence's own last step.

/// `t` steps of `b` sequences of `w` values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seq {
    /// Sequences in the batch.
    pub b: usize,
    /// Steps: the longest sequence's length.
    pub t: usize,
    /// Values per row.
    pub w: usize,
    /// `t*b x w`, row-major; row `t * b + i` is step `t` of sequence `i`.
    pub data: Vec<f64>,
    /// Valid steps of each sequence.
    pub lens: Vec<usize>,
    /// Row -> index (within this batch) of the model input step that completed it; lets
    /// strided convolutions and pooling map outputs back to targets.
    pub tags: Vec<u32>,
}

impl Seq {
    /// A zeroed batch with the given lengths; tags are the identity.
    pub fn zeros(lens: &[usize], w: usize) -> Seq {
        let b = lens.len();
        let t = lens.iter().copied().max().unwrap_or(0);
        let tags = (0..t).flat_map(|s| std::iter::repeat_n(s as u32, b)).collect();
        Seq {
            b,
            t,
            w,
            data: vec![0.0; t * b * w],
            lens: lens.to_vec(),
            tags,
        }
    }

    /// The same geometry with another width, zeroed.
    pub fn like(&self, w: usize) -> Seq {
        Seq {
            b: self.b,
            t: self.t,
            w,
            data: vec![0.0; self.t * self.b * w],
            lens: self.lens.clone(),
            tags: self.tags.clone(),
        }
    }

    /// Number of rows, `t * b`, padding included.
    pub fn rows(&self) -> usize {
        self.t * self.b
    }

    /// Whether step `t` of sequence `i` is a real step (not padding).
    #[inline]
    pub fn valid(&self, t: usize, i: usize) -> bool {
        t < self.lens[i]
    }

    /// The `w` values of step `t` of sequence `i`.
    #[inline]
    pub fn row(&self, t: usize, i: usize) -> &[f64] {
        let r = t * self.b + i;
        &self.data[r * self.w..(r + 1) * self.w]
    }

    /// The `w` values of step `t` of sequence `i`, mutably.
    #[inline]
    pub fn row_mut(&mut self, t: usize, i: usize) -> &mut [f64] {
        let r = t * self.b + i;
        &mut self.data[r * self.w..(r + 1) * self.w]
    }

    /// Rows of step `t` (all sequences).
    pub fn step(&self, t: usize) -> &[f64] {
        &self.data[t * self.b * self.w..(t + 1) * self.b * self.w]
    }

    /// Zeroes every padding row.
    pub fn zero_padding(&mut self) {
        for t in 0..self.t {
            for i in 0..self.b {
                if !self.valid(t, i) {
                    self.row_mut(t, i).fill(0.0);
                }
            }
        }
    }
}
