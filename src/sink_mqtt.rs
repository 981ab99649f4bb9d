//! The MQTT output: one JSON object per prediction (the same object a JSON-lines output
//! writes), published with QoS 1 to a topic made from a template (`{key}` is the
//! prediction's key). A thread keeps the connection going and counts the broker's
//! acknowledgements; closing waits for all of them, so a run that ends well has handed every
//! prediction to the broker. Publishing blocks while the client's queue is full: a slow
//! broker pushes back on the pipeline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use crate::error::{Error, Result};
use crate::record::{KeyRef, OutBatch};
use crate::sink::{OutputSchema, Sink};

/// Where predictions are published.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttTarget {
    /// `host:port` of the broker.
    pub broker: String,
    /// The topic, `{key}` replaced by each prediction's key.
    pub topic: String,
    /// The client's name.
    pub client_id: String,
}

/// A connected MQTT client publishing with QoS 1 to a topic template, counting the broker's
/// acknowledgements (also `seqflow replay --to mqtt://`).
pub struct Publisher {
    target: MqttTarget,
    client: Client,
    published: u64,
    acked: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The MQTT output.
pub struct MqttSink {
    publisher: Publisher,
    /// Encodes batches as JSON objects, exactly as the JSON-lines output writes them.
    encoder: Sink,
    /// Predictions published.
    pub rows: u64,
}

impl MqttSink {
    /// Connects (waiting for the broker's answer: a wrong address fails the run at once).
    pub fn connect(target: &MqttTarget, schema: OutputSchema) -> Result<MqttSink> {
        Ok(MqttSink {
            publisher: Publisher::connect(target)?,
            encoder: Sink::encoder(schema),
            rows: 0,
        })
    }

    /// Publishes every prediction of `b`.
    pub fn write(&mut self, b: &OutBatch) -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let lines = self.encoder.json_lines(b)?;
        for (i, line) in lines.split(|&c| c == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let key = match b.keys.get(i) {
                KeyRef::Int(k) => k.to_string(),
                KeyRef::Str(s) => s.to_string(),
            };
            self.publisher.publish(&key, line)?;
        }
        self.rows += b.len() as u64;
        Ok(())
    }

    /// Waits for the broker's acknowledgements and disconnects.
    pub fn close(&mut self) -> Result<()> {
        self.publisher.close()
    }

    /// Predictions published so far, and the count the broker has acknowledged (a
    /// checkpoint is committed only once the broker has everything before it).
    pub fn delivery(&self) -> (u64, Arc<AtomicU64>) {
        (self.publisher.published, self.publisher.acked.clone())
    }
}

impl Publisher {
    /// Connects (waiting for the broker's answer: a wrong address fails at once).
    pub fn connect(target: &MqttTarget) -> Result<Publisher> {
        let err = |msg: String| Error::Output {
            path: format!("mqtt {}", target.broker).into(),
            msg,
        };
        let (host, port) =
            crate::vocab::host_port(&target.broker).ok_or_else(|| err("`broker` is not host:port".into()))?;
        let mut opts = MqttOptions::new(target.client_id.clone(), host, port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 24, 1 << 24);
        let (client, mut conn) = Client::new(opts, 1024);
        let start = Instant::now();
        loop {
            match conn.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(err(format!("cannot connect: {e}"))),
                Err(_) if start.elapsed() > Duration::from_secs(10) => {
                    return Err(err("no answer within 10 s".into()))
                }
                Err(_) => {}
            }
        }
        let acked = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (counted, stop) = (acked.clone(), done.clone());
        let thread = std::thread::Builder::new()
            .name("seqflow-mqtt-out".into())
            .spawn(move || {
                let mut until: Option<Instant> = None;
                loop {
                    if stop.load(Ordering::Relaxed) {
                        // A little longer, for the disconnect to go out.
                        let u = *until.get_or_insert_with(|| Instant::now() + Duration::from_millis(300));
                        if Instant::now() > u {
                            return;
                        }
                    }
                    match conn.recv_timeout(Duration::from_millis(50)) {
                        Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                        // Dropped: the next poll reconnects and sends again what was not
                        // acknowledged.
                        Ok(Err(_)) => std::thread::sleep(Duration::from_millis(200)),
                        Err(rumqttc::RecvTimeoutError::Disconnected) => return,
                        _ => {}
                    }
                }
            })
            .map_err(|e| err(format!("could not start the publisher thread: {e}")))?;
        Ok(Publisher {
            target: target.clone(),
            client,
            published: 0,
            acked,
            done,
            thread: Some(thread),
        })
    }

    /// Publishes `payload` on the topic of `key` (blocks while the client's queue is full).
    pub fn publish(&mut self, key: &str, payload: &[u8]) -> Result<()> {
        let topic = self.target.topic.replace("{key}", key);
        self.client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload.to_vec())
            .map_err(|e| Error::Output {
                path: format!("mqtt {} {topic}", self.target.broker).into(),
                msg: e.to_string(),
            })?;
        self.published += 1;
        Ok(())
    }

    /// Waits until the broker acknowledged everything published (at most 30 s), then
    /// disconnects.
    pub fn close(&mut self) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        while self.acked.load(Ordering::Relaxed) < self.published && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let missing = self.published.saturating_sub(self.acked.load(Ordering::Relaxed));
        let _ = self.client.disconnect();
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if missing > 0 {
            return Err(Error::Output {
                path: format!("mqtt {}", self.target.broker).into(),
                msg: format!("the broker did not acknowledge {missing} predictions within 30 s"),
            });
        }
        Ok(())
    }
}
