//! Predictions to Parquet, with as few passes over the values as the format allows.
//!
//! Why not arrow-rs' `ArrowWriter`: it writes every primitive column through a gather by
//! index (`write_gather`): a vector of all the column's indices is built, then every value
//! is copied by index into a fresh vector before being encoded, even in columns without
//! nulls. And it compresses every column with the file's codec, though float predictions are
//! noise to snappy (a wide LSTM output came out 0.01% *larger* compressed, for 0.15 s of a
//! 1 s run's writer thread). Here:
//!
//! - A row group's predictions are kept as columns: each batch's row-major values are
//!   transposed once, straight into the row group's column buffers (`kernels::transpose`).
//! - At the row group's end each column is handed whole to Parquet's typed column writer
//!   (`write_batch(values, None, None)`: the columns are required, so there are no levels),
//!   which copies it into its pages; the pages go to the file.
//! - The key and time columns keep arrow-rs' Arrow writers (their types are the input's:
//!   strings, unsigned, dates, timestamps), dictionary-encoded key, min/max statistics.
//! - The codec: the key and time columns always get the configured one. A prediction column
//!   gets it only when it pays: at the first row group, the first 16,384 values of each
//!   column are compressed with it, and a column the codec does not shrink by at least
//!   [`MIN_SAVING_PERCENT`] is stored uncompressed in the whole file. (Parquet records the
//!   codec per column chunk, and every reader honours it.) A first row group of fewer than
//!   1,024 rows tells too little, and every column keeps the codec.
//!
//! The file writer is therefore created at the first row group (or at the first checkpoint
//! or close, whichever comes first); until then the file is empty.

use std::fs::File;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowRowGroupWriterFactory};
use parquet::arrow::{add_encoded_arrow_schema_to_metadata, ArrowSchemaConverter};
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::FloatType;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::RowGroupMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{ColumnPath, SchemaDescriptor};

use crate::vocab::Compression as Codec;

/// A prediction column is compressed only when its codec saves at least this share of its
/// bytes (measured on its first values).
pub const MIN_SAVING_PERCENT: usize = 3;

/// Values of each prediction column the codec is tried on (64 KB: about one page).
const PROBE_VALUES: usize = 16_384;

/// Fewer values than this say too little: the column keeps the codec (a live run's first
/// row group can be a handful of rows).
const MIN_PROBE_VALUES: usize = 1_024;

/// How the output is laid out: the part of the sink's configuration Parquet needs.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Rows per row group.
    pub row_group_rows: usize,
    /// The configured codec.
    pub codec: Codec,
    /// Min/max statistics for the prediction columns too.
    pub statistics: bool,
}

/// The file, before and after its writer exists.
enum State {
    /// Nothing written yet: the codecs are chosen from the first row group.
    Pending(File),
    Open {
        writer: Box<SerializedFileWriter<File>>,
        /// Makes the key and time columns' Arrow writers, row group by row group.
        head: ArrowRowGroupWriterFactory,
    },
    /// Finished, or failed: nothing more can be written.
    Closed,
}

/// A Parquet file of predictions: key, time, then `width` required Float32 columns.
pub struct PredictionWriter {
    schema: SchemaRef,
    /// The Parquet schema of `schema`, converted once (a type Parquet cannot hold is
    /// refused when the writer is made, not at its first row group).
    parquet: SchemaDescriptor,
    /// The key and time fields alone: what the Arrow column writers cover.
    head_schema: SchemaRef,
    layout: Layout,
    state: State,
    /// The row group being gathered: key and time arrays as they came, predictions by column.
    keys: Vec<ArrayRef>,
    times: Vec<ArrayRef>,
    columns: Vec<Vec<f32>>,
    rows: usize,
    /// Row groups written (the key and time writers are numbered by it).
    row_groups: usize,
}

impl PredictionWriter {
    /// A writer of `schema` (key, time, then required Float32 columns) into `file`, which
    /// must be empty and positioned at its start.
    pub fn new(file: File, schema: SchemaRef, layout: Layout) -> Result<PredictionWriter> {
        let fields = schema.fields();
        if fields.len() < 2 {
            return Err(general("an output has a key and a time column"));
        }
        if let Some(f) = fields[2..]
            .iter()
            .find(|f| f.data_type() != &DataType::Float32 || f.is_nullable())
        {
            return Err(general(&format!(
                "prediction column `{}` is {}{}, not a required Float32",
                f.name(),
                if f.is_nullable() { "nullable " } else { "" },
                f.data_type()
            )));
        }
        let parquet = ArrowSchemaConverter::new().convert(&schema)?;
        let head_schema = Arc::new(Schema::new(fields[..2].to_vec()));
        let width = fields.len() - 2;
        Ok(PredictionWriter {
            schema,
            parquet,
            head_schema,
            layout: Layout {
                row_group_rows: layout.row_group_rows.max(1),
                ..layout
            },
            state: State::Pending(file),
            keys: Vec::new(),
            times: Vec::new(),
            columns: vec![Vec::new(); width],
            rows: 0,
            row_groups: 0,
        })
    }

    /// Appends `n` rows: their keys and times, and `values` row-major (`n` x width).
    pub fn write(&mut self, keys: &ArrayRef, times: &ArrayRef, values: &[f32]) -> Result<()> {
        let n = keys.len();
        let width = self.columns.len();
        if times.len() != n || values.len() != n * width {
            return Err(general(&format!(
                "{n} keys, {} times and {} values for {width} outputs per row",
                times.len(),
                values.len()
            )));
        }
        self.append(keys, times, |columns, at, len| {
            let rows = &values[at * width..(at + len) * width];
            crate::kernels::transpose::append(rows, len, width, columns);
        })
    }

    /// Appends a record batch of the output's schema (a resumed run's committed rows).
    pub fn write_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(general("a batch of another schema than the output's"));
        }
        // The schema was checked: these are Float32 columns.
        let floats: Vec<&Float32Array> = batch.columns()[2..]
            .iter()
            .map(|a| a.as_any().downcast_ref::<Float32Array>().expect("Float32"))
            .collect();
        self.append(batch.column(0), batch.column(1), |columns, at, len| {
            for (col, f) in columns.iter_mut().zip(&floats) {
                col.extend_from_slice(&f.values()[at..at + len]);
            }
        })
    }

    /// Appends rows of `keys` and `times` (checked of one length), cut at row group ends;
    /// `values(columns, at, len)` appends the predictions of rows `at..at + len`.
    fn append(
        &mut self,
        keys: &ArrayRef,
        times: &ArrayRef,
        mut values: impl FnMut(&mut [Vec<f32>], usize, usize),
    ) -> Result<()> {
        if matches!(self.state, State::Closed) {
            return Err(closed());
        }
        let n = keys.len();
        let mut done = 0;
        while done < n {
            let take = (self.layout.row_group_rows - self.rows).min(n - done);
            self.make_room(take);
            self.keys.push(keys.slice(done, take));
            self.times.push(times.slice(done, take));
            values(&mut self.columns, done, take);
            self.rows += take;
            done += take;
            if self.rows == self.layout.row_group_rows {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Room for `more` rows in every column: doubling, but never past a row group, so a
    /// full row group holds `row_group_rows` values per column and no more.
    fn make_room(&mut self, more: usize) {
        let need = self.rows + more;
        for col in &mut self.columns {
            if col.capacity() < need {
                let grown = need.max(2 * col.capacity()).min(self.layout.row_group_rows);
                col.reserve_exact(grown - col.len());
            }
        }
    }

    /// Writes the rows gathered so far as a row group (nothing when there are none). After
    /// a failure the writer is closed: the file is abandoned, never finished.
    pub fn flush(&mut self) -> Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let r = self.write_row_group();
        if r.is_err() {
            self.state = State::Closed;
        }
        r
    }

    fn write_row_group(&mut self) -> Result<()> {
        self.open()?;
        let State::Open { writer, head } = &mut self.state else {
            return Err(closed());
        };
        let mut head_writers = head.create_column_writers(self.row_groups)?;
        let gathered = [std::mem::take(&mut self.keys), std::mem::take(&mut self.times)];
        for ((w, arrays), field) in head_writers
            .iter_mut()
            .zip(&gathered)
            .zip(self.head_schema.fields())
        {
            for a in arrays {
                for leaf in compute_leaves(field, a)? {
                    w.write(&leaf)?;
                }
            }
        }
        let mut rg = writer.next_row_group()?;
        for w in head_writers {
            w.close()?.append_to_row_group(&mut rg)?;
        }
        for col in &mut self.columns {
            let mut c = rg
                .next_column()?
                .ok_or_else(|| general("more prediction columns than the schema's"))?;
            c.typed::<FloatType>().write_batch(col, None, None)?;
            c.close()?;
            col.clear();
        }
        rg.close()?;
        self.rows = 0;
        self.row_groups += 1;
        // The row group reaches the file now (not at the next one): a replacing output is
        // sent to disk as the file grows (`Sink`).
        writer.flush()?;
        Ok(())
    }

    /// Pushes what the writer buffers to the file (after [`PredictionWriter::flush`], the
    /// file then holds every row group written; the footer comes at close).
    pub fn sync(&mut self) -> Result<()> {
        self.open()?;
        match &mut self.state {
            State::Open { writer, .. } => Ok(writer.flush()?),
            _ => Err(closed()),
        }
    }

    /// The row groups in the file so far.
    pub fn flushed_row_groups(&self) -> &[RowGroupMetaData] {
        match &self.state {
            State::Open { writer, .. } => writer.flushed_row_groups(),
            _ => &[],
        }
    }

    /// The footer (file metadata, its length, the magic) that makes the row groups flushed
    /// so far a complete file when appended after them: what a checkpoint records.
    pub fn footer(&self) -> Result<Vec<u8>> {
        use parquet::file::metadata::{FileMetaData, ParquetMetaData, ParquetMetaDataWriter};
        let row_groups = self.flushed_row_groups();
        let rows = row_groups.iter().map(|r| r.num_rows()).sum();
        let meta = FileMetaData::new(
            1,
            rows,
            Some("seqflow checkpoint".into()),
            None,
            Arc::new(self.parquet.clone()),
            None,
        );
        let meta = ParquetMetaData::new(meta, row_groups.to_vec());
        let mut out = Vec::new();
        ParquetMetaDataWriter::new(&mut out, &meta)
            .with_preserve_page_index_locations(false)
            .finish()?;
        Ok(out)
    }

    /// Writes the last row group and the footer.
    pub fn close(mut self) -> Result<()> {
        self.flush()?;
        self.open()?;
        match &mut self.state {
            State::Open { writer, .. } => writer.finish().map(|_| ()),
            _ => Err(closed()),
        }
    }

    /// Creates the file writer, if it is not yet: each prediction column's codec chosen
    /// from the values gathered so far.
    fn open(&mut self) -> Result<()> {
        let file = match std::mem::replace(&mut self.state, State::Closed) {
            State::Pending(f) => f,
            other => {
                self.state = other;
                return Ok(());
            }
        };
        let codec = match self.layout.codec {
            Codec::Snappy => Compression::SNAPPY,
            Codec::Zstd => Compression::ZSTD(ZstdLevel::default()),
            Codec::None => Compression::UNCOMPRESSED,
        };
        let key = ColumnPath::from(self.schema.field(0).name().as_str());
        let time = ColumnPath::from(self.schema.field(1).name().as_str());
        // Dictionaries pay off for keys (repeated) but not for predictions (nearly all
        // distinct): dictionary-encoding float columns took 36% of a run's time. Min/max of
        // float predictions are rarely queried and cost a sixth of the writer's encoding
        // time on wide outputs; keys and times keep theirs.
        let mut props = WriterProperties::builder()
            .set_compression(codec)
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled(key.clone(), true)
            .set_statistics_enabled(match self.layout.statistics {
                true => EnabledStatistics::Page,
                false => EnabledStatistics::None,
            })
            .set_column_statistics_enabled(key, EnabledStatistics::Page)
            .set_column_statistics_enabled(time, EnabledStatistics::Page);
        for (field, col) in self.schema.fields()[2..].iter().zip(&self.columns) {
            if !pays(self.layout.codec, col) {
                props = props.set_column_compression(
                    ColumnPath::from(field.name().as_str()),
                    Compression::UNCOMPRESSED,
                );
            }
        }
        let mut props = props.build();
        add_encoded_arrow_schema_to_metadata(&self.schema, &mut props);
        let writer = SerializedFileWriter::new(file, self.parquet.root_schema_ptr(), Arc::new(props))?;
        let head = ArrowRowGroupWriterFactory::new(&writer, self.head_schema.clone());
        self.state = State::Open {
            writer: Box::new(writer),
            head,
        };
        Ok(())
    }
}

fn general(msg: &str) -> ParquetError {
    ParquetError::General(msg.into())
}

fn closed() -> ParquetError {
    general("the Parquet writer is closed (finished, or failed earlier)")
}

/// Whether `codec` shrinks the first values of a column by at least
/// [`MIN_SAVING_PERCENT`] (a column with too few values yet to tell keeps the codec).
fn pays(codec: Codec, values: &[f32]) -> bool {
    let sample = &values[..values.len().min(PROBE_VALUES)];
    if sample.len() < MIN_PROBE_VALUES || codec == Codec::None {
        return true;
    }
    let raw: Vec<u8> = sample.iter().flat_map(|v| v.to_le_bytes()).collect();
    let packed = match codec {
        Codec::Snappy => snap::raw::Encoder::new().compress_vec(&raw).ok(),
        _ => zstd::bulk::compress(&raw, ZstdLevel::default().compression_level()).ok(),
    };
    packed.is_some_and(|p| p.len() * 100 <= raw.len() * (100 - MIN_SAVING_PERCENT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Int64Array, StringArray};
    use arrow::datatypes::Field;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn schema(key: DataType, time: DataType, width: usize) -> SchemaRef {
        let mut fields = vec![Field::new("k", key, false), Field::new("t", time, false)];
        fields.extend((0..width).map(|j| Field::new(format!("y{j}"), DataType::Float32, false)));
        Arc::new(Schema::new(fields))
    }

    fn layout(row_group_rows: usize, codec: Codec) -> Layout {
        Layout {
            row_group_rows,
            codec,
            statistics: false,
        }
    }

    /// Incompressible floats: random bits, never NaN or infinite.
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let bits = (s >> 32) as u32;
                let v = f32::from_bits(bits);
                if v.is_finite() {
                    v
                } else {
                    f32::from_bits(bits ^ 0x4000_0000)
                }
            })
            .collect()
    }

    fn codecs(path: &std::path::Path) -> Vec<Vec<Compression>> {
        let r = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        r.metadata()
            .row_groups()
            .iter()
            .map(|rg| rg.columns().iter().map(|c| c.compression()).collect())
            .collect()
    }

    #[test]
    fn rows_come_back_as_written_across_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        let width = 5;
        let schema = schema(DataType::Utf8, DataType::Date32, width);
        let mut w = PredictionWriter::new(
            File::create(&path).unwrap(),
            schema.clone(),
            layout(1000, Codec::Snappy),
        )
        .unwrap();
        let n = 2600;
        let keys: Vec<String> = (0..n).map(|i| format!("key-{}", i % 37)).collect();
        let times: Vec<i32> = (0..n as i32).collect();
        let values = noise(n * width, 7);
        // Batches that cross row groups, one of them a record batch (a resumed run's rows).
        let mut at = 0;
        for len in [1, 998, 700, 800] {
            let k: ArrayRef = Arc::new(StringArray::from_iter_values(&keys[at..at + len]));
            let t: ArrayRef = Arc::new(Date32Array::from(times[at..at + len].to_vec()));
            w.write(&k, &t, &values[at * width..(at + len) * width]).unwrap();
            at += len;
        }
        let len = n - at;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(&keys[at..])),
            Arc::new(Date32Array::from(times[at..].to_vec())),
        ];
        for j in 0..width {
            cols.push(Arc::new(Float32Array::from_iter_values(
                (0..len).map(|r| values[(at + r) * width + j]),
            )));
        }
        w.write_batch(&RecordBatch::try_new(schema.clone(), cols).unwrap())
            .unwrap();
        w.close().unwrap();

        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.schema(), &schema, "the Arrow schema is stored");
        assert_eq!(
            reader
                .metadata()
                .row_groups()
                .iter()
                .map(|rg| rg.num_rows())
                .collect::<Vec<_>>(),
            [1000, 1000, 600]
        );
        let batches: Vec<RecordBatch> = reader.build().unwrap().map(Result::unwrap).collect();
        let all = arrow::compute::concat_batches(&schema, &batches).unwrap();
        assert_eq!(all.num_rows(), n);
        let k = all.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let t = all.column(1).as_any().downcast_ref::<Date32Array>().unwrap();
        for r in 0..n {
            assert_eq!(k.value(r), keys[r]);
            assert_eq!(t.value(r), times[r]);
        }
        for j in 0..width {
            let y = all.column(2 + j).as_any().downcast_ref::<Float32Array>().unwrap();
            for r in 0..n {
                assert_eq!(
                    y.value(r).to_bits(),
                    values[r * width + j].to_bits(),
                    "row {r} column {j}"
                );
            }
        }
    }

    #[test]
    fn a_codec_that_does_not_pay_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let n = 3000;
        let noisy = noise(n, 3);
        // Column 0 noise, column 1 zeros, column 2 a few repeated values.
        let values: Vec<f32> = (0..n).flat_map(|r| [noisy[r], 0.0, (r % 4) as f32]).collect();
        let write = |codec: Codec, rows: usize| {
            let path = dir.path().join(format!("{codec:?}-{rows}.parquet"));
            let mut w = PredictionWriter::new(
                File::create(&path).unwrap(),
                schema(DataType::Int64, DataType::Int64, 3),
                layout(2000, codec),
            )
            .unwrap();
            let k: ArrayRef = Arc::new(Int64Array::from_iter_values((0..rows as i64).map(|i| i % 10)));
            let t: ArrayRef = Arc::new(Int64Array::from_iter_values(0..rows as i64));
            w.write(&k, &t, &values[..rows * 3]).unwrap();
            w.flush().unwrap();
            w.close().unwrap();
            codecs(&path)
        };
        use Compression::{SNAPPY, UNCOMPRESSED};
        let zstd = Compression::ZSTD(ZstdLevel::default());
        // Two row groups; the choice made at the first holds for the second.
        let want = [SNAPPY, SNAPPY, UNCOMPRESSED, SNAPPY, SNAPPY];
        assert_eq!(write(Codec::Snappy, n), [want, want]);
        let want = [zstd, zstd, UNCOMPRESSED, zstd, zstd];
        assert_eq!(write(Codec::Zstd, n), [want, want]);
        assert_eq!(write(Codec::None, n), [[UNCOMPRESSED; 5], [UNCOMPRESSED; 5]]);
        // A first row group too small to tell keeps the codec everywhere.
        assert_eq!(write(Codec::Snappy, 100), [[SNAPPY; 5]]);
    }

    #[test]
    fn an_output_without_rows_is_a_valid_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.parquet");
        let schema = schema(DataType::Int64, DataType::Int64, 2);
        let mut w = PredictionWriter::new(
            File::create(&path).unwrap(),
            schema.clone(),
            layout(10, Codec::Snappy),
        )
        .unwrap();
        w.flush().unwrap();
        w.close().unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.schema(), &schema);
        assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
    }

    #[test]
    fn bad_batches_and_failed_writes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        let schema = schema(DataType::Int64, DataType::Int64, 2);
        let k: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let t: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let mut w = PredictionWriter::new(
            File::create(&path).unwrap(),
            schema.clone(),
            layout(2, Codec::Snappy),
        )
        .unwrap();
        let e = w.write(&k, &t, &[0.0; 6]).unwrap_err().to_string();
        assert!(e.contains("3 keys, 2 times and 6 values for 2 outputs"), "{e}");
        let nullable = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("t", DataType::Int64, false),
            Field::new("y", DataType::Float32, true),
        ]));
        let e = PredictionWriter::new(File::create(&path).unwrap(), nullable, layout(2, Codec::Snappy))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`y` is nullable Float32"), "{e}");

        // A file that cannot be written: the row group fails (its pages are larger than the
        // writer's buffer), and so does all that follows.
        std::fs::write(&path, b"").unwrap();
        let read_only = File::open(&path).unwrap();
        let mut w = PredictionWriter::new(read_only, schema, layout(4096, Codec::None)).unwrap();
        let k: ArrayRef = Arc::new(Int64Array::from_iter_values(0..4096));
        let values = noise(2 * 4096, 5);
        let e = w.write(&k, &k, &values).unwrap_err().to_string();
        assert!(e.contains("Bad file descriptor"), "{e}");
        let e = w.write(&k, &k, &values).unwrap_err().to_string();
        assert!(e.contains("failed earlier"), "{e}");
        assert!(w.close().is_err());
    }

    /// What a checkpoint does (flush, sync, measure, footer), before any row and after
    /// some: the committed bytes plus the footer read back as the rows written so far.
    #[test]
    fn synced_bytes_and_footer_are_a_complete_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        let schema = schema(DataType::Int64, DataType::Int64, 3);
        let file = File::create(&path).unwrap();
        let measure = file.try_clone().unwrap();
        let mut w = PredictionWriter::new(file, schema, layout(1000, Codec::Snappy)).unwrap();
        let check = |w: &mut PredictionWriter, rows: i64| {
            w.flush().unwrap();
            w.sync().unwrap();
            let len = measure.metadata().unwrap().len() as usize;
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.truncate(len);
            bytes.extend(w.footer().unwrap());
            let copy = path.with_extension("committed");
            std::fs::write(&copy, bytes).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&copy).unwrap()).unwrap();
            assert_eq!(reader.metadata().file_metadata().num_rows(), rows);
            let read: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
            assert_eq!(read as i64, rows);
        };
        check(&mut w, 0);
        let k: ArrayRef = Arc::new(Int64Array::from_iter_values(0..1500));
        w.write(&k, &k, &noise(4500, 9)).unwrap();
        check(&mut w, 1500);
        w.write(&k, &k, &noise(4500, 10)).unwrap();
        check(&mut w, 3000);
    }
}
