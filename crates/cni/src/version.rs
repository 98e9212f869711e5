//! Spec versions: parsing, ordering and the plugin-side negotiation rules.

use crate::error::{CniError, ERR_INCOMPATIBLE_VERSION};

/// Every spec version the plugins in this crate speak.
pub const SUPPORTED: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The versions of the plugins that only make sense in a chain (`tuning`, `bandwidth`): from 0.3.0, the first
/// version with `prevResult`.
pub const CHAINED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest spec version.
pub const CURRENT: &str = "1.1.0";

/// Parses "a.b.c" into a comparable triple.
pub fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.');
    let a = it.next()?.parse().ok()?;
    let b = it.next()?.parse().ok()?;
    let c = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((a, b, c))
}

/// Whether `v` is at least `min` (both well-formed; a malformed `v` is never).
pub fn at_least(v: &str, min: &str) -> bool {
    match (parse(v), parse(min)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

/// Checks a config's version is one of `supported` exactly, as the Go skel does.
pub fn check_supported(v: &str, supported: &[&str]) -> Result<(), CniError> {
    if supported.contains(&v) {
        return Ok(());
    }
    Err(
        CniError::new(ERR_INCOMPATIBLE_VERSION, "incompatible CNI versions").with_details(format!(
            "config is \"{v}\", plugin supports {:?}",
            supported
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering() {
        assert!(at_least("1.1.0", "0.4.0"));
        assert!(at_least("0.4.0", "0.4.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        assert!(!at_least("garbage", "0.1.0"));
        assert!(parse("1.0").is_none());
        assert!(parse("1.0.0.0").is_none());
    }

    #[test]
    fn negotiation() {
        for v in SUPPORTED {
            assert!(check_supported(v, SUPPORTED).is_ok());
        }
        assert_eq!(check_supported("0.2.0", CHAINED).unwrap_err().code, 1);
        let e = check_supported("9.9.9", SUPPORTED).unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.details.contains("9.9.9"));
    }
}
