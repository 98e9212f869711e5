//! The CNI error object and the spec's well-known error codes.

use serde::Serialize;
use std::fmt;

/// Incompatible CNI version.
pub const ERR_INCOMPATIBLE_VERSION: u32 = 1;
/// Unsupported field in the network configuration.
pub const ERR_UNSUPPORTED_FIELD: u32 = 2;
/// Container unknown or does not exist.
pub const ERR_UNKNOWN_CONTAINER: u32 = 3;
/// Invalid necessary environment variables.
pub const ERR_INVALID_ENV: u32 = 4;
/// I/O failure.
pub const ERR_IO: u32 = 5;
/// Failed to decode content.
pub const ERR_DECODE: u32 = 6;
/// Invalid network config.
pub const ERR_INVALID_CONFIG: u32 = 7;
/// The network namespace is invalid (Go library code, kept for compatibility).
pub const ERR_INVALID_NETNS: u32 = 8;
/// Try again later: a transient condition.
pub const ERR_TRY_AGAIN_LATER: u32 = 11;
/// STATUS: the plugin is not available.
pub const ERR_NOT_AVAILABLE: u32 = 50;
/// STATUS: not available, and existing containers may have limited connectivity.
pub const ERR_LIMITED_CONNECTIVITY: u32 = 51;
/// Errors a plugin hit that have no well-known code (100+ is for plugins).
pub const ERR_INTERNAL: u32 = 100;

/// A CNI error, printed as the spec's error JSON on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct CniError {
    /// The error code.
    pub code: u32,
    /// A short message naming the problem.
    pub msg: String,
    /// Longer details, omitted when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "{}: {}", self.msg, self.details)
        }
    }
}

impl CniError {
    /// An error with a code and a message.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details to the error.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Code 7: invalid network config.
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(ERR_INVALID_CONFIG, msg)
    }

    /// Code 6: failed to decode.
    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(ERR_DECODE, msg)
    }

    /// Code 5: I/O failure.
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(ERR_IO, msg)
    }

    /// Code 4: invalid environment.
    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(ERR_INVALID_ENV, msg)
    }

    /// Code 100: a plugin-specific failure (kernel, filesystem state).
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(ERR_INTERNAL, msg)
    }

    /// Renders the error JSON for the given spec version.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = serde_json::Value::String(self.details.clone());
        }
        v.to_string()
    }
}

impl From<kernel::Error> for CniError {
    fn from(e: kernel::Error) -> Self {
        CniError::internal(e.to_string())
    }
}

/// Shorthand result type for plugin code.
pub type CniResultT<T> = std::result::Result<T, CniError>;
