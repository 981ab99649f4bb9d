//! The MQTT source: one reader thread subscribes to the pipeline's topic filters with QoS 1
//! and a persistent session (clean session off, the pipeline's `client_id`), so messages
//! published while seqflow is down wait in the broker. Each message holds one or more lines,
//! parsed exactly as a TCP connection's (same framing, rejects and limits). A message is
//! acknowledged only through the [`Ack`] its last batch carries: the live driver runs it at
//! once, or, with checkpoints, once a checkpoint covering the message is committed; an
//! unacknowledged message is delivered again after a restart, where the (key, time) rule
//! makes the steps already applied duplicates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Client, ConnectionError, Event, MqttOptions, Packet, QoS};

use super::Routed;
use crate::error::{Error, Result};

/// A message's acknowledgement, handed to the reader's connection for the broker. Never
/// blocks: the connection is polled by the reader thread, which may itself be waiting for
/// the driver (a blocking acknowledgement there would deadlock).
pub struct Ack(Box<dyn FnMut() -> bool + Send>);

impl Ack {
    /// Acknowledges; false when the client's queue is full (try again later).
    pub fn run(&mut self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

/// Where and what to subscribe to.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttSource {
    /// `host:port` of the broker.
    pub broker: String,
    /// Topic filters (`+` and `#` wildcards).
    pub topics: Vec<String>,
    /// The persistent session's name.
    pub client_id: String,
}

/// A connected, subscribed client: its connection, the messages that came with the
/// subscription, and the topic filters (subscribed again after a lost session).
pub struct Session {
    client: Client,
    conn: rumqttc::Connection,
    early: Vec<rumqttc::Publish>,
    topics: Vec<String>,
}

/// How long the first connection may take before the run fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects (waiting for the broker's answer, so that a wrong address fails the run at
/// once) and returns the client and its connection.
pub fn connect(src: &MqttSource) -> Result<Session> {
    let err = |msg: String| Error::Io {
        path: format!("mqtt {}", src.broker).into(),
        source: std::io::Error::other(msg),
    };
    let (host, port) =
        crate::vocab::host_port(&src.broker).ok_or_else(|| err("`broker` is not host:port".into()))?;
    let mut opts = MqttOptions::new(src.client_id.clone(), host, port);
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(1 << 24, 1 << 24);
    // Room for a checkpoint interval's acknowledgements at high rates.
    let (client, mut conn) = Client::new(opts, 1 << 16);
    let start = Instant::now();
    loop {
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(err(format!("cannot connect: {e}"))),
            Err(_) if start.elapsed() > CONNECT_TIMEOUT => {
                return Err(err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))
            }
            Err(_) => {}
        }
    }
    for t in &src.topics {
        client
            .subscribe(t.clone(), QoS::AtLeastOnce)
            .map_err(|e| err(format!("cannot subscribe to {t}: {e}")))?;
    }
    // Subscribed once the broker says so: only then is nothing published after this missed.
    // Messages of the persistent session that arrive meanwhile are kept for the reader.
    let mut early = Vec::new();
    let mut acked = 0;
    while acked < src.topics.len() {
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => acked += 1,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => early.push(p),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(err(format!("cannot subscribe: {e}"))),
            Err(_) if start.elapsed() > CONNECT_TIMEOUT => {
                return Err(err(format!(
                    "no subscription within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
            Err(_) => {}
        }
    }
    Ok(Session {
        client,
        conn,
        early,
        topics: src.topics.clone(),
    })
}

/// The reader: hands each message's lines to `parse` (which sends their batches on `tx`,
/// the last one carrying the message's [`Ack`]) until `stop`; then keeps the connection
/// going (so that acknowledgements still reach the broker) until `done`.
pub fn read(
    session: Session,
    tx: super::live::Outbox,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    mut parse: impl FnMut(&[u8], &str) -> Vec<Routed>,
) {
    let Session {
        client,
        mut conn,
        early,
        topics,
    } = session;
    let mut failing_since: Option<Instant> = None;
    let mut early = early.into_iter();
    while !done.load(Ordering::Relaxed) {
        let next = match early.next() {
            Some(p) => Ok(Ok(Event::Incoming(Packet::Publish(p)))),
            None => conn.recv_timeout(Duration::from_millis(50)),
        };
        match next {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                failing_since = None;
                // After a stop, messages are left unacknowledged: the broker keeps them.
                if stop.load(Ordering::Relaxed) {
                    continue;
                }
                let mut batches = parse(&p.payload, &p.topic);
                let c = client.clone();
                let ack = Ack(Box::new(move || match c.try_ack(&p) {
                    Ok(()) => true,
                    Err(rumqttc::ClientError::TryRequest(_)) => false,
                    // The connection is gone: the broker will deliver the message again.
                    Err(_) => true,
                }));
                match batches.last_mut() {
                    Some(last) => last.acks.push(ack),
                    None => {
                        let mut r = Routed::new(1, 0);
                        r.acks.push(ack);
                        batches.push(r);
                    }
                }
                for b in batches {
                    if tx.send(b).is_err() {
                        return;
                    }
                }
            }
            // Back after a drop: a broker that lost the session (restarted without
            // persistence) has lost the subscriptions too.
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                failing_since = None;
                if !ack.session_present {
                    for t in &topics {
                        let _ = client.subscribe(t.clone(), QoS::AtLeastOnce);
                    }
                }
            }
            Ok(Ok(_)) => failing_since = None,
            // The broker went away: the next poll reconnects (the session keeps what it holds).
            Ok(Err(ConnectionError::RequestsDone)) => return,
            Ok(Err(_)) => {
                failing_since.get_or_insert_with(Instant::now);
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(_) => {}
        }
    }
    let _ = client.disconnect();
    // Let the disconnect (and any last acknowledgements) go out.
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        if conn.recv_timeout(Duration::from_millis(50)).is_err() {
            break;
        }
    }
}
