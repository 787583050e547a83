//! The crate's error type: one clear line for the user.

use crate::auth::Forbidden;
use crate::flow::EditError;
use crate::identity::IdentityError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error("forbidden: {0}")]
    Forbidden(#[from] Forbidden),
    #[error("{0}")]
    Invalid(String),
    /// An error the running node reported.
    #[error("{0}")]
    Remote(String),
    #[error("the stored document of flow {flow} cannot be loaded: {reason}")]
    Corrupt { flow: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
