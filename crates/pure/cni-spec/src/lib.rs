//! Pure: the CNI specification (1.1.0) as types. Bytes and environment in, validated
//! requests out; results out in whichever spec version the runtime asked for.
//!
//! No I/O happens here: the binary reads stdin and the environment and hands them over.
//! Every failure is a [`CniError`] carrying one of the spec's well-known codes, so the
//! edge only has to print it.

pub mod config;
pub mod env;
pub mod error;
pub mod naming;
pub mod result;
pub mod version;

pub use config::{Attachment, NetConf, Request, RuntimeConfig};
pub use env::{CniArgs, Command, Environment};
pub use error::{CniError, ErrorCode};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::CniVersion;

/// `Result` with the spec's error as the default error type.
pub type Result<T, E = CniError> = std::result::Result<T, E>;
