//! The forecaster: the `predictive` policy, its model (with the built-in
//! [`model::DEFAULT_MODEL`]) and the HPA trend. `pullahead tune` fits the
//! model by replaying traces; it lives in [`crate::tune`], so that the
//! forecaster does not depend on the simulator.

pub mod model;
pub mod planner;
pub mod trend;

/// Errors from the forecaster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file is unusable.
    #[error("model {path}: {msg}")]
    Model {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
