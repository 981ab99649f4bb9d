//! The Kafka output: one JSON object per prediction (the same object a JSON-lines output
//! writes), produced to one topic with the prediction's key as the record key, so that a
//! key's predictions land in one partition, in order (Kafka's default partitioner, as any
//! other producer would place them). Records are handed to a producer thread every epoch
//! (and when many are waiting); a checkpoint is committed only once the brokers have
//! acknowledged every prediction before it, and a run ends only once they hold them all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::kafka::Producer;
use crate::record::{KeyRef, OutBatch};
use crate::sink::{OutputSchema, Sink};

/// Where predictions are produced.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaTarget {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The topic (it must exist).
    pub topic: String,
    /// The client's name, as the brokers log it.
    pub client_id: String,
}

/// Encoded predictions: (record key, record value).
type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Records handed to the producer thread at once, at most (more are sent at the epoch's end).
const SEND_AT: usize = 16_384;
/// Batches waiting for the producer thread (backpressure: a slow cluster blocks the sink).
const QUEUE: usize = 64;
/// How long a send may keep failing (the brokers down) before the run fails.
const GIVE_UP: Duration = Duration::from_secs(30);

/// The Kafka output: records are encoded on worker 0 and produced by a thread of their own,
/// so that the brokers' round trips do not hold up the stream (one produce per epoch on the
/// worker held a backlog to 10k rows/s); while a produce is out, the next epochs' records
/// gather into one.
pub struct KafkaSink {
    target: KafkaTarget,
    /// Encodes batches as JSON objects, exactly as the JSON-lines output writes them.
    encoder: Sink,
    key: String,
    pending: Records,
    tx: Option<crossbeam_channel::Sender<Records>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Predictions handed to the producer thread.
    pub rows: u64,
    acked: Arc<AtomicU64>,
    failed: Arc<Mutex<Option<String>>>,
}

impl KafkaSink {
    /// Connects and looks the topic up (a missing topic or an unreachable cluster fails
    /// the run at once), then starts the producer thread.
    pub fn connect(target: &KafkaTarget, schema: OutputSchema) -> Result<KafkaSink> {
        let mut producer = Producer::connect(&target.brokers, &target.topic, &target.client_id, None)
            .map_err(|msg| Error::Output {
                path: format!("kafka {}", target.topic).into(),
                msg,
            })?;
        let (tx, rx) = crossbeam_channel::bounded::<Records>(QUEUE);
        let acked = Arc::new(AtomicU64::new(0));
        let failed: Arc<Mutex<Option<String>>> = Arc::default();
        let (count, fail) = (acked.clone(), failed.clone());
        let thread = std::thread::Builder::new()
            .name("seqflow-kafka-out".into())
            .spawn(move || {
                // Everything waiting goes into one round of produce requests.
                while let Ok(first) = rx.recv() {
                    for (k, v) in first.into_iter().chain(rx.try_iter().flatten()) {
                        producer.push(&k, v);
                    }
                    let start = Instant::now();
                    loop {
                        match producer.flush() {
                            Ok(()) => break,
                            Err(msg) if start.elapsed() > GIVE_UP => {
                                *fail.lock().expect("failed") =
                                    Some(format!("{msg} (retried for {} s)", GIVE_UP.as_secs()));
                                return;
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(200)),
                        }
                    }
                    count.store(producer.acked, Ordering::Relaxed);
                }
            })
            .map_err(|e| Error::Output {
                path: format!("kafka {}", target.topic).into(),
                msg: format!("could not start the producer thread: {e}"),
            })?;
        Ok(KafkaSink {
            target: target.clone(),
            encoder: Sink::encoder(schema),
            key: String::new(),
            pending: Vec::new(),
            tx: Some(tx),
            thread: Some(thread),
            rows: 0,
            acked,
            failed,
        })
    }

    fn failure(&self) -> Result<()> {
        match self.failed.lock().expect("failed").clone() {
            Some(msg) => Err(Error::Output {
                path: format!("kafka {}", self.target.topic).into(),
                msg,
            }),
            None => Ok(()),
        }
    }

    /// Encodes every prediction of `b` (handing them on when many are waiting).
    pub fn write(&mut self, b: &OutBatch) -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let lines = self.encoder.json_lines(b)?;
        for (i, line) in lines.split(|&c| c == b'\n').filter(|l| !l.is_empty()).enumerate() {
            self.key.clear();
            match b.keys.get(i) {
                KeyRef::Int(k) => self.key.push_str(&k.to_string()),
                KeyRef::Str(s) => self.key.push_str(s),
            }
            self.pending.push((self.key.as_bytes().to_vec(), line.to_vec()));
        }
        self.rows += b.len() as u64;
        if self.pending.len() >= SEND_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands what is encoded to the producer thread (blocking while it is far behind).
    pub fn flush(&mut self) -> Result<()> {
        self.failure()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(batch).is_ok());
        if !sent {
            self.failure()?;
        }
        Ok(())
    }

    /// Sends the rest and waits until the brokers have acknowledged everything.
    pub fn close(&mut self) -> Result<()> {
        self.flush()?;
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.failure()?;
        let missing = self.rows.saturating_sub(self.acked.load(Ordering::Relaxed));
        if missing > 0 {
            return Err(Error::Output {
                path: format!("kafka {}", self.target.topic).into(),
                msg: format!("{missing} predictions were not acknowledged"),
            });
        }
        Ok(())
    }

    /// Hands on what is encoded, then says how many predictions were handed on and how many
    /// the brokers have acknowledged so far (a checkpoint is committed only once the second
    /// reaches the first).
    pub fn delivery(&mut self) -> Result<(u64, Arc<AtomicU64>)> {
        self.flush()?;
        Ok((self.rows, self.acked.clone()))
    }
}
