//! Pipelines: the pipeline file, and running one (`seqflow run`).

pub mod config;
pub mod run;
