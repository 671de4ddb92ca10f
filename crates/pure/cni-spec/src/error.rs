//! Pure: the spec's error object and its well-known codes.

use crate::version::CniVersion;
use std::fmt;

/// The spec's well-known error codes (0–99 are reserved by the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot take ADDs now.
    NotAvailable = 50,
    /// STATUS: the plugin cannot take ADDs, and existing containers may be disrupted.
    NotAvailableDisrupting = 51,
    /// podnet's own (100+): CHECK found the attachment differs from its prevResult.
    CheckFailed = 100,
}

impl ErrorCode {
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

/// A CNI error: printed on stdout as `{"cniVersion","code","msg","details"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: Option<String>,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::InvalidConfig, msg)
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::InvalidEnvironment, msg)
    }

    pub fn io(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::Io, msg)
    }

    /// The JSON the spec wants on stdout, in the version the request used.
    pub fn render(&self, version: CniVersion) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": version.as_str(),
            "code": self.code.as_u32(),
            "msg": self.msg,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone().into();
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code.as_u32(), self.msg)?;
        if let Some(d) = &self.details {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}
