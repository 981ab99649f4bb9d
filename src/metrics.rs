//! A run's metrics in Prometheus' text format, served at `GET /metrics` while it runs.
//!
//! Process 0 serves the whole run, every process of a cluster summed: its collector (worker
//! 0) already receives every worker's counters epoch by epoch, the same counters the final
//! report is made of, so a scrape after the last epoch shows exactly the report's numbers.
//! The collector and the live driver write into a [`Hub`]; the HTTP thread renders it.
//!
//! Why hand-written exposition rather than `prometheus-client`: every number here already
//! exists once per epoch (a [`Stats`] sum, a latency per prediction), so a registry of
//! atomics would only duplicate them on the hot path; what the crate would add is the text
//! encoding, four line shapes that `promtool check metrics` validates in CI
//! (`tests/metrics.rs`). `tiny_http` serves it: a blocking server on one thread, no async
//! runtime, no C.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::record::{EpochReport, Stats};

/// Histogram bucket bounds in seconds, for latencies and epoch times: 100 us to 10 s, dense
/// around the milliseconds a live pipeline answers in.
const BOUNDS: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A Prometheus histogram with fixed bounds: 100 us to 10 s, 20 buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    /// Observations at most `BOUNDS[i]` (not cumulative; summed when rendered).
    counts: [u64; BOUNDS.len()],
    count: u64,
    sum: f64,
}

impl Buckets {
    /// Records one observation, in seconds.
    pub fn observe(&mut self, seconds: f64) {
        if let Some(i) = BOUNDS.iter().position(|&b| seconds <= b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// Observations recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The bucket bounds (seconds) and the cumulative count at each.
    pub fn cumulative(&self) -> (Vec<f64>, Vec<u64>) {
        let c = self
            .counts
            .iter()
            .scan(0, |sum, c| {
                *sum += c;
                Some(*sum)
            })
            .collect();
        (BOUNDS.to_vec(), c)
    }
}

/// The last committed checkpoint, as the commit thread saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CheckpointStats {
    /// Checkpoints committed by this run.
    pub committed: u64,
    /// Commits that failed (a failed commit ends the run, so 0 or 1).
    pub failures: u64,
    /// When the last one was committed (Unix seconds; 0 before the first).
    pub last_unix: f64,
    /// How long making it durable took (sync of outputs and parts, manifest), seconds.
    pub last_seconds: f64,
    /// Its size: the bytes of every worker's part (the manifest adds about a kilobyte).
    pub last_bytes: u64,
}

/// Everything `/metrics` shows, as of the last epoch the sink completed.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The source, as the `source` label shows it (`parquet`, `tcp`, `kafka`, ...).
    pub source: String,
    /// Workers of all processes.
    pub workers: usize,
    /// Every worker's counters, summed (the report's `stats`).
    pub stats: Stats,
    /// Predictions handed to the output.
    pub predictions: u64,
    /// Epochs every worker finished and the sink wrote.
    pub epochs: u64,
    /// Per worker (global index): keys held and state bytes after its last epoch.
    pub held: Vec<(u64, u64)>,
    /// Time workers spent on each epoch.
    pub epoch_seconds: Buckets,
    /// Live runs: arrival-to-emission latency of each prediction.
    pub latency: Option<Buckets>,
    /// Live runs, per feeding worker of process 0 (Kafka: each has its partitions'
    /// reader): batches waiting in its readers' channel, the channel's capacity, and the
    /// seconds its readers waited on it full (backpressure). Summed when shown.
    pub channels: std::collections::BTreeMap<usize, (u64, u64, f64)>,
    /// Runs with `[checkpoint]`.
    pub checkpoints: Option<CheckpointStats>,
    /// Kafka sources: records produced but not read yet, over all partitions.
    pub lag: Option<i64>,
}

/// Where the run writes its metrics and the server reads them.
#[derive(Debug, Default)]
pub struct Hub {
    snap: Mutex<Snapshot>,
}

impl Hub {
    /// A hub for a run reading `source` on `workers` workers.
    pub fn new(source: &str, workers: usize, live: bool) -> Arc<Hub> {
        Arc::new(Hub {
            snap: Mutex::new(Snapshot {
                source: source.to_string(),
                workers,
                latency: live.then(Buckets::default),
                ..Snapshot::default()
            }),
        })
    }

    /// Changes the snapshot under its lock.
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.snap.lock().expect("metrics"));
    }

    /// A copy of the current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.snap.lock().expect("metrics").clone()
    }

    /// Records a worker's epoch.
    pub fn epoch(&self, e: &EpochReport) {
        self.update(|s| {
            let w = e.worker as usize;
            if s.held.len() <= w {
                s.held.resize(w + 1, (0, 0));
            }
            s.held[w] = (e.keys, e.state_bytes);
            s.epoch_seconds.observe(e.micros as f64 / 1e6);
        });
    }
}

impl Snapshot {
    /// The Prometheus text exposition (format 0.0.4) of this snapshot.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let s = &self.stats;
        let src = format!("source=\"{}\"", escape(&self.source));
        gauge(
            &mut o,
            "seqflow_workers",
            "Workers of all processes of the run.",
            &[("", self.workers as f64)],
        );
        counter(
            &mut o,
            "seqflow_rows_total",
            "Rows read (file rows, live lines, broker records), accepted or not.",
            &[(&src, s.rows_read as f64)],
        );
        counter(
            &mut o,
            "seqflow_steps_total",
            "Steps accepted and run through the model.",
            &[("", s.steps_processed as f64)],
        );
        counter(
            &mut o,
            "seqflow_predictions_total",
            "Predictions handed to the output.",
            &[("", self.predictions as f64)],
        );
        counter(
            &mut o,
            "seqflow_rejects_total",
            "Rows rejected, by reason (written to the rejects file when the pipeline has one).",
            &[
                ("reason=\"late\"", s.late as f64),
                ("reason=\"duplicate\"", s.duplicate as f64),
                ("reason=\"non_finite\"", s.non_finite as f64),
                ("reason=\"malformed\"", s.malformed as f64),
                ("reason=\"max_keys\"", s.key_limit as f64),
            ],
        );
        let (keys, bytes) = self
            .held
            .iter()
            .fold((0, 0), |(k, b), &(k2, b2)| (k + k2, b + b2));
        gauge(
            &mut o,
            "seqflow_keys",
            "Keys held now (state kept for each).",
            &[("", keys as f64)],
        );
        counter(
            &mut o,
            "seqflow_keys_started_total",
            "Keys started: distinct keys, plus one for each return of a forgotten key.",
            &[("", s.keys as f64)],
        );
        counter(
            &mut o,
            "seqflow_keys_forgotten_total",
            "Keys forgotten after state_ttl_ms without steps.",
            &[("", s.keys_forgotten as f64)],
        );
        gauge(
            &mut o,
            "seqflow_state_bytes",
            "Bytes of per-key state held now (model state, key index, ordering).",
            &[("", bytes as f64)],
        );
        counter(
            &mut o,
            "seqflow_epochs_total",
            "Epochs every worker finished and the sink wrote.",
            &[("", self.epochs as f64)],
        );
        histogram(
            &mut o,
            "seqflow_epoch_duration_seconds",
            "Time a worker spent on one epoch (keying, ordering, the model, emitting).",
            &self.epoch_seconds,
        );
        if let Some(l) = &self.latency {
            histogram(
                &mut o,
                "seqflow_latency_seconds",
                "Arrival of a reading to its prediction written and flushed.",
                l,
            );
            counter(
                &mut o,
                "seqflow_refused_connections_total",
                "Connections refused (over max_connections).",
                &[("", s.refused_connections as f64)],
            );
            counter(
                &mut o,
                "seqflow_dropped_lines_total",
                "Lines read but dropped when a stop's drain passed drain_timeout_ms.",
                &[("", s.dropped_lines as f64)],
            );
        }
        if !self.channels.is_empty() {
            let (fill, cap, blocked) = self
                .channels
                .values()
                .fold((0, 0, 0.0), |(f, c, b), &(f2, c2, b2)| (f + f2, c + c2, b + b2));
            gauge(
                &mut o,
                "seqflow_channel_batches",
                "Batches waiting in the channel from the readers to the model.",
                &[("", fill as f64)],
            );
            gauge(
                &mut o,
                "seqflow_channel_capacity_batches",
                "Capacity of that channel; full means the readers wait (backpressure).",
                &[("", cap as f64)],
            );
            counter(
                &mut o,
                "seqflow_reader_blocked_seconds_total",
                "Time readers waited on a full channel (backpressure).",
                &[("", blocked)],
            );
        }
        if let Some(c) = &self.checkpoints {
            counter(
                &mut o,
                "seqflow_checkpoints_total",
                "Checkpoints committed by this run.",
                &[("", c.committed as f64)],
            );
            counter(
                &mut o,
                "seqflow_checkpoint_failures_total",
                "Checkpoints that could not be committed.",
                &[("", c.failures as f64)],
            );
            gauge(
                &mut o,
                "seqflow_checkpoint_last_success_timestamp_seconds",
                "When the last checkpoint was committed (Unix time; 0 before the first).",
                &[("", c.last_unix)],
            );
            gauge(
                &mut o,
                "seqflow_checkpoint_duration_seconds",
                "How long making the last checkpoint durable took.",
                &[("", c.last_seconds)],
            );
            gauge(
                &mut o,
                "seqflow_checkpoint_bytes",
                "Size of the last checkpoint (parts and manifest).",
                &[("", c.last_bytes as f64)],
            );
        }
        if let Some(lag) = self.lag {
            gauge(
                &mut o,
                "seqflow_consumer_lag_records",
                "Kafka: records produced but not read yet, over all partitions.",
                &[("", lag as f64)],
            );
        }
        o
    }
}

fn header(o: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

fn samples(o: &mut String, name: &str, values: &[(&str, f64)]) {
    for (labels, v) in values {
        if labels.is_empty() {
            let _ = writeln!(o, "{name} {}", number(*v));
        } else {
            let _ = writeln!(o, "{name}{{{labels}}} {}", number(*v));
        }
    }
}

fn counter(o: &mut String, name: &str, help: &str, values: &[(&str, f64)]) {
    header(o, name, help, "counter");
    samples(o, name, values);
}

fn gauge(o: &mut String, name: &str, help: &str, values: &[(&str, f64)]) {
    header(o, name, help, "gauge");
    samples(o, name, values);
}

fn histogram(o: &mut String, name: &str, help: &str, h: &Buckets) {
    header(o, name, help, "histogram");
    let mut cumulative = 0;
    for (b, c) in BOUNDS.iter().zip(&h.counts) {
        cumulative += c;
        let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
    }
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(o, "{name}_sum {}", number(h.sum));
    let _ = writeln!(o, "{name}_count {}", h.count);
}

/// Integers without a fraction; others rounded to the microsecond every time here is
/// measured in (`0.019353`, not `0.01935300000000008`).
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{}", (v * 1e6).round() / 1e6)
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A GET-only HTTP listener of the run (metrics, dashboard), on a thread of its own:
/// `handle` answers each request. Dropping it stops serving. The thread is not joined: it
/// may be blocked writing to a client that stopped reading, and a run must end whatever its
/// clients do (the thread goes with the process).
pub struct Listener {
    http: Arc<tiny_http::Server>,
    /// The bound address (port 0 picks a free one).
    pub addr: SocketAddr,
}

impl Listener {
    /// Binds `listen` for `what` (`metrics`, `dashboard`: named in errors and the thread).
    pub fn start(
        listen: &str,
        what: &str,
        mut handle: impl FnMut(tiny_http::Request) + Send + 'static,
    ) -> Result<Listener> {
        let http = tiny_http::Server::http(listen).map_err(|e| Error::Io {
            path: PathBuf::from(format!("{what} listener {listen}")),
            source: std::io::Error::other(e.to_string()),
        })?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| Error::Runtime(format!("{what} listener {listen}: not an IP address")))?;
        let http = Arc::new(http);
        let server = http.clone();
        std::thread::Builder::new()
            .name(format!("seqflow-{what}"))
            .spawn(move || {
                for req in server.incoming_requests() {
                    handle(req);
                }
            })
            .map_err(|e| Error::Runtime(format!("could not start the {what} thread: {e}")))?;
        Ok(Listener { http, addr })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.http.unblock();
    }
}

/// A header of a response (names and values here are fixed ASCII).
pub fn http_header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

/// A whole response: `body` with status `code` and content type `kind`, never cached.
pub fn text(body: String, code: u16, kind: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    tiny_http::Response::from_data(body.into_bytes())
        .with_status_code(code)
        .with_header(http_header("Content-Type", kind))
        .with_header(http_header("Cache-Control", "no-store"))
}

/// The HTTP server of `/metrics`, until dropped.
pub struct Server {
    _listener: Listener,
    /// The bound address (port 0 in the configuration picks a free one).
    pub addr: SocketAddr,
}

impl Server {
    /// Binds `listen` and serves `hub` there: `GET /metrics` (any other path 404, any other
    /// method 405).
    pub fn start(listen: &str, hub: Arc<Hub>) -> Result<Server> {
        let listener = Listener::start(listen, "metrics", move |req| {
            let response = respond(&req, &hub);
            let _ = req.respond(response);
        })?;
        Ok(Server {
            addr: listener.addr,
            _listener: listener,
        })
    }
}

fn respond(req: &tiny_http::Request, hub: &Hub) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    if *req.method() != tiny_http::Method::Get {
        return text("only GET is served\n".into(), 405, "text/plain; charset=utf-8");
    }
    match req.url().split('?').next() {
        Some("/metrics") => text(
            hub.snapshot().render(),
            200,
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => text(
            "not found: seqflow serves /metrics\n".into(),
            404,
            "text/plain; charset=utf-8",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let mut b = Buckets::default();
        for s in [0.00005, 0.0003, 0.0003, 0.2, 20.0] {
            b.observe(s);
        }
        let mut o = String::new();
        histogram(&mut o, "h_seconds", "help", &b);
        assert!(o.contains("h_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(o.contains("h_seconds_bucket{le=\"0.0005\"} 3\n"));
        assert!(o.contains("h_seconds_bucket{le=\"0.25\"} 4\n"));
        assert!(o.contains("h_seconds_bucket{le=\"10\"} 4\n"));
        assert!(o.contains("h_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(o.contains("h_seconds_count 5\n"));
        assert!(o.contains("# TYPE h_seconds histogram\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let s = Snapshot {
            source: "tcp \"x\"".into(),
            ..Snapshot::default()
        };
        assert!(s
            .render()
            .contains("seqflow_rows_total{source=\"tcp \\\"x\\\"\"} 0\n"));
    }
}
