//! Runtime errors.

use std::time::Duration;

use mvm_core::Status;

/// A life-cycle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Registry problem (name taken, not found, corrupt record...).
    #[error(transparent)]
    Registry(#[from] mvm_core::registry::RegistryError),
    /// Image problem.
    #[error(transparent)]
    Image(#[from] mvm_image::ImageError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] mvm_core::backend::BackendError),
    /// Data drives, volumes, write-back.
    #[error(transparent)]
    Data(Box<crate::data::DataError>),
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] mvm_core::config::ConfigError),
    /// The machine is not in a state that allows the operation.
    #[error("machine {name:?} is {status}{}", hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default())]
    WrongState {
        /// Machine.
        name: String,
        /// Its observed status.
        status: Status,
        /// What to do about it.
        hint: Option<String>,
    },
    /// Talking to the guest agent failed.
    #[error("guest agent of machine {name:?}: {message}")]
    Agent {
        /// Machine.
        name: String,
        /// What failed.
        message: String,
    },
    /// The supervisor failed or went away.
    #[error("machine {name:?} failed to start: {message}")]
    StartFailed {
        /// Machine.
        name: String,
        /// Why (includes log tails when known).
        message: String,
    },
    /// Something did not happen in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// A prerequisite is missing.
    #[error("{what} is missing; fix: {fix}")]
    Missing {
        /// The missing thing.
        what: String,
        /// The command that fixes it.
        fix: String,
    },
    /// Process handling failed.
    #[error(transparent)]
    Process(#[from] mvm_core::process::ProcessError),
    /// IO error (the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Invalid user input.
    #[error("{0}")]
    Invalid(String),
}

impl From<crate::data::DataError> for RuntimeError {
    fn from(e: crate::data::DataError) -> Self {
        Self::Data(Box::new(e))
    }
}
