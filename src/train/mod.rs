//! Training: backpropagation through time over the offline form of a model.
//!
//! [`net::Net`] is the trainable twin of [`crate::model::Model`], built from the same model
//! file and weights, in f64; each layer has a forward pass that keeps a tape and a backward
//! pass. A model trained here is saved with PyTorch's tensor names and then streamed by the
//! ordinary inference path.

pub mod config;
pub mod data;
pub mod dense;
pub mod linalg;
pub mod loss;
pub mod net;
pub mod optim;
pub mod params;
pub mod plot;
pub mod recurrent;
pub mod seq;
pub mod trace;
pub mod trainer;
pub mod window;
