//! Row-major predictions into columns, for the Arrow/Parquet sink.
//!
//! Why a kernel: a prediction batch is row-major (`n` rows of `w` outputs) and Arrow wants
//! one contiguous array per output. At 128 outputs that is 131 M values per million rows, and
//! moving them one by one (a strided read per value) was 8% of a wide job's samples, the
//! largest item of the sink thread after Parquet itself. With AVX, 8 x 8 blocks are
//! transposed in registers (8 loads, 24 shuffles, 8 stores per 64 values).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of a block (and columns: blocks are square).
const B: usize = 8;

/// The `w` columns of `n` row-major rows (`values[r * w + c]`), each in row order.
pub fn columns(values: &[f32], n: usize, w: usize) -> Vec<Vec<f32>> {
    let mut cols: Vec<Vec<f32>> = (0..w).map(|_| Vec::with_capacity(n)).collect();
    append(values, n, w, &mut cols);
    cols
}

/// Appends `n` row-major rows (`values[r * w + c]`) to `w` columns, each in row order.
///
/// Columns are built by appending, block of rows by block of rows, so nothing is
/// zero-filled first; a block of 8 rows (4 KB at 128 outputs) stays in L1 while every
/// column takes its values.
pub fn append(values: &[f32], n: usize, w: usize, cols: &mut [Vec<f32>]) {
    assert!(
        values.len() >= n * w && cols.len() == w,
        "transpose: {} values for {n} x {w}, {} columns",
        values.len(),
        cols.len()
    );
    for c in cols.iter_mut() {
        c.reserve(n);
    }
    let whole = n / B * B;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: AVX is present; rows 0..whole are inside `values` (asserted above).
        unsafe { blocks_avx(values, whole, w, cols) };
    } else {
        blocks_scalar(values, 0, whole, w, cols);
    }
    #[cfg(not(target_arch = "x86_64"))]
    blocks_scalar(values, 0, whole, w, cols);
    blocks_scalar(values, whole, n, w, cols);
}

/// Rows `r0..r1` appended to the columns one value at a time.
fn blocks_scalar(values: &[f32], r0: usize, r1: usize, w: usize, cols: &mut [Vec<f32>]) {
    for r in r0..r1 {
        for (col, &v) in cols.iter_mut().zip(&values[r * w..(r + 1) * w]) {
            col.push(v);
        }
    }
}

/// Rows `0..rows` (a multiple of 8) appended to the columns: whole 8 x 8 blocks transposed in
/// registers; the last `w % 8` columns of each block of rows one value at a time.
///
/// # Safety
/// AVX present; `values` holds `rows * w` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn blocks_avx(values: &[f32], rows: usize, w: usize, cols: &mut [Vec<f32>]) {
    let whole_cols = w / B * B;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..whole_cols).step_by(B) {
            let mut m = [_mm256_setzero_ps(); B];
            for (i, m) in m.iter_mut().enumerate() {
                // SAFETY: row r0 + i < rows, columns c0..c0 + 8 <= w: inside `values`.
                *m = unsafe { _mm256_loadu_ps(values.as_ptr().add((r0 + i) * w + c0)) };
            }
            let t = transpose8(m);
            let mut out = [0.0f32; B];
            for (j, t) in t.iter().enumerate() {
                // SAFETY: `out` holds 8 floats.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr(), *t) };
                cols[c0 + j].extend_from_slice(&out);
            }
        }
        for (c, col) in cols.iter_mut().enumerate().skip(whole_cols) {
            col.extend((r0..r0 + B).map(|r| values[r * w + c]));
        }
    }
}

/// The classic 8 x 8 transpose: `out[j]` holds lane `j` of every input row, in row order.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx")]
fn transpose8(r: [__m256; B]) -> [__m256; B] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_in_row_order() {
        for (n, w) in [
            (0, 3),
            (1, 1),
            (15, 2),
            (16, 128),
            (37, 5),
            (100, 0),
            (8, 8),
            (9, 17),
            (64, 24),
            (3, 130),
        ] {
            let values: Vec<f32> = (0..n * w).map(|i| i as f32).collect();
            let cols = columns(&values, n, w);
            assert_eq!(cols.len(), w);
            for (c, col) in cols.iter().enumerate() {
                let want: Vec<f32> = (0..n).map(|r| (r * w + c) as f32).collect();
                assert_eq!(col, &want, "n {n}, w {w}, column {c}");
            }
        }
    }

    #[test]
    fn the_scalar_path_agrees() {
        let (n, w) = (24, 19);
        let values: Vec<f32> = (0..n * w).map(|i| (i as f32).sin()).collect();
        let mut cols: Vec<Vec<f32>> = vec![Vec::new(); w];
        blocks_scalar(&values, 0, n, w, &mut cols);
        assert_eq!(cols, columns(&values, n, w));
    }

    #[test]
    fn appending_parts_equals_the_whole() {
        let (n, w) = (45, 11);
        let values: Vec<f32> = (0..n * w).map(|i| i as f32).collect();
        let mut cols: Vec<Vec<f32>> = vec![Vec::new(); w];
        for (r0, r1) in [(0, 13), (13, 14), (14, 30), (30, 45)] {
            append(&values[r0 * w..r1 * w], r1 - r0, w, &mut cols);
        }
        assert_eq!(cols, columns(&values, n, w));
    }
}
