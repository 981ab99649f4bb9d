//! What a run tells its caller: [`Event`]s as they happen (the binary draws the progress bar
//! and prints from them; the library never prints) and the final [`RunReport`].

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::latency::{fmt_us, Histogram};
use crate::record::Stats;
use crate::vocab::{group_digits, human_bytes, LineFormat};

/// Something that happened during a run.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A file run starts; this process will read `rows` rows (when the files say).
    Started {
        /// Rows of the units this process reads, if known without reading.
        rows: Option<u64>,
    },
    /// This many more rows were read.
    Read(u64),
    /// A live source is ready: listening on a TCP address, or (`None`) reading stdin.
    Listening {
        /// The bound address (tcp).
        addr: Option<SocketAddr>,
        /// How lines are framed.
        lines: LineFormat,
    },
    /// A broker source is connected and subscribed.
    Subscribed {
        /// `mqtt HOST:PORT topic,...`.
        source: &'a str,
        /// How lines are framed.
        lines: LineFormat,
    },
    /// An HTTP endpoint of the run is up (`metrics`, `dashboard`).
    Serving {
        /// What is served.
        what: &'static str,
        /// The bound address.
        addr: SocketAddr,
        /// Its path (`/metrics`, `/`).
        path: &'static str,
    },
    /// Something worth telling that does not stop the run.
    Warning(&'a str),
    /// Every row was read and processed; the outputs are being closed.
    Finished,
}

/// Receives a run's events, on any worker thread.
pub type Observer = Arc<dyn Fn(&Event<'_>) + Send + Sync>;

/// An observer that ignores everything.
pub fn quiet() -> Observer {
    Arc::new(|_: &Event<'_>| {})
}

/// What a finished run reports (process 0 only).
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Counters summed over every worker.
    pub stats: Stats,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Where the predictions went (`-` for stdout).
    pub output: PathBuf,
    /// The rejects file and how many rejects it holds.
    pub rejects: Option<(PathBuf, u64)>,
    /// Workers of all processes.
    pub workers: usize,
    /// `3 files`, `12 connections`, `stdin`.
    pub source: String,
    /// Live runs: arrival-to-emission latency of each prediction.
    pub latency: Option<Histogram>,
    /// Checkpoints this run committed.
    pub checkpoints: u64,
    /// A resumed run: the checkpoint it continued from, and the rows read before it (in
    /// `stats.rows_read`, but not read by this run).
    pub resumed: Option<(PathBuf, u64)>,
    /// Kafka sources: records produced but not yet read at the end (over all partitions,
    /// against the high watermarks last fetched).
    pub lag: Option<i64>,
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let before = self.resumed.as_ref().map_or(0, |r| r.1);
        write!(
            f,
            "{} rows from {} -> {} predictions for {} keys in {:.2} s ({} rows/s, {} worker{}); \
             late {}, duplicate {}, non-finite {}, malformed {}; key state {}; output {}",
            group_digits(s.rows_read as usize),
            self.source,
            group_digits(s.outputs as usize),
            group_digits(s.keys as usize),
            secs,
            group_digits((s.rows_read.saturating_sub(before) as f64 / secs) as usize),
            self.workers,
            if self.workers == 1 { "" } else { "s" },
            s.late,
            s.duplicate,
            s.non_finite,
            s.malformed,
            human_bytes(s.state_bytes),
            self.output.display(),
        )?;
        if let Some((p, n)) = &self.rejects {
            write!(f, "; {n} rejects in {}", p.display())?;
        }
        if self.checkpoints > 0 {
            write!(
                f,
                "; {} checkpoint{}",
                self.checkpoints,
                if self.checkpoints == 1 { "" } else { "s" }
            )?;
        }
        if let Some((dir, rows)) = &self.resumed {
            write!(
                f,
                "; resumed from {} ({} rows were in it)",
                dir.display(),
                group_digits(*rows as usize)
            )?;
        }
        if let Some(lag) = self.lag {
            write!(f, "; consumer lag {} records", group_digits(lag as usize))?;
        }
        if s.refused_connections > 0 {
            write!(
                f,
                "; {} connections refused",
                group_digits(s.refused_connections as usize)
            )?;
        }
        if s.key_limit > 0 {
            write!(
                f,
                "; {} steps of new keys rejected at max_keys",
                group_digits(s.key_limit as usize)
            )?;
        }
        if s.keys_forgotten > 0 {
            write!(
                f,
                "; {} keys forgotten after state_ttl_ms without steps",
                group_digits(s.keys_forgotten as usize)
            )?;
        }
        if s.dropped_lines > 0 {
            write!(
                f,
                "; {} lines read but dropped when the stop's drain passed drain_timeout_ms",
                group_digits(s.dropped_lines as usize)
            )?;
        }
        if let Some(h) = &self.latency {
            write!(
                f,
                "; latency arrival -> emission p50 {}, p99 {}, max {} over {} predictions",
                fmt_us(h.quantile(0.5)),
                fmt_us(h.quantile(0.99)),
                fmt_us(h.max()),
                group_digits(h.count() as usize)
            )?;
        }
        Ok(())
    }
}

/// `1 file`, `3 files`.
pub(crate) fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}
