//! The input layer: where steps come from and how raw values become model inputs. Files
//! (Parquet, CSV, JSON lines) are planned into units shared among all workers; live streams
//! (TCP, stdin) are read line by line; training reads files through the same plan. Every
//! path maps columns with [`Columns`], prepares features with [`Prep`] and routes each step
//! to the worker that owns its key with [`Routed`], so no two of them can drift apart.

pub mod arrow;
pub mod columns;
pub mod files;
pub mod kafka;
pub mod lines;
pub mod live;
pub mod mqtt;
pub mod prep;

pub use columns::{ColumnMap, Columns};
pub use prep::{fill_forward, Prep};

use crate::record::{KeyColumn, KeyRef, PartitionOffset, Reject, RejectReason, StepBatch};

/// Steps split by destination worker, and the rows rejected on the way.
#[derive(Debug, Default)]
pub struct Routed {
    /// One batch per worker; empty until the first step (its key decides the key kind).
    pub batches: Vec<StepBatch>,
    /// Rows that could not become steps (malformed, non-finite).
    pub rejects: Vec<Reject>,
    /// Rows read, accepted or not.
    pub rows: u64,
    /// Broker sources: acknowledgements of the messages these rows came from, to run once
    /// the rows are safe (forwarded, or in a committed checkpoint).
    pub acks: Vec<mqtt::Ack>,
    /// Kafka sources: partitions read up to here once these rows are fed.
    pub offsets: Vec<PartitionOffset>,
    peers: usize,
    source: u32,
}

impl Routed {
    /// An empty routing of rows from `source` to `peers` workers.
    pub fn new(peers: usize, source: u32) -> Routed {
        Routed {
            peers,
            source,
            ..Routed::default()
        }
    }

    /// Adds a step for the worker that owns `key` (see [`KeyRef::route`]). `arrival` is the
    /// live arrival instant (for latency), `None` for files. A batch holds one key kind; the
    /// caller keeps kinds apart.
    #[inline]
    pub fn push(&mut self, key: KeyRef<'_>, time: i64, row: u64, features: &[f32], arrival: Option<u64>) {
        if self.batches.is_empty() {
            let proto = match key {
                KeyRef::Int(_) => KeyColumn::Int(Vec::new()),
                KeyRef::Str(_) => KeyColumn::empty_str(),
            };
            self.batches = (0..self.peers)
                .map(|_| StepBatch::reuse(self.source, &proto))
                .collect();
        }
        let b = &mut self.batches[key.route(self.peers)];
        b.rows.push(row);
        b.keys.push(key);
        b.times.push(time);
        b.features.extend_from_slice(features);
        if let Some(a) = arrival {
            b.arrivals.push(a);
        }
    }

    /// Records a row that did not become a step.
    pub fn reject(
        &mut self,
        reason: RejectReason,
        row: u64,
        key: Option<KeyRef<'_>>,
        time: Option<i64>,
        detail: String,
    ) {
        self.rejects.push(Reject {
            reason,
            source: self.source,
            row,
            key: key.map(KeyRef::to_owned),
            time,
            last_time: None,
            detail,
        });
    }

    /// Whether nothing was routed or rejected.
    pub fn is_empty(&self) -> bool {
        self.batches.iter().all(StepBatch::is_empty) && self.rejects.is_empty()
    }
}
