//! Pipelines: the pipeline file, and running one (`seqflow run`). Two drivers, files and
//! live, are peers over one executor (`exec.rs`); [`run`] picks one by the source's kind.

mod cluster;
mod collect;
mod commit;
pub mod config;
mod durable;
mod exec;
mod files;
mod live;
pub mod report;

use std::path::Path;
use std::sync::Arc;

pub use config::{Overrides, PipelineConfig};
pub use exec::{RunOptions, MAX_WORKERS};
pub use report::{Event, Observer, RunReport};

use crate::error::Result;
use crate::model::Model;
use config::SourceKind;

/// Runs a pipeline file: loads and checks it against its model, then runs it over its files
/// or its live stream. Returns the report on process 0, `None` on the others.
pub fn run(pipeline: &Path, opts: &RunOptions) -> Result<Option<RunReport>> {
    run_config(PipelineConfig::load(pipeline, &opts.overrides)?, opts)
}

/// Runs a parsed pipeline (`PipelineConfig::parse`: the Python binding's `run` of a dict).
pub fn run_config(mut cfg: PipelineConfig, opts: &RunOptions) -> Result<Option<RunReport>> {
    let model = Arc::new(Model::load(&cfg.model_path)?);
    cfg.check_model(&model)?;
    match cfg.source.kind.clone() {
        SourceKind::Files(source) => files::run(cfg, source, model, opts),
        SourceKind::Live(source) => live::run(cfg, source, model, opts),
    }
}
