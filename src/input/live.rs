//! Live sources: TCP (many concurrent clients) and stdin. One reader thread per connection
//! turns the complete lines it has read into per-worker [`StepBatch`](crate::record::StepBatch)es and sends them on a
//! bounded crossbeam channel. When the model falls behind, the channel fills, the readers
//! block, and TCP flow control pushes back on the clients: memory stays bounded.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, SendError, Sender, TrySendError};

use super::columns::Columns;
use super::lines::{FieldMap, LineError};
use super::Routed;
use crate::error::{Error, Result};
use crate::record::{Key, RejectReason};
use crate::vocab::{now_us, FileFormat, LineFormat};

/// Batches in flight between readers and the dataflow (the backpressure bound).
const CHANNEL_BATCHES: usize = 256;
/// How often blocked readers and the acceptor look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// A live source's settings: where lines arrive and how they are framed.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSource {
    /// TCP or stdin.
    pub transport: Transport,
    /// JSON objects or CSV records.
    pub lines: LineFormat,
    /// CSV column names when the stream has no header line.
    pub header: Option<Vec<String>>,
    /// How often the open epoch closes.
    pub epoch_ms: u64,
    /// `sequence_end`: a key's sequence ends after this long without steps.
    pub idle_timeout_ms: Option<u64>,
    /// Longer lines are rejected (and skipped to their end).
    pub max_line_bytes: usize,
    /// Clients served at once; more are told so and closed.
    pub max_connections: usize,
    /// After a stop, how long to go on processing what was read before dropping the rest.
    pub drain_timeout_ms: u64,
    /// Longer string keys are rejected (their line is malformed).
    pub max_key_bytes: usize,
    /// Keys held at once, shared evenly by the workers; steps of new keys beyond are
    /// rejected (`key_limit`).
    pub max_keys: usize,
    /// A key without steps for this long is forgotten: state, last time, held outputs.
    pub state_ttl_ms: Option<u64>,
}

/// Where live lines arrive.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// A TCP listener, one reader per connection.
    Tcp {
        /// `host:port` to bind.
        listen: String,
    },
    /// The process's standard input.
    Stdin,
    /// Messages of an MQTT broker's topics.
    Mqtt(super::mqtt::MqttSource),
    /// Records of a Kafka topic, its partitions shared by all workers of all processes.
    Kafka(super::kafka::KafkaSource),
}

/// A reader's end of the channel into the dataflow. A full channel blocks the reader (that
/// is the backpressure); the time it waits is counted, for the metrics.
#[derive(Clone)]
pub struct Outbox {
    tx: Sender<Routed>,
    blocked_us: Arc<AtomicU64>,
}

impl Outbox {
    /// A bounded channel of `cap` batches: the outbox, the receiver, the blocked-time counter.
    pub fn bounded(cap: usize) -> (Outbox, Receiver<Routed>, Arc<AtomicU64>) {
        let (tx, rx) = bounded(cap);
        let blocked_us = Arc::new(AtomicU64::new(0));
        (
            Outbox {
                tx,
                blocked_us: blocked_us.clone(),
            },
            rx,
            blocked_us,
        )
    }

    /// An unbounded one (tests, and parsers whose output is drained at once).
    pub fn unbounded() -> (Outbox, Receiver<Routed>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            Outbox {
                tx,
                blocked_us: Arc::default(),
            },
            rx,
        )
    }

    /// Sends, waiting while the channel is full; `Err` once the receiver is gone.
    pub fn send(&self, r: Routed) -> std::result::Result<(), SendError<Routed>> {
        match self.tx.try_send(r) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(r)) => {
                let waited = Instant::now();
                let sent = self.tx.send(r);
                self.blocked_us
                    .fetch_add(waited.elapsed().as_micros() as u64, Ordering::Relaxed);
                sent
            }
            Err(TrySendError::Disconnected(r)) => Err(SendError(r)),
        }
    }
}

/// Running readers: parsed steps arrive on `rx`, one [`Routed`] per chunk read.
pub struct Readers {
    /// Steps and rejects; `rows` counts the non-blank lines.
    pub rx: Receiver<Routed>,
    /// Microseconds the readers spent waiting on a full channel.
    pub blocked_us: Arc<AtomicU64>,
    /// Connection id -> description (`tcp 127.0.0.1:5123`, `stdin`), for messages.
    pub names: Arc<Mutex<Vec<String>>>,
    /// The bound address (tcp).
    pub local_addr: Option<SocketAddr>,
    /// Connections refused so far (over the cap, or no thread could be started).
    pub refused: Arc<std::sync::atomic::AtomicU64>,
    /// Broker sources: set when the run is over, to let the connection go (it stays up
    /// after a stop, for the last acknowledgements).
    pub done: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Readers {
    /// Starts reading. A TCP listener is bound before this returns, so an address in use
    /// is an error here, not later.
    /// `int_keys`: the key type when it is known before the first line (a resumed run's
    /// keys); otherwise the first accepted line decides.
    pub fn start(
        cfg: &LiveSource,
        columns: &Columns,
        peers: usize,
        stop: Arc<AtomicBool>,
        int_keys: Option<bool>,
    ) -> Result<Readers> {
        let (tx, rx, blocked_us) = Outbox::bounded(CHANNEL_BATCHES);
        let names = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let shared = Shared::new(cfg, columns, peers, stop);
        if let Some(int) = int_keys {
            shared
                .key_kind
                .store(if int { KIND_INT } else { KIND_STR }, Ordering::Relaxed);
        }
        let shared = Arc::new(shared);
        let refused = shared.refused.clone();
        let mut threads = Vec::new();
        let mut local_addr = None;
        match &cfg.transport {
            Transport::Tcp { listen } => {
                let listener = TcpListener::bind(listen).map_err(|e| Error::Io {
                    path: PathBuf::from(format!("tcp {listen}")),
                    source: e,
                })?;
                listener
                    .set_nonblocking(true)
                    .map_err(|e| Error::Runtime(e.to_string()))?;
                local_addr = listener.local_addr().ok();
                let names = names.clone();
                threads.push(spawn("acceptor", move || {
                    accept_loop(listener, tx, names, shared)
                })?);
            }
            Transport::Stdin => {
                names.lock().expect("names").push("stdin".to_string());
                threads.push(spawn("stdin reader", move || {
                    read_lines(std::io::stdin().lock(), 0, &tx, &shared);
                })?);
            }
            Transport::Mqtt(m) => {
                names
                    .lock()
                    .expect("names")
                    .push(format!("mqtt {} {}", m.broker, m.topics.join(",")));
                let session = super::mqtt::connect(m)?;
                let (stop, done) = (shared.stop.clone(), done.clone());
                // A message is parsed whole, whatever the stop flag says: its acknowledgement
                // rides on its last batch.
                let mut parser = MessageParser::new(Arc::new(Shared::detached(&shared)));
                threads.push(spawn("mqtt reader", move || {
                    let parse = |bytes: &[u8], topic: &str| {
                        let mut out = parser.parse(bytes, 0);
                        for r in &mut out {
                            for j in &mut r.rejects {
                                j.detail = if j.detail.is_empty() {
                                    format!("in a message on {topic}")
                                } else {
                                    format!("{} (in a message on {topic})", j.detail)
                                };
                            }
                        }
                        out
                    };
                    super::mqtt::read(session, tx, stop, done, parse);
                })?);
            }
            Transport::Kafka(_) => {
                return Err(Error::Runtime(
                    "a Kafka source is read by Readers::kafka, one reader per worker".into(),
                ))
            }
        }
        Ok(Readers {
            rx,
            blocked_us,
            names,
            local_addr,
            refused,
            done,
            threads,
        })
    }

    /// A Kafka source's readers in this process: one per local worker (of `workers`,
    /// numbered from `first` among `peers`) that has partitions, each reading its share
    /// from the checkpoint's offsets in `from` (or the source's `start`). Also returns the
    /// name of every partition (a reject's source is its partition). The topic must exist.
    #[allow(clippy::too_many_arguments)]
    pub fn kafka(
        cfg: &LiveSource,
        src: &super::kafka::KafkaSource,
        columns: &Columns,
        (first, workers, peers): (usize, usize, usize),
        stop: Arc<AtomicBool>,
        int_keys: Option<bool>,
        from: &std::collections::BTreeMap<i32, i64>,
        warn: Arc<dyn Fn(String) + Send + Sync>,
    ) -> Result<(Vec<Option<Readers>>, Vec<String>)> {
        let io = |e: String| Error::Io {
            path: PathBuf::from(format!("kafka {}", src.brokers.join(","))),
            source: std::io::Error::other(e),
        };
        let discovery = crate::kafka::Kafka::connect(&src.brokers, &src.client_id).map_err(io)?;
        let partitions = discovery.partitions(&src.topic).map_err(io)?;
        // Where each of this process's partitions begins is settled before the run says it
        // is subscribed: a record produced after that line is never skipped by "latest".
        // A resumed run reads partitions its checkpoint does not name from their start.
        let mut from = from.clone();
        let start = if from.is_empty() {
            src.start
        } else {
            super::kafka::Start::Earliest
        };
        for w in first..first + workers {
            for p in super::kafka::assigned(&partitions, w, peers) {
                if from.contains_key(&p) {
                    continue;
                }
                let at = match start {
                    super::kafka::Start::Earliest => rskafka::client::partition::OffsetAt::Earliest,
                    super::kafka::Start::Latest => rskafka::client::partition::OffsetAt::Latest,
                };
                let offset = discovery
                    .partition(&src.topic, p)
                    .and_then(|c| discovery.request(c.get_offset(at)))
                    .map_err(|e| io(format!("partition {p} of `{}`: {e}", src.topic)))?;
                from.insert(p, offset);
            }
        }
        let top = partitions.iter().copied().max().unwrap_or(0).max(0) as usize;
        let names: Vec<String> = (0..=top).map(|p| format!("kafka {}/{p}", src.topic)).collect();
        // Every reader of the process parses with the same settings and key kind.
        let shared = Shared::new(cfg, columns, peers, stop.clone());
        if let Some(int) = int_keys {
            shared
                .key_kind
                .store(if int { KIND_INT } else { KIND_STR }, Ordering::Relaxed);
        }
        let shared = Arc::new(Shared::detached(&shared));
        let mut out = Vec::new();
        for w in first..first + workers {
            // Every assigned partition's first offset was settled above.
            let mine: Vec<(i32, i64)> = super::kafka::assigned(&partitions, w, peers)
                .into_iter()
                .filter_map(|p| from.get(&p).map(|&o| (p, o)))
                .collect();
            if mine.is_empty() {
                out.push(None);
                continue;
            }
            let kafka = match crate::kafka::Kafka::connect(&src.brokers, &src.client_id) {
                Ok(k) => k,
                Err(e) => {
                    // The run fails: the readers already started stop with it.
                    stop.store(true, Ordering::Relaxed);
                    return Err(io(e));
                }
            };
            let (tx, rx, blocked_us) = Outbox::bounded(CHANNEL_BATCHES);
            let parser = MessageParser::new(shared.clone());
            let (src, stop, warn) = (src.clone(), stop.clone(), warn.clone());
            let thread = spawn("kafka reader", move || {
                super::kafka::read(kafka, &src, mine, parser, tx, stop, &*warn);
            })?;
            out.push(Some(Readers {
                rx,
                blocked_us,
                names: Arc::new(Mutex::new(names.clone())),
                local_addr: None,
                refused: Arc::default(),
                done: Arc::default(),
                threads: vec![thread],
            }));
        }
        Ok((out, names))
    }

    /// Waits for the acceptor and readers to finish (after stop or end of input).
    pub fn join(self) {
        self.done.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Reads a whole stream on this thread as one connection is read (same framing, header,
/// limits and per-line rejects) and returns what a reader would have sent. For tests and
/// the parser's fuzzing bench.
pub fn read_stream<R: Read>(cfg: &LiveSource, columns: &Columns, peers: usize, r: R) -> Vec<Routed> {
    let (tx, rx) = Outbox::unbounded();
    let shared = Shared::new(cfg, columns, peers, Arc::new(AtomicBool::new(false)));
    read_lines(r, 0, &tx, &shared);
    drop(tx);
    rx.into_iter().collect()
}

fn spawn(what: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .spawn(f)
        .map_err(|e| Error::Runtime(format!("could not start the live source's {what} thread: {e}")))
}

const KIND_UNSET: u8 = 0;
const KIND_INT: u8 = 1;
const KIND_STR: u8 = 2;

struct Shared {
    fields: FieldMap,
    /// Arrow streams: the columns and their preparation, as for files.
    columns: Columns,
    prep: super::prep::Prep,
    lines: LineFormat,
    header: Option<Vec<String>>,
    max_line: usize,
    max_key: usize,
    max_connections: usize,
    refused: Arc<std::sync::atomic::AtomicU64>,
    peers: usize,
    /// Keys are integers or strings for the whole run: the first accepted line decides.
    key_kind: AtomicU8,
    stop: Arc<AtomicBool>,
}

impl Shared {
    fn new(cfg: &LiveSource, columns: &Columns, peers: usize, stop: Arc<AtomicBool>) -> Shared {
        Shared {
            fields: FieldMap::new(columns),
            columns: columns.clone(),
            prep: super::prep::Prep::new(columns),
            lines: cfg.lines,
            header: cfg.header.clone(),
            max_line: cfg.max_line_bytes,
            max_key: cfg.max_key_bytes,
            max_connections: cfg.max_connections,
            refused: Default::default(),
            peers,
            key_kind: AtomicU8::new(KIND_UNSET),
            stop,
        }
    }
}

impl Shared {
    /// Keys are integers or strings for the whole run: the first accepted key decides.
    /// Whether `kind` is (now) the run's.
    fn lock_key_kind(&self, kind: u8) -> bool {
        match self
            .key_kind
            .compare_exchange(KIND_UNSET, kind, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(k) => k == kind,
        }
    }

    /// The same settings and key kind, with a stop flag of its own that is never set: a
    /// broker message is parsed whole, whatever the run's flag says.
    fn detached(s: &Shared) -> Shared {
        Shared {
            fields: s.fields.clone(),
            columns: s.columns.clone(),
            prep: super::prep::Prep::new(&s.columns),
            lines: s.lines,
            header: s.header.clone(),
            max_line: s.max_line,
            max_key: s.max_key,
            max_connections: s.max_connections,
            refused: s.refused.clone(),
            peers: s.peers,
            key_kind: AtomicU8::new(s.key_kind.load(Ordering::Relaxed)),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Parses broker messages (each one or more whole lines) exactly as a TCP connection's
/// lines, reusing its buffers from message to message.
pub(crate) struct MessageParser {
    shared: Arc<Shared>,
    tx: Outbox,
    rx: Receiver<Routed>,
    payload: Vec<u8>,
    bufs: LineBuffers,
}

impl MessageParser {
    fn new(shared: Arc<Shared>) -> MessageParser {
        let (tx, rx) = Outbox::unbounded();
        MessageParser {
            shared,
            tx,
            rx,
            payload: Vec::new(),
            bufs: LineBuffers::default(),
        }
    }

    /// Whether lines are CSV (whose quotes may span lines).
    pub(crate) fn is_csv(&self) -> bool {
        self.shared.lines == LineFormat::Csv
    }

    /// The routed steps and rejects of one message (its last line needs no newline);
    /// `source` numbers where it came from, rows are its lines from 1.
    pub(crate) fn parse(&mut self, bytes: &[u8], source: u32) -> Vec<Routed> {
        self.payload.clear();
        self.payload.extend_from_slice(bytes);
        if self.payload.last().is_some_and(|&b| b != b'\n') {
            self.payload.push(b'\n');
        }
        read_lines_with(&self.payload[..], source, &self.tx, &self.shared, &mut self.bufs);
        self.rx.try_iter().collect()
    }
}

fn accept_loop(listener: TcpListener, tx: Outbox, names: Arc<Mutex<Vec<String>>>, shared: Arc<Shared>) {
    let mut readers = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, addr)) => {
                readers.retain(|r: &JoinHandle<()>| !r.is_finished());
                if readers.len() >= shared.max_connections {
                    refuse(
                        &mut stream,
                        &shared,
                        format!("{} connections are open (max_connections)", readers.len()),
                    );
                    continue;
                }
                let conn = {
                    let mut n = names.lock().expect("names");
                    n.push(format!("tcp {addr}"));
                    (n.len() - 1) as u32
                };
                let (tx, sh) = (tx.clone(), shared.clone());
                let spare = stream.try_clone();
                match std::thread::Builder::new().spawn(move || serve(stream, conn, tx, sh)) {
                    Ok(r) => readers.push(r),
                    // No thread for it (a process limit): the listener stays up for others.
                    Err(e) => {
                        names.lock().expect("names").pop();
                        if let Ok(mut s) = spare {
                            refuse(&mut s, &shared, format!("no thread for the connection ({e})"));
                        }
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => std::thread::sleep(POLL),
        }
        readers.retain(|r: &JoinHandle<()>| !r.is_finished());
    }
    drop(tx);
    for r in readers {
        let _ = r.join();
    }
}

/// Tells a client why it is not served, and closes it.
fn refuse(stream: &mut TcpStream, shared: &Shared, why: String) {
    use std::io::Write;
    shared.refused.fetch_add(1, Ordering::Relaxed);
    // One write, so that the client reads the whole reason before the end of the stream.
    let msg = format!("seqflow: connection refused: {why}; try again later\n");
    let _ = stream.write_all(msg.as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn serve(stream: TcpStream, conn: u32, tx: Outbox, shared: Arc<Shared>) {
    // Blocking reads with a timeout, so a quiet client does not keep a stopping reader alive.
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(POLL));
    read_lines(stream, conn, &tx, &shared);
}

/// A reader that waits out read timeouts (the socket's poll interval) until stopped: the
/// Arrow stream reader must not see a timeout in the middle of a message.
struct Patient<'a, R> {
    inner: R,
    stop: &'a AtomicBool,
}

impl<R: Read> Read for Patient<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if self.stop.load(Ordering::Relaxed) {
                        return Ok(0);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

/// One connection's Arrow IPC stream: each record batch is checked against the source's
/// columns and routed like parsed lines (the same rejects, numbered by the stream's rows).
/// A batch that does not fit (a column missing or of the wrong type, a non-finite feature
/// under nan = "error") is rejected whole, each row naming the batch; the stream goes on. A
/// stream that breaks (truncated, not Arrow) is one reject, and the connection ends. The
/// Arrow decoder runs under [`crate::guard::catch`]: a panic on a corrupt stream is a reject
/// too, not the end of the reader.
fn read_arrow<R: Read>(r: R, conn: u32, tx: &Outbox, s: &Shared) {
    if let Err(msg) = crate::guard::catch(|| read_arrow_unguarded(r, conn, tx, s)) {
        let mut out = Routed::new(s.peers, conn);
        out.rows = 1;
        out.reject(
            RejectReason::Malformed,
            0,
            None,
            None,
            format!("the Arrow stream could not be decoded: {msg}"),
        );
        let _ = tx.send(out);
    }
}

fn read_arrow_unguarded<R: Read>(r: R, conn: u32, tx: &Outbox, s: &Shared) {
    let name = format!("connection {conn}");
    let reject_all = |row: u64, detail: String| {
        let mut out = Routed::new(s.peers, conn);
        out.rows = 1;
        out.reject(RejectReason::Malformed, row, None, None, detail);
        let _ = tx.send(out);
    };
    let mut reader = Patient {
        inner: std::io::BufReader::with_capacity(1 << 16, r),
        stop: &s.stop,
    };
    // A connection that closes (or a run that stops) before sending anything is not an
    // error: a health check, a port probe, an idle client.
    // (A timeout before the first byte is waited out by `Patient` below, unless the run
    // is stopping.)
    match std::io::BufRead::fill_buf(&mut reader.inner) {
        Ok([]) => return,
        Err(e)
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                && s.stop.load(Ordering::Relaxed) =>
        {
            return
        }
        _ => {}
    }
    let stream = match arrow::ipc::reader::StreamReader::try_new(reader, None) {
        Ok(st) => st,
        Err(e) => {
            if !s.stop.load(Ordering::Relaxed) {
                reject_all(0, format!("not an Arrow IPC stream: {e}"));
            }
            return;
        }
    };
    let map = s
        .columns
        .map(&stream.schema(), std::path::Path::new(&name), false);
    let mut first_row = 0u64;
    for (i, batch) in stream.enumerate() {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                if !s.stop.load(Ordering::Relaxed) {
                    reject_all(first_row, format!("Arrow stream broken at batch {}: {e}", i + 1));
                }
                return;
            }
        };
        // Routed in slices of at most 64k rows: a channel of 256 batches stays bounded
        // whatever batch sizes the client writes.
        for at in (0..batch.num_rows()).step_by(MAX_ARROW_ROWS) {
            let part = batch.slice(at, MAX_ARROW_ROWS.min(batch.num_rows() - at));
            let out = route_arrow(
                &part,
                map.as_ref().map_err(|e| e.to_string()),
                i,
                first_row,
                conn,
                &name,
                s,
            );
            first_row += part.num_rows() as u64;
            if !out.is_empty() && tx.send(out).is_err() {
                return;
            }
        }
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Rows of an Arrow stream's batch routed in one slice.
const MAX_ARROW_ROWS: usize = 1 << 16;

/// One slice of an Arrow stream's batch `i` as steps, or as rejects when it does not fit:
/// the columns (`map`), the key limits of line streams (`max_key_bytes`, one key type for the
/// whole run).
fn route_arrow(
    batch: &arrow::array::RecordBatch,
    map: std::result::Result<&crate::input::columns::ColumnMap, String>,
    i: usize,
    first_row: u64,
    conn: u32,
    name: &str,
    s: &Shared,
) -> Routed {
    let rows = batch.num_rows() as u64;
    let checked = map.and_then(|m| {
        // The key rules of line streams: one type for the run, strings of max_key bytes.
        let kind = if m.key_type.is_integer() {
            KIND_INT
        } else {
            KIND_STR
        };
        if !s.lock_key_kind(kind) {
            return Err(format!(
                "its keys are {} but the stream's keys so far are {}; a stream's keys are all one type",
                if kind == KIND_INT { "integers" } else { "strings" },
                if kind == KIND_INT { "strings" } else { "integers" },
            ));
        }
        if kind == KIND_STR {
            let keys = arrow::compute::cast(batch.column(m.key), &arrow::datatypes::DataType::Utf8)
                .map_err(|e| e.to_string())?;
            let keys = arrow::array::AsArray::as_string::<i32>(&keys);
            if let Some(long) = keys.iter().flatten().find(|k| k.len() > s.max_key) {
                return Err(format!(
                    "a key is {} bytes, more than max_key_bytes = {}",
                    long.len(),
                    s.max_key
                ));
            }
        }
        Ok(m)
    });
    let routed = checked.and_then(|m| {
        let at = super::arrow::Origin {
            path: std::path::Path::new(&name),
            format: FileFormat::Arrow,
            source: conn,
            first_row,
        };
        super::arrow::route_batch(batch, m, &s.columns, &s.prep, at, s.peers).map_err(|e| e.to_string())
    });
    {
        match routed {
            Ok(mut out) => {
                // Arrival: when the batch was read (its rows' latency runs from here).
                let now = now_us();
                for b in &mut out.batches {
                    b.arrivals = vec![now; b.times.len()];
                }
                out
            }
            // Every row of the batch is a reject (each row read is a step or a reject).
            Err(msg) => {
                let mut out = Routed::new(s.peers, conn);
                out.rows = rows;
                let detail = format!("batch {} ({rows} rows) rejected: {msg}", i + 1);
                for r in 0..rows {
                    out.reject(RejectReason::Malformed, first_row + r, None, None, detail.clone());
                }
                out
            }
        }
    }
}

/// Reads lines until end of input or stop; complete lines already read are always handed on.
/// (An Arrow source reads its connection's IPC stream instead.)
fn read_lines<R: Read>(r: R, conn: u32, tx: &Outbox, s: &Shared) {
    if s.lines == LineFormat::Arrow {
        return read_arrow(r, conn, tx, s);
    }
    let mut bufs = LineBuffers::default();
    read_lines_with(r, conn, tx, s, &mut bufs);
}

/// The read and line buffers of [`read_lines`], kept by a caller that reads many small
/// inputs (one per MQTT message: allocating and zeroing 128 KB per message was a tenth of
/// the reader's time).
#[derive(Default)]
pub(crate) struct LineBuffers {
    buf: Vec<u8>,
    chunk: Vec<u8>,
}

fn read_lines_with<R: Read>(mut r: R, conn: u32, tx: &Outbox, s: &Shared, bufs: &mut LineBuffers) {
    let buf = &mut bufs.buf;
    buf.clear();
    if bufs.chunk.len() < 1 << 16 {
        bufs.chunk.resize(1 << 16, 0);
    }
    let chunk = &mut bufs.chunk;
    let mut line_no = 0u64;
    let mut discarding = false;
    let mut discarded_line = 0u64;
    let mut header: Option<Vec<usize>> = None;
    if let Some(cols) = &s.header {
        match s.fields.csv_header(cols) {
            Ok(h) => header = Some(h),
            Err(_) => return, // the pipeline file was refused at load
        }
    }
    let mut feats = vec![0f32; s.fields.width()];
    loop {
        let n = match r.read(chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            }
            Err(_) => 0,
        };
        let arrival = now_us();
        let eof = n == 0;
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Routed::new(s.peers, conn);
        let too_long = || format!("line longer than {} bytes", s.max_line);
        let mut start = 0;
        let mut search = 0;
        // Framing does not depend on how the bytes arrive: a record ends at its first
        // newline outside quotes, or, once past max_line bytes, at its first newline.
        while let Some(rel) = buf[search..].iter().position(|&b| b == b'\n') {
            let pos = search + rel;
            if discarding {
                // The end of a record already past max_line, whose start was dropped.
                discarding = false;
                line_no += 1;
                out.rows += 1;
                out.reject(RejectReason::Malformed, discarded_line, None, None, too_long());
                start = pos + 1;
                search = start;
                continue;
            }
            let raw = &buf[start..pos];
            let long = raw.len() > s.max_line;
            // A CSV record goes on past a newline inside quotes (up to max_line bytes).
            if !long && s.lines == LineFormat::Csv && raw.iter().filter(|&&b| b == b'"').count() % 2 == 1 {
                search = pos + 1;
                continue;
            }
            let first_line = line_no + 1;
            line_no += 1 + raw.iter().filter(|&&b| b == b'\n').count() as u64;
            start = pos + 1;
            search = start;
            if long {
                out.rows += 1;
                out.reject(RejectReason::Malformed, first_line, None, None, too_long());
                continue;
            }
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            out.rows += 1;
            parse_line(s, line, first_line, arrival, &mut header, &mut feats, &mut out);
        }
        buf.drain(..start);
        if !discarding && buf.len() > s.max_line {
            // Past max_line with no end yet: dropped as it arrives, reported at its end.
            discarding = true;
            discarded_line = line_no + 1;
            line_no += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        if discarding {
            buf.clear();
        }
        if eof && (discarding || !buf.is_empty()) {
            out.rows += 1;
            let (at, detail) = match discarding {
                true => (
                    discarded_line,
                    format!("{}, cut off by the disconnect", too_long()),
                ),
                false => (
                    line_no + 1,
                    "incomplete last line: the client disconnected in the middle of it".into(),
                ),
            };
            out.reject(RejectReason::Malformed, at, None, None, detail);
            buf.clear();
        }
        if !out.is_empty() && tx.send(out).is_err() {
            return;
        }
        if eof || s.stop.load(Ordering::Relaxed) {
            break;
        }
    }
}

fn parse_line(
    s: &Shared,
    line: &[u8],
    line_no: u64,
    arrival: u64,
    header: &mut Option<Vec<usize>>,
    feats: &mut [f32],
    out: &mut Routed,
) {
    let parsed = match s.lines {
        // Arrow streams are read by `read_arrow`; a broker refuses lines = "arrow" at load.
        LineFormat::Jsonl | LineFormat::Arrow => s.fields.parse_json(line, feats),
        LineFormat::Csv => {
            let mut rdr = csv::ReaderBuilder::new().has_headers(false).from_reader(line);
            let mut rec = csv::StringRecord::new();
            match rdr.read_record(&mut rec) {
                Err(e) => Err((RejectReason::Malformed, format!("not a CSV record: {e}"))),
                Ok(_) if header.is_none() => {
                    let names: Vec<String> = rec.iter().map(String::from).collect();
                    match s.fields.csv_header(&names) {
                        Ok(h) => {
                            *header = Some(h);
                            // A header names the columns: it is not a row (a bad one is).
                            out.rows -= 1;
                        }
                        Err(e) => out.reject(RejectReason::Malformed, line_no, None, None, e),
                    }
                    return;
                }
                Ok(_) => s.fields.parse_csv(header.as_ref().expect("header"), &rec, feats),
            }
        }
    };
    let (key, time) = match parsed {
        Ok(v) => v,
        Err::<_, LineError>((reason, detail)) => return out.reject(reason, line_no, None, None, detail),
    };
    if let Key::Str(k) = &key {
        if k.len() > s.max_key {
            let detail = format!(
                "key is {} bytes, more than max_key_bytes = {}",
                k.len(),
                s.max_key
            );
            return out.reject(RejectReason::Malformed, line_no, None, Some(time), detail);
        }
    }
    let kind = if matches!(key, Key::Int(_)) {
        KIND_INT
    } else {
        KIND_STR
    };
    if !s.lock_key_kind(kind) {
        let (this, first) = if kind == KIND_INT {
            ("an integer", "strings")
        } else {
            ("a string", "integers")
        };
        let detail = format!("key is {this} but earlier lines had {first}; a stream's keys are all one type");
        return out.reject(RejectReason::Malformed, line_no, None, None, detail);
    }
    out.push(key.as_ref(), time, line_no, feats, Some(arrival));
}
