//! Sources: where steps come from. Files (Parquet, CSV, JSON lines) are planned into units
//! shared among all workers; every source turns its input into per-worker `StepBatch`es.

pub mod convert;
pub mod files;
pub mod lines;
pub mod live;
