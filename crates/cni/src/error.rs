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

/// The failures of a teardown whose steps all run whatever happens to the others (a failed IPAM release must not
/// leave the firewall rules behind): each step is recorded, and the end result is one error naming every step
/// that failed, with the code of the first.
#[derive(Debug, Default)]
pub struct Failures {
    failed: Vec<(String, CniError)>,
}

impl Failures {
    /// No failures yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the outcome of step `name`.
    pub fn step<T>(&mut self, name: impl Into<String>, r: Result<T, CniError>) {
        if let Err(e) = r {
            self.failed.push((name.into(), e));
        }
    }

    /// Whether every step so far succeeded.
    pub fn is_empty(&self) -> bool {
        self.failed.is_empty()
    }

    /// `"<step>: <error>; <step>: <error>"`.
    pub fn summary(&self) -> String {
        self.failed
            .iter()
            .map(|(n, e)| format!("{n}: {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// `Ok` when nothing failed, else one error `"<what>: <summary>"` with the first failure's code.
    pub fn finish(self, what: &str) -> Result<(), CniError> {
        match self.failed.first() {
            None => Ok(()),
            Some((_, first)) => Err(CniError::new(
                first.code,
                format!("{what}: {}", self.summary()),
            )),
        }
    }

    /// `Ok` when nothing failed, a single failure as it is, several as one error naming each (for steps nested
    /// in a step that is named already).
    pub fn into_result(mut self) -> Result<(), CniError> {
        match (self.failed.len(), self.failed.first()) {
            (_, None) => Ok(()),
            (1, _) => Err(self.failed.remove(0).1),
            (_, Some((_, first))) => Err(CniError::new(first.code, self.summary())),
        }
    }

    /// `e` (the failure that made an ADD undo itself) with what its undo could not release added to the details.
    pub fn add_to(self, mut e: CniError) -> CniError {
        if !self.failed.is_empty() {
            let undo = format!("undoing the failed ADD also failed: {}", self.summary());
            e.details = if e.details.is_empty() {
                undo
            } else {
                format!("{}; {undo}", e.details)
            };
        }
        e
    }
}

/// Shorthand result type for plugin code.
pub type CniResultT<T> = std::result::Result<T, CniError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_every_step() {
        let mut f = Failures::new();
        f.step("a", Ok::<(), CniError>(()));
        assert!(f.is_empty());
        f.step("IPAM", Err::<(), _>(CniError::new(11, "busy")));
        f.step("ipMasq", Err::<(), _>(CniError::internal("nft failed")));
        let e = f.finish("DEL").unwrap_err();
        assert_eq!(e.code, 11);
        assert_eq!(e.msg, "DEL: IPAM: busy; ipMasq: nft failed");
        assert!(Failures::new().finish("DEL").is_ok());
        let mut f = Failures::new();
        f.step("x", Err::<(), _>(CniError::env("bad")));
        assert_eq!(f.into_result().unwrap_err(), CniError::env("bad"));

        let mut f = Failures::new();
        f.step("IPAM", Err::<(), _>(CniError::io("gone")));
        let e = f.add_to(CniError::internal("veth failed").with_details("EEXIST"));
        assert_eq!(e.code, 100);
        assert_eq!(
            e.details,
            "EEXIST; undoing the failed ADD also failed: IPAM: gone"
        );
    }
}
