//! The Kafka source. A topic's partitions are shared among all workers of all processes
//! (partition `p` goes to worker `p % workers`); each worker that has partitions runs one
//! reader thread that keeps a fetch in flight on every one of them, parses each record's
//! value (one or more lines, exactly as a TCP connection's) and hands the steps on with the
//! partition's next offset and high watermark. The offsets a run has fed before a
//! checkpoint's boundary are part of that checkpoint, and `--resume` fetches from them: a
//! record is neither lost nor applied twice. Without a checkpoint, `start` says where to
//! begin. A broker that goes away is retried with backoff, and said so on stderr.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient};

use super::live::MessageParser;
use super::Routed;
use crate::kafka::{short, Kafka};
use crate::record::PartitionOffset;

/// Where to read and where to begin.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSource {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The topic.
    pub topic: String,
    /// Where to begin in a partition that no checkpoint names.
    pub start: Start,
    /// The client's name, as the brokers log it.
    pub client_id: String,
}

/// Where a partition is read from when no checkpoint says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest record the broker keeps.
    Earliest,
    /// Only records produced from now on.
    Latest,
}

/// Bytes asked for per fetch and partition (a record larger than this is still returned whole).
const FETCH_BYTES: i32 = 1 << 20;
/// How long the broker may hold a fetch open waiting for records, when the partition's last
/// fetch brought none (a long poll: Kafka answers as soon as a record comes).
const FETCH_WAIT_IDLE_MS: i32 = 100;
/// ... and when it brought records: some brokers (tansu 0.6) hold every fetch for its whole
/// wait even with records at hand, which capped a backlog's reading at a fetch per wait.
const FETCH_WAIT_BUSY_MS: i32 = 1;
/// How often the reader looks at the stop flag while fetches are out.
const POLL: Duration = Duration::from_millis(50);

/// Which partitions of `partitions` worker `worker` of `peers` reads.
pub fn assigned(partitions: &[i32], worker: usize, peers: usize) -> Vec<i32> {
    partitions
        .iter()
        .copied()
        .filter(|&p| p as usize % peers.max(1) == worker)
        .collect()
}

/// One partition being read.
struct Reading {
    client: Arc<PartitionClient>,
    next: i64,
    high: i64,
    /// The last fetch brought records.
    busy: bool,
}

/// A fetch's partition (index) and its records and high watermark, or why not.
type Fetched = (
    usize,
    Result<(Vec<rskafka::record::RecordAndOffset>, i64), FetchError>,
);

/// Why a fetch brought nothing.
enum FetchError {
    /// The broker's answer (or rskafka's, after its retries).
    Broker(KafkaError),
    /// No answer by [`FETCH_DEADLINE`].
    NoAnswer,
}

/// How long a fetch may take before the broker counts as unreachable.
const FETCH_DEADLINE: Duration = crate::kafka::REQUEST_TIMEOUT;

/// The reader thread's body: fetches `partitions` (each from its given first offset: the
/// checkpoint's, or where `start` put it) until `stop`, sending what it parsed on `tx` (the partition number
/// is the reject's source, its offset the reject's row). `warn` reports an outage once, and
/// the recovery.
#[allow(clippy::too_many_arguments)]
pub(crate) fn read(
    kafka: Kafka,
    src: &KafkaSource,
    starts: Vec<(i32, i64)>,
    mut parser: MessageParser,
    tx: super::live::Outbox,
    stop: Arc<AtomicBool>,
    warn: &(dyn Fn(String) + Send + Sync),
) {
    let topic = src.topic.as_str();
    let partitions: Vec<i32> = starts.iter().map(|&(p, _)| p).collect();
    let mut reading: Vec<Reading> = Vec::new();
    for &(p, first) in &starts {
        // A partition that the broker cannot serve yet is retried until it can, or the stop.
        let mut down: Option<Instant> = None;
        let r = loop {
            let begin = match kafka.partition(topic, p) {
                // Where it begins was settled before the run said it is subscribed.
                Ok(c) => Ok(Reading {
                    client: Arc::new(c),
                    next: first,
                    high: first,
                    busy: true,
                }),
                Err(e) => Err(e),
            };
            match begin {
                Ok(r) => break Some(r),
                Err(e) => {
                    if down.is_none() {
                        warn(format!(
                            "kafka {}: partition {p} of `{topic}` unavailable ({e}); retrying",
                            kafka.brokers
                        ));
                    }
                    down.get_or_insert_with(Instant::now);
                    if stop.load(Ordering::Relaxed) {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        match r {
            Some(r) => reading.push(r),
            None => return,
        }
    }
    // rskafka may wait without end for a broker that went away: a fetch gets a deadline.
    let fetch = |i: usize, r: &Reading| {
        let (c, at) = (r.client.clone(), r.next);
        let wait = if r.busy {
            FETCH_WAIT_BUSY_MS
        } else {
            FETCH_WAIT_IDLE_MS
        };
        async move {
            let f = c.fetch_records(at, 1..FETCH_BYTES, wait);
            match tokio::time::timeout(FETCH_DEADLINE, f).await {
                Ok(r) => (i, r.map_err(FetchError::Broker)),
                Err(_) => (i, Err(FetchError::NoAnswer)),
            }
        }
    };
    // Where every partition starts, idle ones too: a checkpoint names each partition read.
    let mut first = Routed::new(0, 0);
    first.offsets = partitions
        .iter()
        .zip(&reading)
        .map(|(&p, r)| PartitionOffset {
            partition: p,
            next: r.next,
            high: r.high,
        })
        .collect();
    if tx.send(first).is_err() {
        return;
    }
    let csv = parser.is_csv();
    let mut inflight: FuturesUnordered<_> = reading.iter().enumerate().map(|(i, r)| fetch(i, r)).collect();
    let mut payload = Vec::new();
    let mut line_offsets: Vec<i64> = Vec::new();
    let mut down: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let next: Option<Fetched> = kafka.block_on(async {
            tokio::time::timeout(POLL, inflight.next())
                .await
                .unwrap_or_default()
        });
        let Some((i, res)) = next else { continue };
        let r = &mut reading[i];
        let p = partitions[i];
        match res {
            Ok((records, high)) => {
                if let Some(since) = down.take() {
                    warn(format!(
                        "kafka {}: reading `{topic}` again after {:.1} s",
                        kafka.brokers,
                        since.elapsed().as_secs_f64()
                    ));
                }
                // JSON lines: one parse per fetch, each line remembered with its record. CSV:
                // one parse per record, so that a stray quote cannot run into the next ones.
                payload.clear();
                line_offsets.clear();
                let mut out = Vec::new();
                let mut last = None;
                let mut want = r.next;
                for rec in &records {
                    // A batch may start before the offset asked for; a broker may also send
                    // a record twice in one answer (tansu 0.6 does): each offset once, in order.
                    if rec.offset < want {
                        continue;
                    }
                    want = rec.offset + 1;
                    last = Some(rec.offset);
                    let Some(v) = rec.record.value.as_deref().filter(|v| !v.is_empty()) else {
                        continue;
                    };
                    if csv {
                        for mut o in parser.parse(v, p as u32) {
                            for b in &mut o.batches {
                                b.rows.iter_mut().for_each(|row| *row = rec.offset as u64);
                            }
                            o.rejects.iter_mut().for_each(|j| j.row = rec.offset as u64);
                            out.push(o);
                        }
                        continue;
                    }
                    payload.extend_from_slice(v);
                    let lines = v.iter().filter(|&&b| b == b'\n').count() + usize::from(!v.ends_with(b"\n"));
                    if !v.ends_with(b"\n") {
                        payload.push(b'\n');
                    }
                    line_offsets.extend(std::iter::repeat_n(rec.offset, lines));
                }
                if !payload.is_empty() {
                    out = parser.parse(&payload, p as u32);
                    // Rows are the records' offsets (a reject names its partition and offset).
                    let offset_of = |line: u64| {
                        line_offsets
                            .get((line as usize).saturating_sub(1))
                            .copied()
                            .unwrap_or(r.next) as u64
                    };
                    for o in &mut out {
                        for b in &mut o.batches {
                            for row in &mut b.rows {
                                *row = offset_of(*row);
                            }
                        }
                        for j in &mut o.rejects {
                            j.row = offset_of(j.row);
                        }
                    }
                }
                // Nothing readable below the high watermark (a transaction's marker, which
                // rskafka does not hand out): the broker answers at once, so wait a little.
                if last.is_none() && high > r.next {
                    std::thread::sleep(Duration::from_millis(50));
                }
                r.busy = last.is_some();
                let moved = last.is_some_and(|l| l + 1 > r.next) || high != r.high;
                if let Some(l) = last {
                    r.next = r.next.max(l + 1);
                }
                r.high = high.max(r.next);
                if moved {
                    if out.is_empty() {
                        out.push(Routed::new(0, p as u32));
                    }
                    out.last_mut().expect("one").offsets.push(PartitionOffset {
                        partition: p,
                        next: r.next,
                        high: r.high,
                    });
                }
                for o in out {
                    if tx.send(o).is_err() {
                        return;
                    }
                }
            }
            Err(FetchError::Broker(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            })) => {
                // The records asked for are gone (retention) or not there yet: go on from
                // the oldest kept record when behind it, and say what was skipped.
                let earliest = kafka.request(r.client.get_offset(OffsetAt::Earliest));
                let latest = kafka.request(r.client.get_offset(OffsetAt::Latest));
                if let (Ok(e), Ok(l)) = (earliest, latest) {
                    let moved_to = if r.next < e {
                        warn(format!(
                            "kafka {}: partition {p} of `{topic}` no longer holds offsets {}..{} (retention); going on from {e}",
                            kafka.brokers, r.next, e
                        ));
                        Some(e)
                    } else if r.next > l {
                        warn(format!(
                            "kafka {}: partition {p} of `{topic}` ends at {l}, before the offset to read ({}); going on from {l}",
                            kafka.brokers, r.next
                        ));
                        Some(l)
                    } else {
                        None
                    };
                    // The new position goes into the next checkpoint like any other.
                    if let Some(at) = moved_to {
                        r.next = at;
                        r.high = at.max(l);
                        let mut o = Routed::new(0, p as u32);
                        o.offsets.push(PartitionOffset {
                            partition: p,
                            next: r.next,
                            high: r.high,
                        });
                        if tx.send(o).is_err() {
                            return;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                if down.is_none() {
                    let why = match e {
                        FetchError::Broker(e) => short(&e),
                        FetchError::NoAnswer => format!("no answer within {} s", FETCH_DEADLINE.as_secs()),
                    };
                    warn(format!(
                        "kafka {}: cannot fetch partition {p} of `{topic}` ({why}); retrying",
                        kafka.brokers
                    ));
                    down = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        inflight.push(fetch(i, &reading[i]));
    }
}
