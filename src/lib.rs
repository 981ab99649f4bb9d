//! seqflow: run trained sequence models (1-D CNN, RNN, LSTM, GRU, dense heads) incrementally
//! over keyed streams on timely dataflow.
//!
//! The crate is layered; each module uses only the ones listed before it:
//!
//! 1. [`vocab`], [`error`]: the shared words (formats, NaN policy, normalization, emit
//!    modes, path and message helpers, the clock, the seeded generator) and the error type;
//!    [`outfiles`]: writing files without destroying any (`.partial` + rename, no links
//!    followed, no output over an input); [`guard`]: third-party decoders' panics on corrupt
//!    files turned into errors;
//! 2. [`kernels`], [`model`]: the GEMM wrapper and vectorized activations; models loaded
//!    from a model file and PyTorch weights, run offline over whole sequences or streamed
//!    step by step with per-key state in an arena;
//! 3. [`record`]: what flows through the dataflow (columnar step and output batches,
//!    rejects, counters) and the stable key hash that routes keys; [`parquet_out`]:
//!    predictions to Parquet with the fewest copies (typed column writers, each prediction
//!    column's codec kept only where it pays);
//! 4. [`input`]: the one input layer: file plans and readers, live line readers, column
//!    mapping, normalization and the NaN policy, routing; [`sink`]: output writers;
//!    [`latency`]: the latency histogram; [`checkpoint`]: checkpoint folders, manifests
//!    and the Arrow IPC state parts; [`kafka`], [`sink_mqtt`], [`sink_kafka`]: broker
//!    clients and outputs; [`metrics`]: the Prometheus exposition and its HTTP server;
//!    [`dashboard`]: the live web page;
//! 5. [`keyed`]: a worker's keyed state: key index, epoch ordering, one emitter per emit
//!    mode;
//! 6. [`views`]: aggregates over the predictions (differential dataflow);
//!    [`dataflow`]: the timely operators;
//! 7. [`train`]: backpropagation through time for the same models, on the same input;
//! 8. [`pipeline`]: the pipeline file and the drivers (files, live) over one executor;
//!    [`replay`]: a load generator.
//!
//! See ARCHITECTURE.md for what flows where and the invariants the tests defend.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod dashboard;
pub mod dataflow;
pub mod error;
pub mod guard;
pub mod input;
pub mod kafka;
pub mod kernels;
pub mod keyed;
pub mod latency;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod outfiles;
pub mod parquet_out;
pub mod pipeline;
pub mod record;
pub mod replay;
pub mod session;
pub mod sink;
pub mod sink_kafka;
pub mod sink_mqtt;
pub mod train;
pub mod views;
pub mod vocab;

pub use error::{Error, Result};
pub use model::{Model, Packed, StateArena, Workspace};
