//! The forecaster: the `predictive` policy, its model, the HPA trend, the
//! `rules` policy it is judged against, and `pullahead tune` (with its
//! cross-validation).

pub mod crossval;
pub mod model;
pub mod planner;
pub mod rules;
pub mod trend;
pub mod tune;

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
