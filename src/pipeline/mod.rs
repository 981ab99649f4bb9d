//! Pipelines: the pipeline file, and running one (`seqflow run`) over files or a live source.

pub mod collect;
pub mod config;
pub mod live;
pub mod run;
