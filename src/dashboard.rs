//! The live dashboard: one web page, served by the run itself, that follows it.
//!
//! `GET /` is a self-contained page (`dashboard.html`, compiled into the binary: no CDN, no
//! npm; the plants that run this are often air-gapped). It opens `GET /events`, a
//! server-sent-events stream carrying one JSON [`Board::json`] document per second: the
//! run's counters (the metrics [`Hub`]'s snapshot, so the page and `/metrics` never
//! disagree), the predictions and model inputs of a few watched keys, the keys with the
//! highest score right now, and every view's current table. The page keeps the last minutes
//! and draws them (SVG). `GET /watch?key=K` / `GET /unwatch?key=K` choose the keys to
//! follow (at most [`MAX_WATCHED`]; without a choice, the highest-scoring keys are
//! followed). Only GET is served, on loopback unless told otherwise.
//!
//! What the run pays: per written batch, a scan for its highest scores and, for watched keys
//! only, a copy of their rows; per fed batch, a look for watched keys. Measured in
//! BENCHMARKS.md.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::metrics::{http_header as header, text, Hub, Listener, Snapshot};
use crate::record::{KeyColumn, KeyRef, OutBatch, StepBatch};

/// Keys followed at once.
pub const MAX_WATCHED: usize = 4;
/// Points kept per watched key.
const SERIES_POINTS: usize = 300;
/// A key counts as "right now" for this long after its last prediction.
const RECENT: Duration = Duration::from_secs(10);
/// Highest-scoring keys shown.
const TOP: usize = 8;
/// Rows shown per view.
const VIEW_ROWS: usize = 50;
/// Event streams open at once (each holds a thread).
const MAX_STREAMS: usize = 16;
/// tiny_http's chunk size for bodies of unknown length.
const CHUNK: usize = 8192;

/// The page, compiled in.
const PAGE: &str = include_str!("dashboard.html");

/// What the dashboard knows beyond the metrics.
#[derive(Default)]
struct State {
    /// Keys the user picked, oldest first.
    picked: Vec<String>,
    /// Per followed key: (time, prediction values) and (time, model inputs).
    preds: HashMap<String, VecDeque<(i64, Vec<f32>)>>,
    inputs: HashMap<String, VecDeque<(i64, Vec<f32>)>>,
    /// Keys scored recently: when, and their latest score (first output).
    recent: HashMap<String, (Instant, f32)>,
    /// Every view's current rows (name, rows), as of the last epoch written.
    views: Vec<(String, Vec<Map<String, Value>>)>,
    /// The keys followed, as of `refreshed` (recomputed four times a second).
    followed: Vec<String>,
    refreshed: Option<Instant>,
}

/// What a file run's report keeps while it runs (`--report`).
#[derive(Default)]
struct ReportData {
    /// (ms since the start, rows read, predictions, rejects): sampled as epochs complete.
    timeline: Vec<(u64, u64, u64, u64)>,
    last_sample: Option<Instant>,
    started: Option<Instant>,
    /// A uniform sample of predictions (first [`REPORT_OUTPUTS`] values of each).
    sample: Vec<Vec<f32>>,
    seen: u64,
    rng: u64,
    /// Algorithm L's state: the next row to keep, and its `W`.
    next: u64,
    w: f64,
    /// Candidate keys with the highest first output seen (pruned to the best).
    best: HashMap<String, f32>,
}

impl ReportData {
    /// A uniform draw in (0, 1).
    fn random(&mut self) -> f64 {
        self.rng = crate::vocab::mix64(self.rng);
        ((self.rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// After keeping row `at`: the next row to keep (Algorithm L's skip).
    fn draw_next(&mut self, at: u64) {
        let k = REPORT_SAMPLE as f64;
        if self.w == 0.0 {
            self.w = (self.random().ln() / k).exp();
        } else {
            self.w *= (self.random().ln() / k).exp();
        }
        let skip = (self.random().ln() / (1.0 - self.w).ln()).floor();
        self.next = at
            + 1
            + if skip.is_finite() {
                skip.min(1e15) as u64
            } else {
                u64::MAX / 2
            };
    }
}

/// Predictions kept for the report's distributions.
const REPORT_SAMPLE: usize = 20_000;
/// Outputs whose distribution the report shows.
const REPORT_OUTPUTS: usize = 4;
/// Keys the report plots.
const REPORT_KEYS: usize = 5;

/// The dashboard's data, shared by the collector (predictions, views), the feeders (inputs)
/// and the HTTP threads; for a file run's `--report`, also what the report shows.
pub struct Board {
    hub: Arc<Hub>,
    features: Vec<String>,
    outputs: Vec<String>,
    state: Mutex<State>,
    report: Option<Mutex<ReportData>>,
    /// Whether a page follows the run (a report alone keeps no live state).
    live: bool,
}

impl Board {
    /// A board reading the run's counters from `hub`; `features` and `outputs` name the
    /// model's inputs and outputs.
    pub fn new(hub: Arc<Hub>, features: Vec<String>, outputs: Vec<String>) -> Arc<Board> {
        Self::build(hub, features, outputs, true, false)
    }

    /// A board that keeps what a report shows (`--report`), and with `live` what a page
    /// following the run shows too.
    pub fn for_report(hub: Arc<Hub>, features: Vec<String>, outputs: Vec<String>, live: bool) -> Arc<Board> {
        Self::build(hub, features, outputs, live, true)
    }

    fn build(
        hub: Arc<Hub>,
        features: Vec<String>,
        outputs: Vec<String>,
        live: bool,
        report: bool,
    ) -> Arc<Board> {
        Arc::new(Board {
            hub,
            features,
            outputs,
            live,
            state: Mutex::default(),
            report: report.then(|| {
                Mutex::new(ReportData {
                    rng: 0x9e37_79b9_7f4a_7c15,
                    started: Some(Instant::now()),
                    ..ReportData::default()
                })
            }),
        })
    }

    /// Whether this board keeps a report.
    pub fn reports(&self) -> bool {
        self.report.is_some()
    }

    /// A point of the report's timeline (at most every 10 ms; thinned to 2,000 points).
    pub fn sample(&self) {
        let Some(r) = &self.report else { return };
        let m = self.hub.snapshot();
        let mut r = r.lock().expect("report");
        let now = Instant::now();
        if r.last_sample
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(10))
        {
            return;
        }
        r.last_sample = Some(now);
        let ms = r.started.map_or(0, |s| now.duration_since(s).as_millis() as u64);
        let s = &m.stats;
        let rejects = s.late + s.duplicate + s.non_finite + s.malformed + s.key_limit;
        r.timeline.push((ms, s.rows_read, m.predictions, rejects));
        if r.timeline.len() > 2000 {
            let kept: Vec<_> = r.timeline.iter().step_by(2).copied().collect();
            r.timeline = kept;
        }
    }

    /// The keys followed now: the picked ones, else the highest-scoring ones.
    fn followed(s: &State) -> Vec<String> {
        if !s.picked.is_empty() {
            return s.picked.clone();
        }
        top(&s.recent, MAX_WATCHED.min(3))
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    /// A batch written to the output: its highest scores, and the rows of followed keys.
    pub fn predictions(&self, b: &OutBatch) {
        let n = b.times.len();
        if n == 0 || b.width == 0 {
            return;
        }
        // The batch's highest first outputs, without touching a map per row.
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(TOP + 1);
        for i in 0..n {
            let v = b.values[i * b.width];
            if best.len() < TOP || v > best[best.len() - 1].0 {
                let at = best.partition_point(|&(w, _)| w >= v);
                best.insert(at, (v, i));
                best.truncate(TOP);
            }
        }
        if let Some(r) = &self.report {
            let mut r = r.lock().expect("report");
            let keep = b.width.min(REPORT_OUTPUTS);
            // Reservoir sampling, Li's Algorithm L: every prediction equally likely kept,
            // with a random draw per *kept* row only (the next one to keep is drawn as a skip).
            let start = r.seen;
            r.seen += n as u64;
            let mut i = 0usize;
            while i < n {
                let row_no = start + i as u64;
                if r.sample.len() < REPORT_SAMPLE {
                    r.sample.push(b.values[i * b.width..i * b.width + keep].to_vec());
                    if r.sample.len() == REPORT_SAMPLE {
                        r.draw_next(row_no);
                    }
                    i += 1;
                    continue;
                }
                if row_no < r.next {
                    i += (r.next - row_no).min((n - i) as u64) as usize;
                    continue;
                }
                let j = (r.random() * REPORT_SAMPLE as f64) as usize % REPORT_SAMPLE;
                r.sample[j] = b.values[i * b.width..i * b.width + keep].to_vec();
                r.draw_next(row_no);
                i += 1;
            }
            for &(v, i) in &best {
                if v.is_finite() {
                    let e = r.best.entry(key_text(b.keys.get(i))).or_insert(v);
                    *e = e.max(v);
                }
            }
            if r.best.len() > 1024 {
                let keep: HashMap<String, f32> = top_of(&r.best, 64).into_iter().collect();
                r.best = keep;
            }
        }
        if !self.live {
            return;
        }
        let now = Instant::now();
        let mut s = self.state.lock().expect("dashboard");
        for &(v, i) in &best {
            if v.is_finite() {
                s.recent.insert(key_text(b.keys.get(i)), (now, v));
            }
        }
        // The followed keys and the recent table change at the page's pace, not per batch.
        if s.refreshed
            .is_none_or(|t| now.duration_since(t) > Duration::from_millis(250))
        {
            s.refreshed = Some(now);
            s.recent.retain(|_, (t, _)| now.duration_since(*t) < RECENT);
            s.followed = Self::followed(&s);
            // Series of keys no longer followed go (the top keys change all day long).
            let keep = s.followed.clone();
            s.preds.retain(|k, _| keep.contains(k));
            s.inputs.retain(|k, _| keep.contains(k));
        }
        let followed = std::mem::take(&mut s.followed);
        for i in rows_of(&b.keys, &followed) {
            let key = key_text(b.keys.get(i));
            let row = b.values[i * b.width..(i + 1) * b.width].to_vec();
            push(s.preds.entry(key.clone()).or_default(), (b.times[i], row.clone()));
            if let Some(e) = s.recent.get_mut(&key) {
                *e = (now, row[0]);
            }
        }
        s.followed = followed;
    }

    /// A batch fed to the model: the inputs of followed keys.
    pub fn inputs(&self, b: &StepBatch) {
        let n = b.times.len();
        if n == 0 {
            return;
        }
        if !self.live {
            return;
        }
        // The scan runs outside the lock: feeders of every worker call this.
        let followed = self.state.lock().expect("dashboard").followed.clone();
        let rows = rows_of(&b.keys, &followed);
        if rows.is_empty() {
            return;
        }
        let width = b.features.len() / n;
        let mut s = self.state.lock().expect("dashboard");
        for i in rows {
            let row = b.features[i * width..(i + 1) * width].to_vec();
            push(
                s.inputs.entry(key_text(b.keys.get(i))).or_default(),
                (b.times[i], row),
            );
        }
    }

    /// Every view's current table.
    pub fn views(&self, tables: Vec<(String, Vec<Map<String, Value>>)>) {
        self.state.lock().expect("dashboard").views = tables;
    }

    /// Follows `key` (the oldest pick goes past [`MAX_WATCHED`]).
    pub fn watch(&self, key: &str) {
        let mut s = self.state.lock().expect("dashboard");
        s.picked.retain(|k| k != key);
        s.picked.push(key.to_string());
        if s.picked.len() > MAX_WATCHED {
            let gone = s.picked.remove(0);
            s.preds.remove(&gone);
            s.inputs.remove(&gone);
        }
        s.followed = Self::followed(&s);
    }

    /// Stops following `key`.
    pub fn unwatch(&self, key: &str) {
        let mut s = self.state.lock().expect("dashboard");
        s.picked.retain(|k| k != key);
        s.preds.remove(key);
        s.inputs.remove(key);
        s.followed = Self::followed(&s);
    }

    /// The document each event carries.
    pub fn json(&self) -> Value {
        let m = self.hub.snapshot();
        let s = self.state.lock().expect("dashboard");
        let followed = Self::followed(&s);
        let series = |map: &HashMap<String, VecDeque<(i64, Vec<f32>)>>, k: &str| -> Value {
            map.get(k).map_or(json!([]), |d| {
                Value::Array(d.iter().map(|(t, v)| json!([t, v])).collect())
            })
        };
        let watched: Map<String, Value> = followed
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    json!({ "predictions": series(&s.preds, k), "inputs": series(&s.inputs, k) }),
                )
            })
            .collect();
        let views: Vec<Value> = s
            .views
            .iter()
            .map(|(name, rows)| json!({ "name": name, "rows": rows }))
            .collect();
        json!({
            "unix_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            "run": counters(&m),
            "features": self.features,
            "outputs": self.outputs,
            "picked": s.picked,
            "watched": watched,
            "top": top(&s.recent, TOP),
            "views": views,
        })
    }
}

/// The counters of a metrics snapshot, as the page reads them.
fn counters(m: &Snapshot) -> Value {
    let s = &m.stats;
    let (keys, bytes) = m.held.iter().fold((0, 0), |(k, b), &(k2, b2)| (k + k2, b + b2));
    let latency = m.latency.as_ref().map(|l| {
        let (bounds, cumulative) = l.cumulative();
        json!({ "bounds": bounds, "cumulative": cumulative, "count": l.count() })
    });
    json!({
        "source": m.source,
        "workers": m.workers,
        "rows": s.rows_read,
        "steps": s.steps_processed,
        "predictions": m.predictions,
        "rejects": {
            "late": s.late, "duplicate": s.duplicate, "non_finite": s.non_finite,
            "malformed": s.malformed, "max_keys": s.key_limit,
        },
        "keys": keys,
        "state_bytes": bytes,
        "epochs": m.epochs,
        "latency": latency,
        "checkpoints": m.checkpoints.map(|c| c.committed),
        "lag": m.lag,
    })
}

fn push<T>(d: &mut VecDeque<T>, v: T) {
    if d.len() == SERIES_POINTS {
        d.pop_front();
    }
    d.push_back(v);
}

/// A key as the page shows it and `/watch?key=` takes it: the text itself, unquoted.
fn key_text(k: KeyRef<'_>) -> String {
    match k {
        KeyRef::Str(s) => s.to_string(),
        KeyRef::Int(i) => i.to_string(),
    }
}

/// The rows of `keys` whose key is one of `followed`, without formatting each row's key.
/// Keys are compared by length and last 8 bytes first (where keys like `site01-m00007`
/// differ), so that the common case costs no `memcmp` call: a call per row and followed key
/// was 4% of a whole file run.
fn rows_of(keys: &KeyColumn, followed: &[String]) -> Vec<usize> {
    if followed.is_empty() {
        return Vec::new();
    }
    let tail = |b: &[u8]| -> u64 {
        let t = &b[b.len().saturating_sub(8)..];
        t.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64)
    };
    let strs: Vec<(usize, u64, &str)> = followed
        .iter()
        .map(|f| (f.len(), tail(f.as_bytes()), f.as_str()))
        .collect();
    let ints: Vec<i64> = followed.iter().filter_map(|f| f.parse().ok()).collect();
    (0..keys.len())
        .filter(|&i| match keys.get(i) {
            KeyRef::Str(k) => {
                let (len, t) = (k.len(), tail(k.as_bytes()));
                strs.iter().any(|&(fl, ft, f)| fl == len && ft == t && f == k)
            }
            KeyRef::Int(k) => ints.contains(&k),
        })
        .collect()
}

/// The `n` highest scores of `m`, highest first (ties by key).
fn top_of(m: &HashMap<String, f32>, n: usize) -> Vec<(String, f32)> {
    let mut v: Vec<(String, f32)> = m.iter().map(|(k, s)| (k.clone(), *s)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// The `n` highest recent scores, highest first (ties by key, for a stable table).
fn top(recent: &HashMap<String, (Instant, f32)>, n: usize) -> Vec<(String, f32)> {
    let mut v: Vec<(String, f32)> = recent.iter().map(|(k, (_, s))| (k.clone(), *s)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// The dashboard's HTTP server, until dropped (event streams end within 100 ms of it).
pub struct Server {
    _listener: Listener,
    stop: Arc<AtomicBool>,
    /// The bound address.
    pub addr: SocketAddr,
}

impl Server {
    /// Binds `listen` and serves `board`.
    pub fn start(listen: &str, board: Arc<Board>) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let streams = Arc::new(AtomicUsize::new(0));
        let listener = Listener::start(listen, "dashboard", move |req| {
            serve(req, &board, &stopping, &streams)
        })?;
        Ok(Server {
            addr: listener.addr,
            _listener: listener,
            stop,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `key=...` of a query string, percent-decoded.
fn query_key(url: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    let v = q.split('&').find_map(|p| p.strip_prefix("key="))?;
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn serve(req: tiny_http::Request, board: &Arc<Board>, stop: &Arc<AtomicBool>, streams: &Arc<AtomicUsize>) {
    if *req.method() != tiny_http::Method::Get {
        let _ = req.respond(text(
            "only GET is served\n".into(),
            405,
            "text/plain; charset=utf-8",
        ));
        return;
    }
    let url = req.url().to_string();
    let path = url.split('?').next().unwrap_or("");
    let response = match path {
        "/" | "/index.html" => text(PAGE.to_string(), 200, "text/html; charset=utf-8"),
        "/state" => text(board.json().to_string(), 200, "application/json"),
        "/watch" | "/unwatch" => match query_key(&url) {
            Some(k) if !k.is_empty() => {
                if path == "/watch" {
                    board.watch(&k);
                } else {
                    board.unwatch(&k);
                }
                text(board.json().to_string(), 200, "application/json")
            }
            _ => text(
                "give the key: /watch?key=K\n".into(),
                400,
                "text/plain; charset=utf-8",
            ),
        },
        // An HTTP/1.0 response without a length is buffered whole by tiny_http: an endless
        // one would grow without bound. Browsers' EventSource speaks HTTP/1.1 (chunked).
        "/events" if *req.http_version() < tiny_http::HTTPVersion(1, 1) => text(
            "the event stream needs HTTP/1.1\n".into(),
            505,
            "text/plain; charset=utf-8",
        ),
        "/events" => {
            if streams.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
                streams.fetch_sub(1, Ordering::Relaxed);
                text(
                    "too many open dashboards\n".into(),
                    503,
                    "text/plain; charset=utf-8",
                )
            } else {
                let (board, stop, open) = (board.clone(), stop.clone(), streams.clone());
                // A stream holds its thread for as long as the page is open. Without a
                // thread the request goes with the closure (the page's EventSource retries).
                let spawned = std::thread::Builder::new()
                    .name("seqflow-dashboard-events".into())
                    .spawn(move || {
                        let events = Events {
                            board,
                            stop,
                            pending: Vec::new(),
                            at: 0,
                            next: Instant::now(),
                        };
                        let r = tiny_http::Response::new(
                            tiny_http::StatusCode(200),
                            vec![
                                header("Content-Type", "text/event-stream"),
                                header("Cache-Control", "no-store"),
                            ],
                            events,
                            None,
                            None,
                        );
                        let _ = req.respond(r);
                        open.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    streams.fetch_sub(1, Ordering::Relaxed);
                }
                return;
            }
        }
        _ => text("not found\n".into(), 404, "text/plain; charset=utf-8"),
    };
    let _ = req.respond(response);
}

/// The body of `/events`: one `data: {...}` event per second until the run ends (or the
/// page goes: the write fails and the response is dropped).
struct Events {
    board: Arc<Board>,
    stop: Arc<AtomicBool>,
    pending: Vec<u8>,
    at: usize,
    next: Instant,
}

impl std::io::Read for Events {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.pending.len() {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(0);
            }
            let now = Instant::now();
            if now < self.next {
                std::thread::sleep((self.next - now).min(Duration::from_millis(100)));
                continue;
            }
            self.next = now + Duration::from_secs(1);
            let mut event = format!("data: {}\n\n", self.board.json());
            // tiny_http sends a body of unknown length in chunks of 8 KiB and only when a
            // chunk is full: padding every event to a multiple of 8 KiB (an SSE comment line,
            // which pages ignore) sends it whole, at once.
            let pad = (CHUNK - (event.len() + 2) % CHUNK) % CHUNK;
            event.push(':');
            event.extend(std::iter::repeat_n(' ', pad));
            event.push('\n');
            self.pending = event.into_bytes();
            self.at = 0;
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Rows shown per view ([`crate::views::output::ViewOutputs::tables`]'s limit).
pub fn view_rows() -> usize {
    VIEW_ROWS
}

/// The views' tables in the board's form.
pub fn tables(t: BTreeMap<String, Vec<Map<String, Value>>>) -> Vec<(String, Vec<Map<String, Value>>)> {
    t.into_iter().collect()
}

/// Where the report reads back the plotted keys' predictions: the output file, its format,
/// the key and time column names.
pub struct OutputFile<'a> {
    /// The output file (committed).
    pub path: &'a std::path::Path,
    /// Its format.
    pub format: crate::vocab::FileFormat,
    /// Key column.
    pub key: &'a str,
    /// Time column.
    pub time: &'a str,
}

/// Writes a file run's report: the dashboard page with the run's data in it (no server,
/// nothing fetched): throughput over the run, each output's distribution (from a uniform
/// sample of the predictions), and the keys with the highest scores, their whole series read
/// back from the output file. `summary` is the run's one-line summary.
pub fn write_report(
    path: &std::path::Path,
    board: &Board,
    output: Option<OutputFile<'_>>,
    summary: &str,
) -> Result<()> {
    let Some(r) = &board.report else {
        return Ok(());
    };
    let (timeline, sample, best) = {
        let mut r = r.lock().expect("report");
        (
            r.timeline.clone(),
            std::mem::take(&mut r.sample),
            top_of(&r.best, REPORT_KEYS),
        )
    };
    let m = board.hub.snapshot();
    let mut timeline = timeline;
    let elapsed = r
        .lock()
        .expect("report")
        .started
        .map_or(0, |s| s.elapsed().as_millis() as u64);
    let st = &m.stats;
    let rejects = st.late + st.duplicate + st.non_finite + st.malformed + st.key_limit;
    timeline.push((elapsed, st.rows_read, m.predictions, rejects));
    let mut series: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    if let Some(o) = &output {
        series = read_series(
            o,
            &best.iter().map(|b| b.0.clone()).collect::<Vec<_>>(),
            &board.outputs[0],
        )?;
    }
    let data = json!({
        "summary": summary,
        "run": counters(&m),
        "outputs": board.outputs,
        "timeline": timeline,
        "sample": sample,
        "top": best,
        "series": series,
    });
    // Inside a <script> element no `<` may appear (`</script>` would close it, `<!--` change
    // how the parser reads on): JSON's `\u003c` is the same character to JSON.parse.
    let embedded = data.to_string().replace('<', "\\u003c");
    let page = PAGE.replacen(
        "<script id=\"report\" type=\"application/json\"></script>",
        &format!("<script id=\"report\" type=\"application/json\">{embedded}</script>"),
        1,
    );
    crate::outfiles::write_file(path, |f| std::io::Write::write_all(f, page.as_bytes()))
}

/// The predictions (first output) of `keys` in the output file, in time order.
fn read_series(
    o: &OutputFile<'_>,
    keys: &[String],
    column: &str,
) -> Result<BTreeMap<String, Vec<(i64, f32)>>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type, Int64Type};
    let mut out: BTreeMap<String, Vec<(i64, f32)>> = keys.iter().map(|k| (k.clone(), Vec::new())).collect();
    if keys.is_empty() {
        return Ok(out);
    }
    let (schema, _) = crate::input::files::schema_of(o.path, o.format, &[])?;
    let cols = [o.key, o.time, column];
    for batch in
        crate::input::files::batches(o.path, o.format, &schema, Default::default(), Some(&cols), 65_536)?
    {
        let batch = batch?;
        let (Some(k), Some(t), Some(v)) = (
            batch.column_by_name(o.key),
            batch.column_by_name(o.time),
            batch.column_by_name(column),
        ) else {
            return Ok(out);
        };
        let t = arrow::compute::cast(t, &DataType::Int64).map_err(|e| Error::Runtime(e.to_string()))?;
        let v = arrow::compute::cast(v, &DataType::Float64).map_err(|e| Error::Runtime(e.to_string()))?;
        let k = arrow::compute::cast(k, &DataType::Utf8).map_err(|e| Error::Runtime(e.to_string()))?;
        let (k, t, v) = (
            k.as_string::<i32>(),
            t.as_primitive::<Int64Type>(),
            v.as_primitive::<Float64Type>(),
        );
        for i in 0..k.len() {
            if let Some(points) = out.get_mut(k.value(i)) {
                points.push((t.value(i), v.value(i) as f32));
            }
        }
    }
    for points in out.values_mut() {
        points.sort_by_key(|p| p.0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys_are_percent_decoded() {
        assert_eq!(
            query_key("/watch?key=site01-m00007").as_deref(),
            Some("site01-m00007")
        );
        assert_eq!(query_key("/watch?x=1&key=a%20b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(query_key("/watch?key=a+b").as_deref(), Some("a b"));
        assert_eq!(query_key("/watch"), None);
        assert_eq!(query_key("/watch?key=%zz"), None);
    }

    #[test]
    fn a_batch_s_highest_scores_are_kept_and_followed() {
        let board = Board::new(Hub::new("tcp", 1, true), vec!["f".into()], vec!["score".into()]);
        let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
        let mut column = KeyColumn::empty_str();
        for k in &keys {
            column.push(KeyRef::Str(k));
        }
        let b = OutBatch {
            keys: column,
            times: (0..20).collect(),
            values: (0..20).map(|i| i as f32 / 20.0).collect(),
            width: 1,
            arrivals: vec![],
        };
        board.predictions(&b);
        let j = board.json();
        let top = j["top"].as_array().unwrap();
        assert_eq!(top.len(), TOP);
        assert_eq!(top[0][0], "k19");
        // Nobody picked: the three highest are followed, from the batch that scored them.
        board.predictions(&b);
        let w = board.json()["watched"].as_object().unwrap().clone();
        assert_eq!(w.len(), 3);
        assert_eq!(w["k19"]["predictions"].as_array().unwrap().len(), 2);
        assert!(!w.contains_key("k0"));
        board.watch("k3");
        let j = board.json();
        assert_eq!(j["picked"], json!(["k3"]));
        assert_eq!(j["watched"].as_object().unwrap().len(), 1);
    }
}
