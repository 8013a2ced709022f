//! The forecaster: the `predictive` policy, its model (with the built-in
//! [`model::DEFAULT_MODEL`]), the HPA trend, the CapacityBuffer book, and
//! the `rules` policy it is judged against. `pullahead tune` fits the model
//! by replaying traces, and `pullahead tune --cross-validate` judges it; they
//! live in [`crate::tune`] and [`crate::crossval`], so that the forecaster
//! does not depend on the simulator.

pub mod buffer;
pub mod model;
pub mod planner;
pub mod rules;
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
