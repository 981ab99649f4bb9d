//! A ragged batch of sequences in PyTorch's `PackedSequence` layout.
//!
//! Sequences are ordered by length, longest first, and stored time-major: all sequences'
//! step 0, then all step 1, and so on. Wavefront `w` (every sequence's `w`-th step) is then
//! one contiguous block of rows, and the sequences still running at `w` are a *prefix* of the
//! batch. That is what lets a recurrent layer gather each key's state once into a dense
//! matrix, run every wavefront on a row prefix of it, and scatter once at the end; and lets
//! the input projection of all steps of all keys be one matrix product.

/// The row layout of a packed batch; shared by every layer that does not change lengths.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Position -> caller's sequence id. Positions are sorted by length, descending.
    pub seq: Vec<u32>,
    /// Position -> number of steps.
    pub lens: Vec<u32>,
    /// Wavefront -> number of sequences with more than `w` steps (non-increasing).
    pub batch_sizes: Vec<u32>,
    /// Wavefront -> first row; `offsets[waves]` = total rows.
    pub offsets: Vec<usize>,
    /// Row -> index of the input step (of this call, for that sequence) that completed it.
    /// Identity for shape-preserving layers; strided convolutions and pooling thin it out.
    pub tags: Vec<u32>,
}

impl Layout {
    /// Rebuilds the layout for sequences `0..lens.len()` with the given lengths.
    /// Sorting is stable, so equal lengths keep the caller's order.
    pub fn build(&mut self, lens: impl ExactSizeIterator<Item = u32>) {
        self.seq.clear();
        self.lens.clear();
        self.lens.extend(lens);
        self.seq.extend(0..self.lens.len() as u32);
        self.finish();
    }

    /// Sorts `seq`/`lens` by length (descending, stable) and derives wavefronts and offsets.
    /// Tags are reset to the identity (step `w` of each sequence completed by input step `w`).
    pub(crate) fn finish(&mut self) {
        let lens = std::mem::take(&mut self.lens);
        let mut order: Vec<u32> = (0..self.seq.len() as u32).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lens[i as usize]));
        let seq: Vec<u32> = order.iter().map(|&i| self.seq[i as usize]).collect();
        self.lens = order.iter().map(|&i| lens[i as usize]).collect();
        self.seq = seq;
        self.derive_waves();
        let rows = self.rows();
        self.tags.clear();
        self.tags.resize(rows, 0);
        for w in 0..self.waves() {
            let start = self.offsets[w];
            self.tags[start..start + self.batch_sizes[w] as usize].fill(w as u32);
        }
    }

    fn derive_waves(&mut self) {
        let max = self.lens.first().copied().unwrap_or(0) as usize;
        self.batch_sizes.clear();
        self.offsets.clear();
        self.offsets.push(0);
        let mut n = self.lens.len();
        for w in 0..max {
            while n > 0 && self.lens[n - 1] as usize <= w {
                n -= 1;
            }
            self.batch_sizes.push(n as u32);
            let last = *self.offsets.last().expect("offsets start with 0");
            self.offsets.push(last + n);
        }
    }

    /// Number of sequences (including empty ones).
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    /// Whether there is no sequence.
    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// Number of wavefronts (the longest sequence's length).
    pub fn waves(&self) -> usize {
        self.batch_sizes.len()
    }

    /// Total number of rows (steps of all sequences).
    pub fn rows(&self) -> usize {
        *self.offsets.last().unwrap_or(&0)
    }

    /// Number of sequences with at least one step.
    pub fn active(&self) -> usize {
        self.batch_sizes.first().copied().unwrap_or(0) as usize
    }

    /// Row of step `t` of the sequence at position `pos`.
    #[inline]
    pub fn row(&self, pos: usize, t: usize) -> usize {
        debug_assert!(t < self.lens[pos] as usize);
        self.offsets[t] + pos
    }
}

/// A packed batch: a layout plus `rows x width` values.
#[derive(Debug, Clone, Default)]
pub struct Packed {
    /// Which row is which sequence's step.
    pub layout: Layout,
    /// Values per row.
    pub width: usize,
    /// `rows x width`, row-major.
    pub data: Vec<f32>,
    /// Sequence id -> position, filled by [`Packed::build`] for [`Packed::row_mut`].
    pos_of_seq: Vec<u32>,
}

impl Packed {
    /// Prepares a batch for sequences `0..lens.len()`; fill it with [`Packed::row_mut`].
    /// Reuses the existing buffers, so a driver that keeps one `Packed` does not allocate
    /// once it has seen its largest batch.
    pub fn build(&mut self, width: usize, lens: &[usize]) {
        self.width = width;
        self.layout.build(lens.iter().map(|&l| l as u32));
        self.data.clear();
        self.data.resize(self.layout.rows() * width, 0.0);
        self.pos_of_seq.clear();
        self.pos_of_seq.resize(lens.len(), 0);
        for (pos, &s) in self.layout.seq.iter().enumerate() {
            self.pos_of_seq[s as usize] = pos as u32;
        }
    }

    /// [`Packed::build`], then step `t` of sequence `s` copied from `row(s, t)`: the one
    /// packing loop of every driver.
    pub fn pack<'a>(&mut self, width: usize, lens: &[usize], row: impl Fn(usize, usize) -> &'a [f32]) {
        self.build(width, lens);
        for (s, &n) in lens.iter().enumerate() {
            for t in 0..n {
                self.row_mut(s, t).copy_from_slice(row(s, t));
            }
        }
    }

    /// Per sequence id, the row of its last output (`None` for a sequence without output).
    pub fn last_rows(&self) -> Vec<Option<usize>> {
        let l = &self.layout;
        let mut last = vec![None; l.len()];
        for pos in 0..l.len() {
            if let Some(t) = (l.lens[pos] as usize).checked_sub(1) {
                last[l.seq[pos] as usize] = Some(l.row(pos, t));
            }
        }
        last
    }

    /// The input row for step `t` of sequence `seq` (as numbered in `build`).
    #[inline]
    pub fn row_mut(&mut self, seq: usize, t: usize) -> &mut [f32] {
        let pos = self.pos_of_seq[seq] as usize;
        let r = self.layout.row(pos, t);
        &mut self.data[r * self.width..(r + 1) * self.width]
    }

    /// Row `r` of the data.
    #[inline]
    pub fn row_data(&self, r: usize) -> &[f32] {
        &self.data[r * self.width..(r + 1) * self.width]
    }

    /// Every output row as `(sequence id, input step that completed it, values)`, grouped by
    /// sequence and in step order within each sequence.
    pub fn rows(&self) -> impl Iterator<Item = (u32, u32, &[f32])> + '_ {
        let l = &self.layout;
        (0..l.len()).flat_map(move |pos| {
            (0..l.lens[pos] as usize).map(move |t| {
                let r = l.row(pos, t);
                (l.seq[pos], l.tags[r], self.row_data(r))
            })
        })
    }

    /// Resizes `data` for the current layout and a new width. The values are left as they
    /// were (every layer overwrites every row of its output): clearing them cost a memset of
    /// the whole output per call, 8 MB per 16k rows at width 128.
    pub(crate) fn reshape(&mut self, width: usize) {
        self.width = width;
        self.data.resize(self.layout.rows() * width, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_sorts_and_counts_wavefronts() {
        let mut p = Packed::default();
        p.build(1, &[2, 0, 3, 1]);
        assert_eq!(p.layout.seq, vec![2, 0, 3, 1]);
        assert_eq!(p.layout.lens, vec![3, 2, 1, 0]);
        assert_eq!(p.layout.batch_sizes, vec![3, 2, 1]);
        assert_eq!(p.layout.offsets, vec![0, 3, 5, 6]);
        for (s, t) in [(0, 0), (0, 1), (2, 0), (2, 1), (2, 2), (3, 0)] {
            p.row_mut(s, t)[0] = (s * 10 + t) as f32;
        }
        let rows: Vec<_> = p.rows().map(|(s, t, v)| (s, t, v[0])).collect();
        assert_eq!(
            rows,
            vec![
                (2, 0, 20.0),
                (2, 1, 21.0),
                (2, 2, 22.0),
                (0, 0, 0.0),
                (0, 1, 1.0),
                (3, 0, 30.0)
            ]
        );
    }
}
