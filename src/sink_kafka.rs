//! The Kafka output: one JSON object per prediction (the same object a JSON-lines output
//! writes), produced to one topic with the prediction's key as the record key, so that a
//! key's predictions land in one partition, in order (Kafka's default partitioner, as any
//! other producer would place them). Records are buffered and sent every epoch (and when
//! many are waiting); a send returns once the brokers have acknowledged it, so a checkpoint
//! taken after it never covers a prediction the brokers do not hold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// Records buffered before they are sent without waiting for the epoch's end.
const SEND_AT: usize = 16_384;
/// How long a send may keep failing (the brokers down) before the run fails.
const GIVE_UP: Duration = Duration::from_secs(30);

/// The Kafka output.
pub struct KafkaSink {
    target: KafkaTarget,
    producer: Producer,
    /// Encodes batches as JSON objects, exactly as the JSON-lines output writes them.
    encoder: Sink,
    key: String,
    /// Predictions handed to the producer.
    pub rows: u64,
    acked: Arc<AtomicU64>,
}

impl KafkaSink {
    /// Connects and looks the topic up (a missing topic or an unreachable cluster fails
    /// the run at once).
    pub fn connect(target: &KafkaTarget, schema: OutputSchema) -> Result<KafkaSink> {
        let producer =
            Producer::connect(&target.brokers, &target.topic, &target.client_id, None).map_err(|msg| {
                Error::Output {
                    path: format!("kafka {}", target.topic).into(),
                    msg,
                }
            })?;
        Ok(KafkaSink {
            target: target.clone(),
            producer,
            encoder: Sink::encoder(schema),
            key: String::new(),
            rows: 0,
            acked: Arc::default(),
        })
    }

    /// Buffers every prediction of `b` (sending when many are waiting).
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
            self.producer.push(self.key.as_bytes(), line.to_vec());
        }
        self.rows += b.len() as u64;
        if self.producer.buffered() >= SEND_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends what is buffered and waits for the acknowledgements; a cluster that stays
    /// unreachable for 30 s fails the run (what was not acknowledged is not lost: a
    /// resumed run produces it again from its checkpoint).
    pub fn flush(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            match self.producer.flush() {
                Ok(()) => break,
                Err(msg) if start.elapsed() > GIVE_UP => {
                    return Err(Error::Output {
                        path: format!("kafka {}", self.target.topic).into(),
                        msg: format!("{msg} (retried for {} s)", GIVE_UP.as_secs()),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        self.acked.store(self.producer.acked, Ordering::Relaxed);
        Ok(())
    }

    /// Sends the rest.
    pub fn close(&mut self) -> Result<()> {
        self.flush()
    }

    /// Sends what is buffered, then says how many predictions were produced and how many
    /// the brokers acknowledged (the same, once this returns).
    pub fn delivery(&mut self) -> Result<(u64, Arc<AtomicU64>)> {
        self.flush()?;
        Ok((self.rows, self.acked.clone()))
    }
}
