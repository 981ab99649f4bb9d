//! One worker's share of a checkpoint: every key it holds, one row per key, as an Arrow IPC
//! file (readable by pyarrow: `pyarrow.ipc.open_file(path).read_all()`).
//!
//! Columns (the README documents them for users):
//!
//! | column | type | holds |
//! |---|---|---|
//! | `key` | int64 or utf8 | the key |
//! | `group` | uint16 | its key group ([`crate::record::KEY_GROUPS`]); owner = group % workers |
//! | `last_time` | int64, null before a first step | the time of its last processed step |
//! | `fill` | `list<float32>`, null without `nan = "ffill"` | its forward-fill values |
//! | `state` | `large_list<float32>` | model state (every layer's rows in order), or the window ring, or the held inputs |
//! | `counters` | `list<uint64>` | step counters of strided/windowed layers, or the window's step count |
//! | `held_times` | `large_list<int64>` | `sequence_end`: times of the held outputs or inputs |
//! | `held_values` | `large_list<float32>` | `sequence_end`: held outputs |
//!
//! A part is written to `NAME.tmp`, synced and renamed, while a CRC-32 of its bytes is
//! computed on the way; the manifest records size and checksum, so a truncated or altered
//! part is found before anything is restored from it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Int64Array, LargeListArray, ListArray, RecordBatch, StringArray,
    UInt16Array, UInt64Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema, UInt16Type, UInt64Type};

use crate::error::{Error, Result};
use crate::record::{KeyColumn, KeyRef};

/// Values of variable length per key, back to back: key `i` has `values[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Flat<T> {
    /// One more than the keys; starts at 0.
    pub offsets: Vec<i64>,
    /// Every key's values.
    pub values: Vec<T>,
}

impl<T: Copy> Default for Flat<T> {
    fn default() -> Self {
        Flat {
            offsets: vec![0],
            values: Vec::new(),
        }
    }
}

impl<T: Copy> Flat<T> {
    /// Appends one key's values.
    pub fn push(&mut self, vals: &[T]) {
        self.values.extend_from_slice(vals);
        self.offsets.push(self.values.len() as i64);
    }

    /// Key `i`'s values.
    pub fn row(&self, i: usize) -> &[T] {
        &self.values[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// The keyed state of one worker, column by column (what [`crate::keyed::KeyedProcessor`]
/// exports and imports).
#[derive(Debug, Clone, PartialEq)]
pub struct StateRows {
    /// The keys.
    pub keys: KeyColumn,
    /// Last processed time per key (`None`: no step yet).
    pub last_time: Vec<Option<i64>>,
    /// Forward-fill width (0: the NaN policy does not fill).
    pub fill_width: usize,
    /// `keys x fill_width` forward-fill values.
    pub fill: Vec<f32>,
    /// Model state, window ring or held inputs.
    pub state: Flat<f32>,
    /// Layer step counters or the window's step count.
    pub counters: Flat<u64>,
    /// `sequence_end`: times held.
    pub held_times: Flat<i64>,
    /// `sequence_end`: outputs held.
    pub held_values: Flat<f32>,
}

impl StateRows {
    /// No keys yet, of the kind of `keys`.
    pub fn new(int_keys: bool, fill_width: usize) -> StateRows {
        StateRows {
            keys: if int_keys {
                KeyColumn::Int(Vec::new())
            } else {
                KeyColumn::empty_str()
            },
            last_time: Vec::new(),
            fill_width,
            fill: Vec::new(),
            state: Flat::default(),
            counters: Flat::default(),
            held_times: Flat::default(),
            held_values: Flat::default(),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.last_time.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.last_time.is_empty()
    }

    /// Key `i`'s forward-fill values (empty without ffill).
    pub fn fill_row(&self, i: usize) -> &[f32] {
        &self.fill[i * self.fill_width..(i + 1) * self.fill_width]
    }

    fn schema(&self) -> Arc<Schema> {
        let key = match self.keys {
            KeyColumn::Int(_) => DataType::Int64,
            KeyColumn::Str { .. } => DataType::Utf8,
        };
        let item = |t: DataType| Arc::new(Field::new("item", t, false));
        Arc::new(Schema::new(vec![
            Field::new("key", key, false),
            Field::new("group", DataType::UInt16, false),
            Field::new("last_time", DataType::Int64, true),
            Field::new("fill", DataType::List(item(DataType::Float32)), true),
            Field::new("state", DataType::LargeList(item(DataType::Float32)), false),
            Field::new("counters", DataType::List(item(DataType::UInt64)), false),
            Field::new("held_times", DataType::LargeList(item(DataType::Int64)), false),
            Field::new("held_values", DataType::LargeList(item(DataType::Float32)), false),
        ]))
    }

    /// The rows as one Arrow record batch (the value buffers move, not copied).
    pub fn into_batch(self) -> Result<RecordBatch> {
        let n = self.len();
        let schema = self.schema();
        let item = |t: DataType| Arc::new(Field::new("item", t, false));
        let keys: ArrayRef = match &self.keys {
            KeyColumn::Int(v) => Arc::new(Int64Array::from(v.clone())),
            KeyColumn::Str { .. } => {
                Arc::new(StringArray::from_iter_values((0..n).map(
                    |i| match self.keys.get(i) {
                        KeyRef::Str(s) => s,
                        KeyRef::Int(_) => unreachable!("a string column"),
                    },
                )))
            }
        };
        let groups: ArrayRef = Arc::new(UInt16Array::from_iter_values(
            (0..n).map(|i| self.keys.get(i).group()),
        ));
        let last: ArrayRef = Arc::new(Int64Array::from(self.last_time));
        let fill: ArrayRef = {
            let w = self.fill_width as i32;
            let offsets: Vec<i32> = (0..=n as i32).map(|i| i * w).collect();
            let nulls = (w == 0).then(|| NullBuffer::new_null(n));
            Arc::new(ListArray::new(
                item(DataType::Float32),
                OffsetBuffer::new(offsets.into()),
                Arc::new(Float32Array::from(self.fill)),
                nulls,
            ))
        };
        fn large(offsets: Vec<i64>, field: Arc<Field>, values: ArrayRef) -> ArrayRef {
            Arc::new(LargeListArray::new(
                field,
                OffsetBuffer::new(offsets.into()),
                values,
                None,
            ))
        }
        let state = large(
            self.state.offsets,
            item(DataType::Float32),
            Arc::new(Float32Array::from(self.state.values)),
        );
        let counters: ArrayRef = Arc::new(ListArray::new(
            item(DataType::UInt64),
            OffsetBuffer::new(
                self.counters
                    .offsets
                    .iter()
                    .map(|&o| o as i32)
                    .collect::<Vec<_>>()
                    .into(),
            ),
            Arc::new(UInt64Array::from(self.counters.values)),
            None,
        ));
        let held_times = large(
            self.held_times.offsets,
            item(DataType::Int64),
            Arc::new(Int64Array::from(self.held_times.values)),
        );
        let held_values = large(
            self.held_values.offsets,
            item(DataType::Float32),
            Arc::new(Float32Array::from(self.held_values.values)),
        );
        RecordBatch::try_new(
            schema,
            vec![keys, groups, last, fill, state, counters, held_times, held_values],
        )
        .map_err(|e| Error::Runtime(format!("checkpoint part: {e}")))
    }

    /// Appends the rows of `batch` (a part's batch) whose key group `keep` accepts.
    pub fn extend_from_batch(
        &mut self,
        batch: &RecordBatch,
        keep: impl Fn(u16) -> bool,
    ) -> std::result::Result<(), String> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("column `{name}` is missing"))
        };
        let groups = col("group")?
            .as_primitive_opt::<UInt16Type>()
            .ok_or("column `group` is not uint16")?;
        let last = col("last_time")?
            .as_primitive_opt::<Int64Type>()
            .ok_or("column `last_time` is not int64")?;
        let fill = col("fill")?
            .as_list_opt::<i32>()
            .ok_or("column `fill` is not a list")?;
        let fill_vals = fill
            .values()
            .as_primitive_opt::<Float32Type>()
            .ok_or("column `fill` does not hold float32")?;
        let large_f32 = |name: &str| -> std::result::Result<(&LargeListArray, &Float32Array), String> {
            let l = col(name)?
                .as_list_opt::<i64>()
                .ok_or(format!("column `{name}` is not a large list"))?;
            let v = l
                .values()
                .as_primitive_opt::<Float32Type>()
                .ok_or(format!("column `{name}` does not hold float32"))?;
            Ok((l, v))
        };
        let (state, state_vals) = large_f32("state")?;
        let (held_values, held_value_vals) = large_f32("held_values")?;
        let counters = col("counters")?
            .as_list_opt::<i32>()
            .ok_or("column `counters` is not a list")?;
        let counter_vals = counters
            .values()
            .as_primitive_opt::<UInt64Type>()
            .ok_or("column `counters` does not hold uint64")?;
        let held_times = col("held_times")?
            .as_list_opt::<i64>()
            .ok_or("column `held_times` is not a large list")?;
        let held_time_vals = held_times
            .values()
            .as_primitive_opt::<Int64Type>()
            .ok_or("column `held_times` does not hold int64")?;
        let keys = col("key")?;
        for r in 0..batch.num_rows() {
            if !keep(groups.value(r)) {
                continue;
            }
            let key = match (&mut self.keys, keys.data_type()) {
                (KeyColumn::Int(_), DataType::Int64) => {
                    KeyRef::Int(keys.as_primitive::<Int64Type>().value(r))
                }
                (KeyColumn::Str { .. }, DataType::Utf8) => KeyRef::Str(keys.as_string::<i32>().value(r)),
                (_, t) => return Err(format!("column `key` is {t}, not the kind of this run's keys")),
            };
            if key.group() != groups.value(r) {
                return Err(format!(
                    "row {r}: key group {} does not match its key",
                    groups.value(r)
                ));
            }
            self.keys.push(key);
            self.last_time.push(last.is_valid(r).then(|| last.value(r)));
            if self.fill_width > 0 {
                let range = fill.value_offsets()[r] as usize..fill.value_offsets()[r + 1] as usize;
                if fill.is_null(r) || range.len() != self.fill_width {
                    return Err(format!(
                        "row {r}: `fill` does not hold {} values",
                        self.fill_width
                    ));
                }
                self.fill.extend_from_slice(&fill_vals.values()[range]);
            }
            let slice = |o: &[i64], r: usize| o[r] as usize..o[r + 1] as usize;
            self.state
                .push(&state_vals.values()[slice(state.value_offsets(), r)]);
            self.held_values
                .push(&held_value_vals.values()[slice(held_values.value_offsets(), r)]);
            self.held_times
                .push(&held_time_vals.values()[slice(held_times.value_offsets(), r)]);
            let c = counters.value_offsets();
            self.counters
                .push(&counter_vals.values()[c[r] as usize..c[r + 1] as usize]);
        }
        Ok(())
    }
}

/// A writer that counts bytes and computes their CRC-32.
struct Summing<W> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `rows` to `path` (through `path.partial`, synced, renamed). Returns size and
/// CRC-32.
pub fn write_part(path: &Path, rows: StateRows) -> Result<(u64, u32)> {
    let batch = rows.into_batch()?;
    let tmp = crate::outfiles::partial_path(path);
    let io = |e: std::io::Error| Error::io(&tmp, e);
    let file = crate::outfiles::create_fresh(&tmp).map_err(io)?;
    let sum = Summing {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        bytes: 0,
    };
    let arrow_err = |e: arrow::error::ArrowError| Error::Output {
        path: tmp.clone(),
        msg: e.to_string(),
    };
    let mut w = arrow::ipc::writer::FileWriter::try_new(sum, &batch.schema()).map_err(arrow_err)?;
    w.write(&batch).map_err(arrow_err)?;
    w.finish().map_err(arrow_err)?;
    let sum = w.into_inner().map_err(arrow_err)?;
    let (bytes, crc) = (sum.bytes, sum.crc.finalize());
    let file = sum.inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok((bytes, crc))
}

/// Size and CRC-32 of a file's bytes.
pub fn checksum(path: &Path) -> std::io::Result<(u64, u32)> {
    let mut f = File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = std::io::Read::read(&mut f, &mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, h.finalize()))
}

/// Reads a part, keeping the keys whose group `keep` accepts, appended to `into`.
pub fn read_part(path: &Path, into: &mut StateRows, keep: impl Fn(u16) -> bool) -> Result<()> {
    let err = |msg: String| Error::Data {
        path: path.to_path_buf(),
        msg: format!("checkpoint part: {msg}"),
    };
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = arrow::ipc::reader::FileReader::try_new(std::io::BufReader::with_capacity(1 << 20, f), None)
        .map_err(|e| err(e.to_string()))?;
    for batch in reader {
        let batch = batch.map_err(|e| err(e.to_string()))?;
        into.extend_from_batch(&batch, &keep).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(int: bool) -> StateRows {
        let mut s = StateRows::new(int, 2);
        for i in 0..5i64 {
            match &mut s.keys {
                KeyColumn::Int(v) => v.push(i * 1000 - 7),
                k => k.push(KeyRef::Str(["a", "", "ключ", "b7", "x"][i as usize])),
            }
            s.last_time.push((i != 2).then_some(i * 10));
            s.fill.extend([i as f32, -0.5]);
            s.state.push(&vec![i as f32 * 0.25; i as usize]);
            s.counters.push(&[i as u64; 1]);
            s.held_times.push(&[i, i + 1]);
            s.held_values
                .push(&[f32::MIN_POSITIVE, f32::NAN][..(i as usize % 3).min(2)]);
        }
        s
    }

    #[test]
    fn parts_round_trip_and_keep_only_the_groups_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        for int in [true, false] {
            let s = sample(int);
            let p = dir.path().join(format!("part-{int}.arrow"));
            let (bytes, crc) = write_part(&p, s.clone()).unwrap();
            assert_eq!(checksum(&p).unwrap(), (bytes, crc));
            let mut back = StateRows::new(int, 2);
            read_part(&p, &mut back, |_| true).unwrap();
            // NaN != NaN: compare bits.
            assert_eq!(
                format!(
                    "{:?}",
                    back.held_values
                        .values
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>()
                ),
                format!(
                    "{:?}",
                    s.held_values
                        .values
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>()
                )
            );
            assert_eq!(back.keys, s.keys);
            assert_eq!(back.last_time, s.last_time);
            assert_eq!(back.fill, s.fill);
            assert_eq!(back.state, s.state);
            assert_eq!(back.counters, s.counters);
            assert_eq!(back.held_times, s.held_times);
            // Two owners split the keys between them, each key to exactly one.
            let mut a = StateRows::new(int, 2);
            let mut b = StateRows::new(int, 2);
            read_part(&p, &mut a, |g| g % 2 == 0).unwrap();
            read_part(&p, &mut b, |g| g % 2 == 1).unwrap();
            assert_eq!(a.len() + b.len(), s.len());
            for i in 0..a.len() {
                assert_eq!(a.keys.get(i).group() % 2, 0);
            }
        }
    }
}
