//! `seqflow replay`: sends a dataset to a live pipeline as JSON lines, in time order, at a
//! given rate, over one or more TCP connections. Each key always goes over the same
//! connection, so its steps arrive in order. A load generator for demos, tests and benchmarks.

use std::io::{BufWriter, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Float32Type, Float64Type};

use crate::error::{Error, Result};
use crate::input::files::{self, FileSource};
use crate::record::KeyRef;
use crate::vocab::FileFormat;

/// What to replay and how fast.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The data file, directory or glob.
    pub data: PathBuf,
    /// `host:port` of the pipeline's tcp source.
    pub to: String,
    /// Rows per second over all connections; 0 = as fast as the server takes them.
    pub rate: f64,
    /// TCP connections; each key always uses the same one.
    pub connections: usize,
    /// Kafka: partitions of a topic created because it was missing.
    pub partitions: i32,
    /// Kafka: records per produce request.
    pub batch: usize,
    /// Key column (decides the connection).
    pub key: String,
    /// Time column (the replay order).
    pub time: String,
    /// Stop after this many rows.
    pub limit: Option<usize>,
    /// What goes over TCP: JSON lines, or one Arrow IPC stream per connection.
    pub arrow: bool,
}

/// What was sent.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Rows sent.
    pub rows: usize,
    /// Connections (Kafka: partitions) used.
    pub connections: usize,
    /// What `connections` counts: `connection` or `partition`.
    pub unit: &'static str,
    /// Time taken.
    pub elapsed: Duration,
    /// The rate asked for (0 = unlimited).
    pub target_rate: f64,
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "sent {} rows over {} {}{} in {:.2} s ({:.0} rows/s",
            self.rows,
            self.connections,
            self.unit,
            if self.connections == 1 { "" } else { "s" },
            self.elapsed.as_secs_f64(),
            rate
        )?;
        if self.target_rate > 0.0 {
            write!(f, "; target {:.0}", self.target_rate)?;
            if rate < 0.95 * self.target_rate {
                write!(f, ", held back by the server")?;
            }
        }
        write!(f, ")")
    }
}

fn data_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// Reads a data file (or every file of a directory or glob) into one batch. Text files infer
/// their column types one by one: a column that is integer in one file and float in another
/// is read as float, one that is empty (null) in one file takes the others' type, anything
/// else mixed is read as text.
fn read_all(path: &Path) -> Result<RecordBatch> {
    let source = FileSource::guess(path, FileFormat::Parquet);
    let mut parts = Vec::new();
    for f in source.expand()? {
        for b in files::read_all(&f, source.format)? {
            parts.push((f.clone(), b));
        }
    }
    let first = parts
        .first()
        .map(|p| p.1.schema())
        .ok_or_else(|| data_err(path, "no rows"))?;
    let unify = |a: &DataType, b: &DataType| match (a, b) {
        (a, b) if a == b => a.clone(),
        (DataType::Null, t) | (t, DataType::Null) => t.clone(),
        (a, b) if a.is_numeric() && b.is_numeric() => DataType::Float64,
        _ => DataType::Utf8,
    };
    let mut fields = Vec::new();
    for f in first.fields() {
        let mut t = f.data_type().clone();
        for (p, b) in &parts {
            let g = b
                .schema()
                .field_with_name(f.name())
                .map(|g| g.data_type().clone());
            let g =
                g.map_err(|_| data_err(p, format!("has no column `{}` (the first file has it)", f.name())))?;
            t = unify(&t, &g);
        }
        fields.push(arrow::datatypes::Field::new(f.name(), t, true));
    }
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
    let mut batches = Vec::with_capacity(parts.len());
    for (p, b) in &parts {
        let cols = schema
            .fields()
            .iter()
            .map(|f| arrow::compute::cast(b.column_by_name(f.name()).expect("checked"), f.data_type()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| data_err(p, e))?;
        batches.push(RecordBatch::try_new(schema.clone(), cols).map_err(|e| data_err(p, e))?);
    }
    concat_batches(&schema, &batches).map_err(|e| data_err(path, e))
}

/// One row as a JSON object, NaN/inf as null (JSON has no NaN).
fn json_line(cols: &[(String, ArrayRef)], row: usize, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (name, col)) in cols.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, name).expect("string");
        out.push(b':');
        if col.is_null(row) {
            out.extend_from_slice(b"null");
            continue;
        }
        let v: serde_json::Value = match col.data_type() {
            DataType::Utf8 => col.as_string::<i32>().value(row).into(),
            DataType::LargeUtf8 => col.as_string::<i64>().value(row).into(),
            DataType::Float32 => {
                serde_json::Number::from_f64(col.as_primitive::<Float32Type>().value(row) as f64)
                    .map_or(serde_json::Value::Null, Into::into)
            }
            DataType::Float64 => serde_json::Number::from_f64(col.as_primitive::<Float64Type>().value(row))
                .map_or(serde_json::Value::Null, Into::into),
            t if t.is_integer() || matches!(t, DataType::Timestamp(..)) => {
                let c = arrow::compute::cast(&col.slice(row, 1), &DataType::Int64).expect("integer cast");
                c.as_primitive::<arrow::datatypes::Int64Type>().value(0).into()
            }
            _ => arrow::util::display::array_value_to_string(col, row)
                .unwrap_or_default()
                .into(),
        };
        serde_json::to_writer(&mut *out, &v).expect("value");
    }
    out.extend_from_slice(b"}\n");
}

/// Where replayed lines go: TCP connections (each key always on the same one), or an MQTT
/// broker (one message per line, QoS 1, on the topic with `{key}` replaced).
enum Target {
    Tcp {
        to: String,
        writers: Vec<BufWriter<TcpStream>>,
    },
    Mqtt(Box<crate::sink_mqtt::Publisher>),
    Kafka(Box<crate::kafka::Producer>),
}

impl Target {
    fn tcp(to: &str, conns: usize) -> Result<Target> {
        let writers = (0..conns)
            .map(|_| {
                TcpStream::connect(to)
                    .map(|s| BufWriter::with_capacity(1 << 16, s))
                    .map_err(|e| Error::Io {
                        path: PathBuf::from(format!("tcp {to}")),
                        source: e,
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Target::Tcp {
            to: to.to_string(),
            writers,
        })
    }

    /// `HOST:PORT/TOPIC` (the topic may hold `{key}`).
    fn mqtt(rest: &str) -> Result<Target> {
        let (broker, topic) = rest.split_once('/').ok_or_else(|| Error::Runtime(format!(
            "--to mqtt://{rest}: give the topic after the address, e.g. mqtt://127.0.0.1:1883/plant1/{{key}}/readings"
        )))?;
        let target = crate::sink_mqtt::MqttTarget {
            broker: broker.to_string(),
            topic: topic.to_string(),
            client_id: format!("seqflow-replay-{}", std::process::id()),
        };
        Ok(Target::Mqtt(Box::new(crate::sink_mqtt::Publisher::connect(
            &target,
        )?)))
    }

    /// `HOST:PORT/TOPIC`; a missing topic is created with `partitions` partitions.
    fn kafka(rest: &str, partitions: i32, batch: usize) -> Result<Target> {
        let (broker, topic) = rest.split_once('/').ok_or_else(|| {
            Error::Runtime(format!(
                "--to kafka://{rest}: give the topic after the address, e.g. kafka://127.0.0.1:9092/readings"
            ))
        })?;
        let mut p = crate::kafka::Producer::connect(
            &[broker.to_string()],
            topic,
            &format!("seqflow-replay-{}", std::process::id()),
            Some(partitions.max(1)),
        )
        .map_err(|msg| Error::Output {
            path: format!("kafka {broker}").into(),
            msg,
        })?;
        p.batch = batch.max(1);
        Ok(Target::Kafka(Box::new(p)))
    }

    fn connections(&self) -> usize {
        match self {
            Target::Tcp { writers, .. } => writers.len(),
            Target::Mqtt(_) => 1,
            Target::Kafka(p) => p.partitions(),
        }
    }

    fn send(&mut self, key: &str, line: &[u8]) -> Result<()> {
        match self {
            Target::Tcp { to, writers } => {
                let k = match key.parse::<i64>() {
                    Ok(i) => KeyRef::Int(i),
                    Err(_) => KeyRef::Str(key),
                };
                let n = writers.len();
                writers[k.route(n)].write_all(line).map_err(|e| Error::Io {
                    path: PathBuf::from(format!("tcp {to}")),
                    source: e,
                })
            }
            Target::Mqtt(p) => p.publish(key, line.strip_suffix(b"\n").unwrap_or(line)),
            Target::Kafka(p) => {
                p.push(key.as_bytes(), line.strip_suffix(b"\n").unwrap_or(line).to_vec());
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        match self {
            Target::Tcp { to, writers } => {
                for w in writers {
                    w.flush().map_err(|e| Error::Io {
                        path: PathBuf::from(format!("tcp {to}")),
                        source: e,
                    })?;
                }
                Ok(())
            }
            Target::Mqtt(_) => Ok(()),
            Target::Kafka(p) => p.flush().map_err(|msg| Error::Output {
                path: "kafka".into(),
                msg,
            }),
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            Target::Tcp { to, writers } => {
                for w in writers {
                    let s = w.into_inner().map_err(|e| Error::Io {
                        path: PathBuf::from(format!("tcp {to}")),
                        source: e.into_error(),
                    })?;
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
                Ok(())
            }
            Target::Mqtt(mut p) => p.close(),
            Target::Kafka(mut p) => p.flush().map_err(|msg| Error::Output {
                path: "kafka".into(),
                msg,
            }),
        }
    }
}

/// `--format arrow`: each connection carries one Arrow IPC stream; what is due is sent as one
/// record batch per connection (its keys' rows, in time order), then flushed.
fn replay_arrow(
    o: &ReplayOptions,
    batch: &RecordBatch,
    n: usize,
    key_of: &dyn Fn(usize) -> String,
) -> Result<ReplayReport> {
    if o.to.contains("://") {
        return Err(Error::Runtime(format!(
            "--format arrow sends Arrow IPC streams over TCP (--to HOST:PORT), not to {}",
            o.to
        )));
    }
    let conns = o.connections.max(1);
    let io = |e: std::io::Error| Error::Io {
        path: PathBuf::from(format!("tcp {}", o.to)),
        source: e,
    };
    let arrow_err = |e: arrow::error::ArrowError| Error::Io {
        path: PathBuf::from(format!("tcp {}", o.to)),
        source: std::io::Error::other(e.to_string()),
    };
    let mut writers = (0..conns)
        .map(|_| {
            let s = TcpStream::connect(&o.to).map_err(io)?;
            arrow::ipc::writer::StreamWriter::try_new(BufWriter::with_capacity(1 << 16, s), &batch.schema())
                .map_err(arrow_err)
        })
        .collect::<Result<Vec<_>>>()?;
    // Each row's connection, from its key (as the JSON lines replay routes them).
    let conn_of: Vec<usize> = (0..n)
        .map(|row| {
            let key = key_of(row);
            match key.parse::<i64>() {
                Ok(i) => KeyRef::Int(i).route(conns),
                Err(_) => KeyRef::Str(&key).route(conns),
            }
        })
        .collect();
    let start = Instant::now();
    let mut sent = 0;
    let mut rows: Vec<Vec<u32>> = vec![Vec::new(); conns];
    while sent < n {
        let due = if o.rate > 0.0 {
            ((start.elapsed().as_secs_f64() * o.rate) as usize).clamp(sent + 1, n)
        } else {
            (sent + 4096).min(n)
        };
        for r in &mut rows {
            r.clear();
        }
        for row in sent..due {
            rows[conn_of[row]].push(row as u32);
        }
        for (w, idx) in writers.iter_mut().zip(&rows) {
            if idx.is_empty() {
                continue;
            }
            let idx = arrow::array::UInt32Array::from(idx.clone());
            let part = take_record_batch(batch, &idx).map_err(arrow_err)?;
            w.write(&part).map_err(arrow_err)?;
            w.flush().map_err(arrow_err)?;
        }
        sent = due;
        if o.rate > 0.0 && sent < n {
            let next = Duration::from_secs_f64((sent + 1) as f64 / o.rate);
            if let Some(wait) = next.checked_sub(start.elapsed()) {
                std::thread::sleep(wait.min(Duration::from_millis(1)));
            }
        }
    }
    for mut w in writers {
        w.finish().map_err(arrow_err)?;
        let s = w
            .into_inner()
            .map_err(arrow_err)?
            .into_inner()
            .map_err(|e| io(e.into_error()))?;
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    Ok(ReplayReport {
        rows: n,
        connections: conns,
        unit: "connection",
        elapsed: start.elapsed(),
        target_rate: o.rate,
    })
}

/// Replays the data; returns what was sent.
pub fn replay(o: &ReplayOptions) -> Result<ReplayReport> {
    let batch = read_all(&o.data)?;
    let (Ok(ki), Ok(ti)) = (batch.schema().index_of(&o.key), batch.schema().index_of(&o.time)) else {
        return Err(data_err(
            &o.data,
            format!(
                "needs columns `{}` (key) and `{}` (time); use --key / --time",
                o.key, o.time
            ),
        ));
    };
    // Stable sort by time: equal times keep file order.
    let order = sort_to_indices(batch.column(ti), None, None).map_err(|e| data_err(&o.data, e))?;
    let batch = take_record_batch(&batch, &order).map_err(|e| data_err(&o.data, e))?;
    let keys = batch.column(ki).clone();
    let cols: Vec<(String, ArrayRef)> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| (f.name().clone(), c.clone()))
        .collect();
    let n = o.limit.map_or(batch.num_rows(), |l| l.min(batch.num_rows()));
    // Keys as text, cast once: strings of any Arrow string type, integers of any width.
    let key_text: Vec<String> = {
        let cast_to = if keys.data_type().is_integer() {
            DataType::Int64
        } else {
            DataType::Utf8
        };
        let c = arrow::compute::cast(&keys.slice(0, n), &cast_to).map_err(|e| {
            data_err(
                &o.data,
                format!("key column `{}` is not a string or integer column: {e}", o.key),
            )
        })?;
        match cast_to {
            DataType::Int64 => c
                .as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .map(|v| v.map_or_else(String::new, |v| v.to_string()))
                .collect(),
            _ => c
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_string())
                .collect(),
        }
    };
    let key_of = |row: usize| -> String { key_text[row].clone() };
    if o.arrow {
        return replay_arrow(o, &batch, n, &key_of);
    }
    let mut target = if let Some(rest) = o.to.strip_prefix("mqtt://") {
        Target::mqtt(rest)?
    } else if let Some(rest) = o.to.strip_prefix("kafka://") {
        Target::kafka(rest, o.partitions, o.batch)?
    } else {
        Target::tcp(&o.to, o.connections.max(1))?
    };
    let conns = target.connections();
    let start = Instant::now();
    let mut line = Vec::with_capacity(256);
    let mut sent = 0;
    while sent < n {
        // Send what is due by now (all of it when there is no rate), then flush.
        let due = if o.rate > 0.0 {
            ((start.elapsed().as_secs_f64() * o.rate) as usize).clamp(sent + 1, n)
        } else {
            (sent + 4096).min(n)
        };
        for row in sent..due {
            line.clear();
            json_line(&cols, row, &mut line);
            target.send(&key_of(row), &line)?;
        }
        sent = due;
        target.flush()?;
        if o.rate > 0.0 && sent < n {
            let next = Duration::from_secs_f64((sent + 1) as f64 / o.rate);
            if let Some(wait) = next.checked_sub(start.elapsed()) {
                std::thread::sleep(wait.min(Duration::from_millis(1)));
            }
        }
    }
    target.finish()?;
    Ok(ReplayReport {
        rows: n,
        connections: conns,
        unit: if o.to.starts_with("kafka://") {
            "partition"
        } else {
            "connection"
        },
        elapsed: start.elapsed(),
        target_rate: o.rate,
    })
}
