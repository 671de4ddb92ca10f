//! Pure: the spec versions podnet speaks, and which verbs each one allows.

use crate::error::{CniError, ErrorCode};
use std::fmt;

/// A CNI specification version podnet accepts. Versions before 0.3.0 used a result format
/// (`ip4`/`ip6`) that no current runtime sends; they are refused with code 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Parses a version string; an unknown one is the spec's code 1.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        CniVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!("unsupported CNI version {s:?}"),
                )
                .with_details(format!("podnet supports {}", supported_list()))
            })
    }

    /// The highest version in `candidates` that podnet supports (the `cniVersions` rule).
    pub fn highest_supported<'a>(candidates: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        candidates
            .into_iter()
            .filter_map(|s| CniVersion::parse(s).ok())
            .max()
    }

    /// Result objects lost the per-IP `version` field in 1.0.0.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// CHECK exists from 0.4.0 on.
    pub fn allows_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on, as do the extra interface and route fields.
    pub fn is_1_1(self) -> bool {
        self >= CniVersion::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn supported_list() -> String {
    CniVersion::ALL.map(CniVersion::as_str).join(", ")
}

/// The answer to `VERSION`.
pub fn render_version_info(answer_in: CniVersion) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": answer_in.as_str(),
        "supportedVersions": CniVersion::ALL.map(CniVersion::as_str),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_refuses_others() {
        for v in CniVersion::ALL {
            assert_eq!(CniVersion::parse(v.as_str()).unwrap(), v);
        }
        for bad in ["0.1.0", "0.2.0", "1.2.0", "", "1.0"] {
            let err = CniVersion::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::IncompatibleVersion, "{bad}");
        }
    }

    #[test]
    fn highest_supported_picks_the_max_known() {
        assert_eq!(
            CniVersion::highest_supported(["0.3.1", "1.0.0", "9.9.9"]),
            Some(CniVersion::V1_0_0)
        );
        assert_eq!(CniVersion::highest_supported(["0.2.0"]), None);
    }
}
