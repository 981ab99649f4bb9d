//! Connecting the processes of a cluster (`-n P`) ourselves instead of by timely's own
//! setup, which prints to stdout (into a `--output -` CSV), waits forever in silence for a
//! peer that never starts, and panics on a stranger's bytes. Here: a handshake that checks
//! every peer is a seqflow process of this cluster with the same `-w`, a connect timeout,
//! progress on the caller's observer (stderr), and errors that name the peer. The connected
//! sockets are then handed to timely's networking as they are.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::report::{Event, Observer};
use crate::error::{Error, Result};

/// Sent first on every connection: "seqflow1" in ASCII, so a stranger is told apart.
const MAGIC: u64 = 0x7365_7166_6c6f_7731;
/// The connect loop's pause between rounds of dialing and accepting: from `PAUSE_MIN` again
/// after a process connected, doubling to `PAUSE_MAX` while none does. Processes started
/// together connect within milliseconds, and one started later waits at most `PAUSE_MAX`
/// for this one to accept it (a fixed 100 ms pause cost up to that much at every start;
/// 50 wake-ups a second while waiting cost nothing to speak of).
const PAUSE_MIN: Duration = Duration::from_millis(2);
const PAUSE_MAX: Duration = Duration::from_millis(20);

/// How often a waiting process says what it waits for.
const TELL_EVERY: Duration = Duration::from_secs(5);

fn cluster_err(msg: String) -> Error {
    Error::Runtime(msg)
}

fn write_u64s(s: &mut TcpStream, v: &[u64]) -> std::io::Result<()> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_be_bytes()).collect();
    s.write_all(&bytes)
}

fn read_u64s<const N: usize>(s: &mut TcpStream) -> std::io::Result<[u64; N]> {
    let mut out = [0u64; N];
    for x in &mut out {
        let mut b = [0u8; 8];
        s.read_exact(&mut b)?;
        *x = u64::from_be_bytes(b);
    }
    Ok(out)
}

/// Connects process `me` of `addresses.len()` to every other: it dials the processes before
/// it and accepts the ones after it (timely's convention), checks each peer's handshake, and
/// returns the sockets in process order (`None` at `me`). Gives up after `timeout`, or
/// when `stop` is set (Ctrl-C while waiting).
pub fn connect(
    addresses: &[String],
    me: usize,
    workers: usize,
    timeout: Duration,
    observer: &Observer,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Vec<Option<TcpStream>>> {
    let deadline = Instant::now() + timeout;
    let hello = [MAGIC, me as u64, workers as u64];
    let check = |peer: usize, got: [u64; 3], addr: &str| -> Result<()> {
        let [magic, index, w] = got;
        if magic != MAGIC || index as usize != peer {
            return Err(cluster_err(format!(
                "{addr} answered, but not as process {peer} of this seqflow cluster (is another program \
                 listening there, or is the hostfile's order different?)"
            )));
        }
        if w as usize != workers {
            return Err(cluster_err(format!(
                "process {peer} ({addr}) runs -w {w} but this process (process {me}) -w {workers}: every \
                 process needs the same -w"
            )));
        }
        Ok(())
    };
    let listener = TcpListener::bind(&addresses[me]).map_err(|e| {
        cluster_err(format!(
            "cannot listen on {} (process {me}'s address in the hostfile): {e}",
            addresses[me]
        ))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| cluster_err(e.to_string()))?;
    let mut sockets: Vec<Option<TcpStream>> = (0..addresses.len()).map(|_| None).collect();
    let mut last_told = Instant::now();
    let tell = |waiting: &[usize], last_told: &mut Instant| {
        if last_told.elapsed() >= TELL_EVERY {
            *last_told = Instant::now();
            let who: Vec<String> = waiting
                .iter()
                .map(|&p| format!("{p} ({})", addresses[p]))
                .collect();
            let msg = format!(
                "process {me}: waiting for process(es) {} ({} s left of the connect timeout)",
                who.join(", "),
                deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
                    .round()
            );
            observer(&Event::Warning(&msg));
        }
    };
    let (mut pause, mut left) = (PAUSE_MIN, usize::MAX);
    loop {
        // Dial the processes before this one.
        for peer in 0..me {
            if sockets[peer].is_some() {
                continue;
            }
            let addr = &addresses[peer];
            let target = addr.to_socket_addrs().ok().and_then(|mut a| a.next());
            let Some(target) = target else {
                return Err(cluster_err(format!(
                    "process {peer}'s address {addr} does not resolve"
                )));
            };
            if let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                write_u64s(&mut s, &hello)
                    .and_then(|_| read_u64s::<3>(&mut s))
                    .map_err(|e| cluster_err(format!("process {peer} ({addr}) broke the handshake: {e}")))
                    .and_then(|got| check(peer, got, addr))?;
                let _ = s.set_read_timeout(None);
                let _ = s.set_nodelay(true);
                sockets[peer] = Some(s);
            }
        }
        // Accept the processes after it.
        loop {
            match listener.accept() {
                Ok((mut s, from)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let got = read_u64s::<3>(&mut s).map_err(|e| {
                        cluster_err(format!("{from} connected but did not introduce itself: {e}"))
                    })?;
                    // Introduce this process first, so that a peer with another -w learns it too.
                    let _ = write_u64s(&mut s, &hello);
                    let peer = got[1] as usize;
                    if got[0] != MAGIC || peer <= me || peer >= addresses.len() || sockets[peer].is_some() {
                        return Err(cluster_err(format!(
                            "{from} connected to this process (process {me}) but is not a process after it \
                             in this seqflow cluster"
                        )));
                    }
                    check(peer, got, &from.to_string())?;
                    let _ = s.set_read_timeout(None);
                    let _ = s.set_nodelay(true);
                    sockets[peer] = Some(s);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(cluster_err(format!("accepting cluster connections: {e}"))),
            }
        }
        let waiting: Vec<usize> = (0..addresses.len())
            .filter(|&p| p != me && sockets[p].is_none())
            .collect();
        if waiting.is_empty() {
            return Ok(sockets);
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(cluster_err(format!(
                "process {me}: stopped while waiting for the other processes of the cluster"
            )));
        }
        if Instant::now() >= deadline {
            let who: Vec<String> = waiting
                .iter()
                .map(|&p| format!("{p} ({})", addresses[p]))
                .collect();
            return Err(cluster_err(format!(
                "process {me}: process(es) {} did not connect within the connect timeout ({} s); start every \
                 process with the same hostfile, or raise --connect-timeout",
                who.join(", "),
                timeout.as_secs()
            )));
        }
        tell(&waiting, &mut last_told);
        pause = if waiting.len() < left {
            PAUSE_MIN
        } else {
            (pause * 2).min(PAUSE_MAX)
        };
        left = waiting.len();
        std::thread::sleep(pause);
    }
}
