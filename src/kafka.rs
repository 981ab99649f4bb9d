//! Kafka plumbing shared by the Kafka source, the Kafka output and `seqflow replay --to
//! kafka://`: a connection to a cluster (an [`rskafka`] client on a runtime of its own),
//! topic metadata, and the producer side (records keyed by the sequence key, spread over
//! partitions by Kafka's own default partitioner, so that a key's steps stay in one
//! partition, in order, whoever produced them).
//!
//! Why rskafka: it is pure Rust (no librdkafka to build or match), and it has no consumer
//! groups: the offsets a run has consumed live in seqflow's checkpoint, next to the state
//! they produced, as Flink keeps them. Each [`Kafka`] owns a single-threaded tokio runtime,
//! driven only by the thread that calls it, so seqflow's reader and sink threads stay plain
//! blocking threads.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use rskafka::BackoffConfig;

/// How long connecting to the cluster may take before the run fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A request (with rskafka's retries inside it) that takes longer has failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(6);

/// Retries inside one request stop after this long, so that an outage is reported (and
/// retried by the caller) instead of waiting silently.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// A connection to a Kafka cluster.
pub struct Kafka {
    rt: tokio::runtime::Runtime,
    client: Arc<Client>,
    /// The bootstrap brokers, for messages.
    pub brokers: String,
}

impl Kafka {
    /// Connects to the cluster through `brokers` (`host:port`), waiting at most
    /// [`CONNECT_TIMEOUT`]. The error is a sentence naming the brokers.
    pub fn connect(brokers: &[String], client_id: &str) -> Result<Kafka, String> {
        let names = brokers.join(",");
        if brokers.is_empty() {
            return Err("no broker given (brokers = [\"host:port\"])".into());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the Kafka client's runtime: {e}"))?;
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
            deadline: Some(REQUEST_DEADLINE),
        };
        let builder = ClientBuilder::new(brokers.to_vec())
            .client_id(client_id.to_string())
            .max_message_size(64 << 20)
            .backoff_config(backoff);
        let client = rt
            .block_on(async { tokio::time::timeout(CONNECT_TIMEOUT, builder.build()).await })
            .map_err(|_| {
                format!(
                    "no Kafka broker answered at {names} within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("cannot connect to Kafka at {names}: {}", short(&e)))?;
        Ok(Kafka {
            rt,
            client: Arc::new(client),
            brokers: names,
        })
    }

    /// Runs a future on this connection's runtime, on the calling thread.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Runs one request, giving up after [`REQUEST_TIMEOUT`] (rskafka can wait without end
    /// on a broker that vanished); the error is a short sentence.
    pub fn request<T>(
        &self,
        f: impl Future<Output = rskafka::client::error::Result<T>>,
    ) -> Result<T, String> {
        match self.block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, f).await }) {
            Ok(r) => r.map_err(|e| short(&e)),
            Err(_) => Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())),
        }
    }

    /// The partitions of `topic`, in order; an error when the topic does not exist.
    pub fn partitions(&self, topic: &str) -> Result<Vec<i32>, String> {
        self.find_topic(topic)?
            .ok_or_else(|| format!("topic `{topic}` does not exist on {}", self.brokers))
    }

    /// The partitions of `topic`, or `None` when the cluster has no such topic.
    fn find_topic(&self, topic: &str) -> Result<Option<Vec<i32>>, String> {
        let topics = self
            .request(self.client.list_topics())
            .map_err(|e| format!("cannot list the topics of {}: {e}", self.brokers))?;
        Ok(topics
            .into_iter()
            .find(|t| t.name == topic && !t.partitions.is_empty())
            .map(|t| t.partitions.into_iter().collect()))
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), String> {
        let c = self
            .client
            .controller_client()
            .map_err(|e| format!("cannot reach the controller of {}: {}", self.brokers, short(&e)))?;
        self.request(c.create_topic(topic, partitions, 1, 5_000))
            .map_err(|e| format!("cannot create topic `{topic}` on {}: {e}", self.brokers))
    }

    /// A client for one partition (the connection to its leader).
    pub fn partition(&self, topic: &str, partition: i32) -> Result<PartitionClient, String> {
        self.request(
            self.client
                .partition_client(topic, partition, UnknownTopicHandling::Retry),
        )
        .map_err(|e| {
            format!(
                "cannot reach partition {partition} of `{topic}` on {}: {e}",
                self.brokers
            )
        })
    }
}

/// The first line of an rskafka error (its `Debug` parts repeat whole requests).
pub fn short(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    let s = s.split(", request:").next().unwrap_or(&s);
    s.chars().take(300).collect()
}

/// Kafka's default partitioner (the Java client's `murmur2(key) & 0x7fffffff % n`), so that
/// seqflow puts a key in the partition every other Kafka producer would.
pub fn partition_for(key: &[u8], partitions: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)
}

/// MurmurHash2 with Kafka's seed, exactly as `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= (tail[2] as u32) << 16;
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// Produces keyed records to one topic: buffered per partition, sent by [`flush`](Producer::flush),
/// which returns once the leaders have acknowledged them (acks = all replicas in sync, as
/// rskafka asks).
pub struct Producer {
    kafka: Kafka,
    topic: String,
    clients: Vec<PartitionClient>,
    pending: Vec<Vec<Record>>,
    /// Records per produce request at most (1: one request per record).
    pub batch: usize,
    /// Records acknowledged so far.
    pub acked: u64,
}

impl Producer {
    /// Connects and looks the topic up; a missing topic is created with `create`
    /// partitions when that is given, else an error.
    pub fn connect(
        brokers: &[String],
        topic: &str,
        client_id: &str,
        create: Option<i32>,
    ) -> Result<Producer, String> {
        let kafka = Kafka::connect(brokers, client_id)?;
        if topic.is_empty() {
            return Err("no topic given".into());
        }
        let parts = match (kafka.find_topic(topic)?, create) {
            (Some(p), _) => p,
            (None, Some(n)) => {
                kafka.create_topic(topic, n)?;
                // The new topic's metadata may take a moment to reach every broker.
                let until = std::time::Instant::now() + CONNECT_TIMEOUT;
                loop {
                    match kafka.partitions(topic) {
                        Ok(p) => break p,
                        Err(e) if std::time::Instant::now() > until => return Err(e),
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
            (None, None) => return Err(format!("topic `{topic}` does not exist on {}", kafka.brokers)),
        };
        let clients = parts
            .iter()
            .map(|&p| kafka.partition(topic, p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Producer {
            pending: clients.iter().map(|_| Vec::new()).collect(),
            kafka,
            topic: topic.to_string(),
            clients,
            batch: 4096,
            acked: 0,
        })
    }

    /// Partitions of the topic.
    pub fn partitions(&self) -> usize {
        self.clients.len()
    }

    /// Buffers a record with `key` for its partition.
    pub fn push(&mut self, key: &[u8], value: Vec<u8>) {
        let p = partition_for(key, self.clients.len());
        self.pending[p].push(Record {
            key: Some(key.to_vec()),
            value: Some(value),
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        });
    }

    /// Records buffered and not yet sent.
    pub fn buffered(&self) -> usize {
        self.pending.iter().map(Vec::len).sum()
    }

    /// Sends everything buffered (every partition at once, in order within each) and waits
    /// for the acknowledgements. A failure after the retries is an error naming the topic;
    /// records not acknowledged stay buffered.
    pub fn flush(&mut self) -> Result<(), String> {
        let batch = self.batch.max(1);
        let (clients, pending) = (&self.clients, &mut self.pending);
        // Each partition sends its records in order, one request at a time, and says how
        // many were acknowledged before any failure: those are done, the rest stay.
        let sent: Vec<(usize, Option<String>)> = self.kafka.block_on(async {
            let jobs = clients.iter().zip(pending.iter()).map(|(c, recs)| async move {
                let mut done = 0usize;
                while done < recs.len() {
                    let end = (done + batch).min(recs.len());
                    let req = c.produce(recs[done..end].to_vec(), Compression::NoCompression);
                    match tokio::time::timeout(REQUEST_TIMEOUT, req).await {
                        Ok(Ok(_)) => done = end,
                        Ok(Err(e)) => return (done, Some(short(&e))),
                        Err(_) => {
                            return (
                                done,
                                Some(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())),
                            )
                        }
                    }
                }
                (done, None)
            });
            futures::future::join_all(jobs).await
        });
        let mut failure = None;
        for (recs, (done, err)) in pending.iter_mut().zip(sent) {
            recs.drain(..done);
            self.acked += done as u64;
            if failure.is_none() {
                failure = err;
            }
        }
        match failure {
            Some(why) => Err(format!(
                "cannot produce to `{}` on {}: {why}",
                self.topic, self.kafka.brokers
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // From Apache Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 5] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ];
        for (k, want) in cases {
            assert_eq!(murmur2(k) as i32, want, "{}", String::from_utf8_lossy(k));
        }
    }
}
