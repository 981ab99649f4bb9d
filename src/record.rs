//! The records that flow through the dataflow. They are columnar batches, not rows: a
//! source converts an Arrow record batch into one [`StepBatch`] per destination worker, and
//! the keyed operator sends [`OutBatch`]es to the sink. Batches keep timely's per-record
//! overhead and the serialization between processes proportional to batches, not rows.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::vocab::mix64;

/// A column of keys: integers, or strings stored Arrow-style (one buffer plus offsets), so
/// building a batch does not allocate per row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KeyColumn {
    /// Integer keys.
    Int(Vec<i64>),
    /// String keys.
    Str {
        /// Key `i` is `bytes[offsets[i]..offsets[i + 1]]`.
        offsets: Vec<u32>,
        /// Every key's text, back to back.
        bytes: String,
    },
}

/// Fixed number of key groups. A key's group never changes between builds or worker
/// counts; its worker is `group % workers`.
pub const KEY_GROUPS: usize = 4096;

/// A borrowed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyRef<'a> {
    /// An integer key.
    Int(i64),
    /// A string key.
    Str(&'a str),
}

/// An owned key, as held in a worker's key map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Key {
    /// An integer key.
    Int(i64),
    /// A string key.
    Str(Box<str>),
}

impl Key {
    /// Borrows the key.
    pub fn as_ref(&self) -> KeyRef<'_> {
        match self {
            Key::Int(i) => KeyRef::Int(*i),
            Key::Str(s) => KeyRef::Str(s),
        }
    }
}

impl KeyRef<'_> {
    /// An owned copy (for rejects and views).
    pub fn to_owned(self) -> Key {
        match self {
            KeyRef::Int(i) => Key::Int(i),
            KeyRef::Str(s) => Key::Str(s.into()),
        }
    }

    /// The key's 64-bit hash, **stable forever**: it decides which worker owns a key and,
    /// through checkpoints, is persisted, so two builds (or two toolchains) must agree on it.
    /// std's `DefaultHasher` makes no such promise, so the algorithm is spelled out here:
    ///
    /// - integer `i`: `mix64(i as u64)` (the splitmix64 finalizer);
    /// - string: `h = 0`; for each 8-byte chunk of its UTF-8 bytes (the last one zero-padded),
    ///   read little-endian as `v`: `h = (h.rotl(5) ^ v) * 0x517c_c1b7_2722_0a95`; then the
    ///   same step with `v = len`; result `mix64(h)`. FxHash's mixing is cheap; the
    ///   finalizer makes the low bits depend on every input bit (plain Fx ends in a multiply,
    ///   and sequential keys then collided into long probe chains in the key index).
    ///
    /// `record::tests::stable_hash_is_pinned` fails if any of this changes.
    #[inline]
    pub fn stable_hash(self) -> u64 {
        match self {
            KeyRef::Int(i) => mix64(i as u64),
            KeyRef::Str(s) => {
                let step = |h: u64, v: u64| (h.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
                let bytes = s.as_bytes();
                let mut h = 0u64;
                // Whole words as loads; a short tail assembled byte by byte (copying it into
                // a zeroed buffer compiled to a call to memcpy per key).
                let mut words = bytes.chunks_exact(8);
                for w in &mut words {
                    h = step(h, u64::from_le_bytes(w.try_into().expect("8 bytes")));
                }
                let tail = words.remainder();
                if !tail.is_empty() {
                    let v = tail.iter().rev().fold(0u64, |v, &b| (v << 8) | b as u64);
                    h = step(h, v);
                }
                mix64(step(h, bytes.len() as u64))
            }
        }
    }

    /// The key's group (of [`KEY_GROUPS`]): what checkpoints record, so that a run with
    /// any worker count can find the keys it owns.
    #[inline]
    pub fn group(self) -> u16 {
        (self.stable_hash() % KEY_GROUPS as u64) as u16
    }

    /// The worker (of `peers`) that owns this key: its group modulo the workers.
    #[inline]
    pub fn route(self, peers: usize) -> usize {
        self.group() as usize % peers
    }
}

impl fmt::Display for KeyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Int(i) => write!(f, "{i}"),
            KeyRef::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl KeyColumn {
    /// An empty column of the same key kind.
    pub fn new_like(&self) -> KeyColumn {
        match self {
            KeyColumn::Int(_) => KeyColumn::Int(Vec::new()),
            KeyColumn::Str { .. } => KeyColumn::Str {
                offsets: vec![0],
                bytes: String::new(),
            },
        }
    }

    /// Room for `rows` more keys (string bytes still grow as needed).
    pub fn reserve(&mut self, rows: usize) {
        match self {
            KeyColumn::Int(v) => v.reserve(rows),
            KeyColumn::Str { offsets, .. } => offsets.reserve(rows),
        }
    }

    /// Removes every key, keeping the room.
    pub fn clear(&mut self) {
        match self {
            KeyColumn::Int(v) => v.clear(),
            KeyColumn::Str { offsets, bytes } => {
                offsets.clear();
                offsets.push(0);
                bytes.clear();
            }
        }
    }

    /// Whether `other` holds the same kind of keys (integers or strings).
    pub fn same_kind(&self, other: &KeyColumn) -> bool {
        matches!(
            (self, other),
            (KeyColumn::Int(_), KeyColumn::Int(_)) | (KeyColumn::Str { .. }, KeyColumn::Str { .. })
        )
    }

    /// An empty string column.
    pub fn empty_str() -> KeyColumn {
        KeyColumn::Str {
            offsets: vec![0],
            bytes: String::new(),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        match self {
            KeyColumn::Int(v) => v.len(),
            KeyColumn::Str { offsets, .. } => offsets.len() - 1,
        }
    }

    /// Whether the column has no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    /// Key `i`.
    pub fn get(&self, i: usize) -> KeyRef<'_> {
        match self {
            KeyColumn::Int(v) => KeyRef::Int(v[i]),
            KeyColumn::Str { offsets, bytes } => {
                KeyRef::Str(&bytes[offsets[i] as usize..offsets[i + 1] as usize])
            }
        }
    }

    /// Appends a key; panics if the kinds differ (a batch has one key type).
    #[inline]
    pub fn push(&mut self, k: KeyRef<'_>) {
        match (self, k) {
            (KeyColumn::Int(v), KeyRef::Int(i)) => v.push(i),
            (KeyColumn::Str { offsets, bytes }, KeyRef::Str(s)) => {
                bytes.push_str(s);
                offsets.push(bytes.len() as u32);
            }
            _ => panic!("key kind mismatch within one batch"),
        }
    }
}

/// Input steps bound for one worker, from one unit of input (a file's row-group batch, a
/// slice of a live stream). Rows are in the unit's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepBatch {
    /// Index of the source (file) in the plan, for messages.
    pub source: u32,
    /// Row number (in the source) of each row, for messages and the rejects file; also the
    /// tie-break that makes the order of equal-time steps deterministic.
    pub rows: Vec<u64>,
    /// Key of each row.
    pub keys: KeyColumn,
    /// Time of each row (the time column as i64: integers, or timestamps in their unit).
    pub times: Vec<i64>,
    /// `rows.len() x width` features, already normalized.
    pub features: Vec<f32>,
    /// Live sources: arrival instant of each row in microseconds since the run started
    /// (for latency accounting); empty for files.
    pub arrivals: Vec<u64>,
}

/// Step batches of processed epochs, emptied, waiting to be filled again.
///
/// A reader fills a batch per worker for every record batch it reads: megabytes of rows,
/// keys, times and features, each in fresh memory, page-faulted as it filled (a quarter of
/// the reader thread's time on a 65,536-row epoch). Workers hand the batches of a processed
/// epoch back here ([`StepBatch::recycle`]) and readers take them ([`StepBatch::reuse`]). A
/// few at most: about what a run has in flight.
static SPARE_STEPS: Pool<StepBatch> = Pool::new(8);

/// A batch with room for more features than this is not kept: one outsized batch (a 16 MB
/// MQTT payload at a wide input) would otherwise be held, and handed out, for good.
const SPARE_STEPS_MAX_FEATURES: usize = 16 << 20;

impl StepBatch {
    /// An empty batch from `source` with keys of the kind of `keys`: a recycled one (with
    /// its room) when there is one.
    pub fn reuse(source: u32, keys: &KeyColumn) -> StepBatch {
        match SPARE_STEPS.take_by(|spares| spares.iter().position(|b| b.keys.same_kind(keys))) {
            Some(mut b) => {
                b.source = source;
                b
            }
            None => StepBatch::new(source, keys.new_like()),
        }
    }

    /// Gives the batch's buffers back for a later one (its epoch is processed).
    pub fn recycle(mut self) {
        self.rows.clear();
        self.keys.clear();
        self.times.clear();
        self.features.clear();
        self.arrivals.clear();
        if self.features.capacity() <= SPARE_STEPS_MAX_FEATURES {
            SPARE_STEPS.give(self);
        }
    }

    /// An empty batch from `source`, keys of the kind of `keys`.
    pub fn new(source: u32, keys: KeyColumn) -> StepBatch {
        StepBatch {
            source,
            rows: Vec::new(),
            keys,
            times: Vec::new(),
            features: Vec::new(),
            arrivals: Vec::new(),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Whether the batch has no row.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }
}

/// Why a step was not processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// Its time is before the key's last processed step.
    Late,
    /// Its time equals the key's last processed step.
    Duplicate,
    /// A feature was NaN or infinite and the policy skips such steps.
    NonFinite,
    /// A live line could not be parsed.
    Malformed,
    /// A new key while its worker holds its share of `max_keys` (live).
    KeyLimit,
}

impl RejectReason {
    /// The name written in the rejects file and the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Late => "late",
            RejectReason::Duplicate => "duplicate",
            RejectReason::NonFinite => "non_finite",
            RejectReason::Malformed => "malformed",
            RejectReason::KeyLimit => "key_limit",
        }
    }
}

/// One rejected step, reported in the summary and written to the rejects file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    /// Why.
    pub reason: RejectReason,
    /// The file (index in the plan) or connection it came from.
    pub source: u32,
    /// Its row (files) or line (live) there.
    pub row: u64,
    /// Its key, when it could be read.
    pub key: Option<Key>,
    /// Its time, when it could be read.
    pub time: Option<i64>,
    /// For late and duplicate steps: the key's last processed time.
    pub last_time: Option<i64>,
    /// Free text (the parse error of a malformed line).
    pub detail: String,
}

/// Predictions bound for the sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutBatch {
    /// Key of each row.
    pub keys: KeyColumn,
    /// Time of the input step that completed each row.
    pub times: Vec<i64>,
    /// `times.len() x width`.
    pub values: Vec<f32>,
    /// Values per row: the model's outputs.
    pub width: usize,
    /// Live sources: arrival of the input step that completed each row (us since start).
    pub arrivals: Vec<u64>,
}

/// Value buffers of written output batches, waiting to be filled again.
///
/// An epoch of a wide output is tens of MB of values: above glibc's mmap threshold, so a
/// fresh `Vec` was mapped, page-faulted and zeroed page by page on the worker and unmapped
/// on the writer, every epoch (~7% of a worker's time at LSTM h128 every_step). The sink
/// hands buffers back here ([`OutBatch::recycle`]) and workers take them
/// ([`OutBatch::with_capacity`]). A few at most: enough for the steady state of one epoch
/// being filled while another is written.
static SPARE_VALUES: Spares = Spares::new();

/// A bounded pool, shared by threads, of emptied buffers waiting to be filled again: what
/// [`SPARE_VALUES`] and [`SPARE_STEPS`] are.
struct Pool<T> {
    items: std::sync::Mutex<Vec<T>>,
    max: usize,
}

impl<T> Pool<T> {
    const fn new(max: usize) -> Pool<T> {
        Pool {
            items: std::sync::Mutex::new(Vec::new()),
            max,
        }
    }

    /// The item `pick` chooses among those kept, if any.
    fn take_by(&self, pick: impl FnOnce(&[T]) -> Option<usize>) -> Option<T> {
        let mut items = self.items.lock().ok()?;
        let i = pick(&items)?;
        Some(items.swap_remove(i))
    }

    /// Keeps `item` if fewer than the maximum are kept (dropped otherwise).
    fn give(&self, item: T) {
        if let Ok(mut items) = self.items.lock() {
            if items.len() < self.max {
                items.push(item);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.items.lock().unwrap().len()
    }
}

/// The pool of emptied value buffers.
struct Spares(Pool<Vec<f32>>);

impl Spares {
    /// Buffers kept at most.
    const MAX: usize = 4;
    /// Buffers smaller than this (in floats) are not worth keeping.
    const MIN_FLOATS: usize = 1 << 16;

    const fn new() -> Spares {
        Spares(Pool::new(Self::MAX))
    }

    /// The largest spare (or a new buffer), with room for `need` floats; empty.
    fn take(&self, need: usize) -> Vec<f32> {
        let spare = (need > 0)
            .then(|| self.0.take_by(|s| (0..s.len()).max_by_key(|&i| s[i].capacity())))
            .flatten();
        let mut v = spare.unwrap_or_default();
        v.reserve(need);
        v
    }

    fn give(&self, mut v: Vec<f32>) {
        if v.capacity() < Self::MIN_FLOATS {
            return;
        }
        v.clear();
        self.0.give(v);
    }
}

impl OutBatch {
    /// An empty batch of `width` values per row, keys of the kind of `keys`.
    pub fn new(keys: KeyColumn, width: usize) -> OutBatch {
        OutBatch {
            keys,
            times: Vec::new(),
            values: Vec::new(),
            width,
            arrivals: Vec::new(),
        }
    }

    /// An empty batch with room for `rows` rows, its value buffer taken from the spares
    /// when one is there.
    pub fn with_capacity(keys: KeyColumn, width: usize, rows: usize) -> OutBatch {
        let mut b = OutBatch {
            keys,
            times: Vec::with_capacity(rows),
            values: SPARE_VALUES.take(rows * width),
            width,
            arrivals: Vec::with_capacity(rows),
        };
        b.keys.reserve(rows);
        b
    }

    /// Gives the value buffer back for a later batch (called once the batch is written).
    pub fn recycle(self) {
        SPARE_VALUES.give(self.values);
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Whether the batch has no row.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }
}

/// Counters of one worker, summed at the sink for the final summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Rows (file rows, live lines) read, accepted or not.
    pub rows_read: u64,
    /// Steps accepted and run through the model.
    pub steps_processed: u64,
    /// Predictions emitted.
    pub outputs: u64,
    /// Keys started: distinct keys, plus one for each return of a forgotten key.
    pub keys: u64,
    /// Steps older than their key's last processed step.
    pub late: u64,
    /// Steps at their key's last processed time.
    pub duplicate: u64,
    /// Steps with a NaN or infinite feature that the policy skips.
    pub non_finite: u64,
    /// Rows or lines that could not be read as a step.
    pub malformed: u64,
    /// Bytes of model state held for keys (arena) at the end.
    pub state_bytes: u64,
    /// Live: connections refused (over `max_connections`, or no thread for them).
    pub refused_connections: u64,
    /// Live: lines read but dropped when a stop's drain ran past `drain_timeout_ms`.
    pub dropped_lines: u64,
    /// Live: steps of new keys rejected because their worker held its share of `max_keys`.
    pub key_limit: u64,
    /// Live: keys forgotten after `state_ttl_ms` without steps.
    pub keys_forgotten: u64,
}

impl Stats {
    /// Adds another worker's counters.
    pub fn add(&mut self, o: &Stats) {
        self.rows_read += o.rows_read;
        self.steps_processed += o.steps_processed;
        self.outputs += o.outputs;
        self.keys += o.keys;
        self.late += o.late;
        self.duplicate += o.duplicate;
        self.non_finite += o.non_finite;
        self.malformed += o.malformed;
        self.state_bytes += o.state_bytes;
        self.refused_connections += o.refused_connections;
        self.dropped_lines += o.dropped_lines;
        self.key_limit += o.key_limit;
        self.keys_forgotten += o.keys_forgotten;
    }

    /// Counts one reject.
    pub fn count_reject(&mut self, r: RejectReason) {
        match r {
            RejectReason::Late => self.late += 1,
            RejectReason::Duplicate => self.duplicate += 1,
            RejectReason::NonFinite => self.non_finite += 1,
            RejectReason::Malformed => self.malformed += 1,
            RejectReason::KeyLimit => self.key_limit += 1,
        }
    }
}

/// What the keyed operator sends to the sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SinkMsg {
    /// Predictions.
    Rows(OutBatch),
    /// Rejected steps.
    Rejects(Vec<Reject>),
    /// A worker's counters since its previous message: after each epoch it processed, and
    /// when its input ends. They travel at the epoch's time, so a checkpoint at a boundary
    /// holds exactly the counters of the epochs before it.
    Stats(Stats),
    /// A worker processed an epoch: how long it took and what it holds now (the metrics'
    /// epoch-time histogram and key / state gauges).
    Epoch(EpochReport),
    /// A worker failed (bad input); the run fails and its output is discarded.
    Failed(String),
    /// A worker passed the checkpoint boundary `boundary` (every epoch before it processed,
    /// none from it on), with its counters since its previous mark; its part follows.
    Marked {
        /// The checkpoint.
        boundary: u64,
        /// The worker's counters since its previous mark.
        stats: Stats,
    },
    /// Kafka partitions fed up to here (passed through at the epoch they were fed in).
    Offsets(Vec<PartitionOffset>),
    /// A worker wrote (or failed to write) its part of the checkpoint at `boundary`.
    Part {
        /// The checkpoint.
        boundary: u64,
        /// The part, or why it could not be written.
        part: std::result::Result<PartInfo, String>,
    },
}

/// See [`SinkMsg::Epoch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochReport {
    /// The worker (global index).
    pub worker: u32,
    /// Time spent on the epoch: keying, ordering, the model, emitting.
    pub micros: u64,
    /// Keys held after it.
    pub keys: u64,
    /// Bytes of per-key state held after it.
    pub state_bytes: u64,
}

/// One worker's part, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartInfo {
    /// File name inside the checkpoint's folder.
    pub file: String,
    /// The worker that wrote it (of `workers` at the time).
    pub worker: u32,
    /// Keys in the part.
    pub keys: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the bytes.
    pub crc32: u32,
    /// Whether the part's keys are integers (`None`: it holds no key).
    #[serde(default)]
    pub int_keys: Option<bool>,
}

/// How far a Kafka partition has been fed into the dataflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    /// The partition.
    pub partition: i32,
    /// The offset of the next record to read (every record before it is fed).
    pub next: i64,
    /// The partition's high watermark when last fetched (`high - next` is the lag).
    pub high: i64,
}

/// Records leaving the keyed operator for the sink on worker 0 (the first field routes).
pub type ToSink = (u64, SinkMsg);

/// What the sources send to the keyed operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SourceMsg {
    /// Steps for the receiving worker.
    Steps(StepBatch),
    /// Rows rejected while reading (passed on to the sink).
    Rejects(Vec<Reject>),
    /// A source worker's counters, sent once when it finishes.
    Stats(Stats),
    /// The source failed with this message; forwarded to the sink so every process learns it.
    Failed(String),
    /// Take a checkpoint at this boundary (sent to every worker at a time at most the
    /// boundary, so it arrives before the frontier passes it).
    Mark(u64),
    /// Kafka partitions fed up to here by the end of this epoch (for the sink on worker 0).
    Offsets(Vec<PartitionOffset>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_step_batch_is_empty_and_of_the_kind_asked() {
        // The pool is shared by every test thread: whatever spare comes back, it must be
        // empty, of the asked key kind and from the asked source.
        for round in 0..3u32 {
            let mut s = StepBatch::new(7, KeyColumn::empty_str());
            let mut i = StepBatch::new(8, KeyColumn::Int(Vec::new()));
            for r in 0..100 {
                s.rows.push(r);
                s.keys.push(KeyRef::Str("sensor-1"));
                s.times.push(r as i64);
                s.features.extend_from_slice(&[1.0, 2.0]);
                s.arrivals.push(r);
                i.rows.push(r);
                i.keys.push(KeyRef::Int(r as i64));
                i.times.push(r as i64);
                i.features.push(3.0);
            }
            s.recycle();
            i.recycle();
            for (keys, source) in [
                (KeyColumn::Int(vec![5]), round),
                (KeyColumn::empty_str(), round + 10),
            ] {
                let b = StepBatch::reuse(source, &keys);
                assert!(b.keys.same_kind(&keys));
                assert_eq!(b.source, source);
                assert!(b.is_empty() && b.rows.is_empty() && b.features.is_empty() && b.arrivals.is_empty());
                assert_eq!(b.keys.len(), 0);
                if let KeyColumn::Str { offsets, bytes } = &b.keys {
                    assert_eq!((offsets.as_slice(), bytes.as_str()), (&[0u32][..], ""));
                }
            }
        }
    }

    #[test]
    fn stable_hash_is_pinned() {
        // Persisted in checkpoints and used to route keys: these values must never change.
        // They were computed by a Python transcription of `stable_hash`'s doc comment.
        let got: Vec<u64> = [
            KeyRef::Int(0),
            KeyRef::Int(-1),
            KeyRef::Int(1_700_000_000_123),
            KeyRef::Str(""),
            KeyRef::Str("a7"),
            KeyRef::Str("site01-m00019"),
            KeyRef::Str("ключ-🔑"),
        ]
        .iter()
        .map(|k| k.stable_hash())
        .collect();
        let want = [
            0x0000000000000000,
            0xb4d055fcf2cbbd7b,
            0x0d17c2679fef436c,
            0x0000000000000000,
            0xc9a98a036925c82d,
            0xefa1bf550c09e29d,
            0x4638e95fe6f859c6,
        ];
        assert_eq!(got, want);
        assert_eq!(
            KeyRef::Str("a7").route(3),
            (got[4] % KEY_GROUPS as u64 % 3) as usize
        );
    }

    #[test]
    fn spare_buffers_are_reused_emptied_and_bounded() {
        let pool = Spares::new();
        let mut big = Vec::with_capacity(1 << 17);
        big.extend(std::iter::repeat_n(1.0f32, 1000));
        let ptr = big.as_ptr();
        pool.give(big);
        let again = pool.take(5000);
        assert_eq!(again.as_ptr(), ptr, "the given buffer is handed out again");
        assert!(again.is_empty() && again.capacity() >= 1 << 17);
        // Nothing left: a new buffer, with the room asked for.
        let fresh = pool.take(300);
        assert_ne!(fresh.as_ptr(), ptr);
        assert!(fresh.capacity() >= 300);
        // Small buffers are dropped; at most MAX are kept; the largest comes out first.
        pool.give(Vec::with_capacity(100));
        for i in 0..Spares::MAX + 2 {
            pool.give(Vec::with_capacity(Spares::MIN_FLOATS + i));
        }
        assert_eq!(pool.0.len(), Spares::MAX);
        assert_eq!(pool.take(1).capacity(), Spares::MIN_FLOATS + Spares::MAX - 1);
        // Asking for nothing takes nothing.
        assert_eq!(pool.take(0).capacity(), 0);
        assert_eq!(pool.0.len(), Spares::MAX - 1);
    }
}
