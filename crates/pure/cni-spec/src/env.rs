//! Pure: the `CNI_*` environment of one invocation, checked per verb (spec section 2).

use crate::error::{CniError, ErrorCode};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The verb in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::invalid_env(format!(
                    "unknown CNI_COMMAND {other:?} (want ADD, DEL, CHECK, STATUS, GC or VERSION)"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// Verbs that act on one attachment need a container ID and an interface name.
    fn needs_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }

    /// DEL may come without a namespace (it is already gone); ADD and CHECK need one.
    fn needs_netns(self) -> bool {
        matches!(self, Command::Add | Command::Check)
    }
}

/// `CNI_ARGS`: `K=V;K=V`. podnet understands `IP` (static addresses, comma separated),
/// `MAC`, `IgnoreUnknown` and the `K8S_POD_*` keys runtimes pass; any other key is an
/// error unless `IgnoreUnknown` is true, as with the reference plugins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub ips: Vec<IpAddr>,
    pub mac: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<Self, CniError> {
        let mut pairs = BTreeMap::new();
        for part in raw.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                CniError::invalid_env(format!("CNI_ARGS: {part:?} is not KEY=VALUE"))
            })?;
            pairs.insert(k.to_string(), v.to_string());
        }
        let ignore_unknown = pairs
            .get("IgnoreUnknown")
            .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True"));
        let mut args = CniArgs::default();
        for (k, v) in pairs {
            match k.as_str() {
                "IP" => {
                    for ip in v.split(',').filter(|s| !s.is_empty()) {
                        args.ips.push(ip.parse().map_err(|_| {
                            CniError::invalid_env(format!(
                                "CNI_ARGS: IP={ip:?} is not an IP address"
                            ))
                        })?);
                    }
                }
                "MAC" => args.mac = Some(v),
                "K8S_POD_NAME" => args.pod_name = Some(v),
                "K8S_POD_NAMESPACE" => args.pod_namespace = Some(v),
                "IgnoreUnknown" | "K8S_POD_INFRA_CONTAINER_ID" | "K8S_POD_UID" => {}
                _ if ignore_unknown => {}
                _ => {
                    return Err(CniError::new(
                        ErrorCode::UnsupportedField,
                        format!("CNI_ARGS: unknown key {k:?} (set IgnoreUnknown=1 to pass it)"),
                    ));
                }
            }
        }
        Ok(args)
    }
}

/// The environment of one invocation, validated for its verb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub command: Command,
    /// Present for ADD, DEL and CHECK.
    pub container_id: Option<String>,
    /// Present for ADD and CHECK; optional for DEL.
    pub netns: Option<String>,
    /// Present for ADD, DEL and CHECK.
    pub ifname: Option<String>,
    pub args: CniArgs,
    pub path: Vec<String>,
}

impl Environment {
    /// Reads the `CNI_*` variables from `vars` (the process environment at the edge).
    pub fn parse<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, CniError> {
        let vars: BTreeMap<&str, &str> = vars.into_iter().collect();
        let get = |k: &str| vars.get(k).copied().filter(|v| !v.is_empty());
        let command = Command::parse(
            get("CNI_COMMAND").ok_or_else(|| CniError::invalid_env("CNI_COMMAND is not set"))?,
        )?;
        let need = |k: &str| {
            get(k).map(str::to_string).ok_or_else(|| {
                CniError::invalid_env(format!("{k} is required for {}", command.as_str()))
            })
        };
        let (container_id, ifname) = if command.needs_attachment() {
            let id = need("CNI_CONTAINERID")?;
            validate_container_id(&id)?;
            let ifname = need("CNI_IFNAME")?;
            validate_ifname(&ifname)?;
            (Some(id), Some(ifname))
        } else {
            (None, None)
        };
        let netns = if command.needs_netns() {
            Some(need("CNI_NETNS")?)
        } else {
            get("CNI_NETNS").map(str::to_string)
        };
        Ok(Environment {
            command,
            container_id,
            netns,
            ifname,
            args: CniArgs::parse(get("CNI_ARGS").unwrap_or(""))?,
            path: get("CNI_PATH")
                .map(|p| {
                    p.split(':')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// The spec's rule for container IDs and network names: an alphanumeric first, then
/// alphanumerics, `_`, `.`, `-`.
pub fn is_cni_name(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    if is_cni_name(id) {
        Ok(())
    } else {
        Err(CniError::invalid_env(format!(
            "CNI_CONTAINERID {id:?} is not a valid container ID"
        )))
    }
}

/// Spec: Linux interface name rules: 1–15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::invalid_env(format!(
            "CNI_IFNAME {name:?} is not a valid interface name"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> Result<Environment, CniError> {
        Environment::parse(pairs.iter().copied())
    }

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
        ])
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert!(e.msg.contains("CNI_CONTAINERID"), "{e}");
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
    }

    #[test]
    fn del_may_come_without_netns() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(e.netns, None);
    }

    #[test]
    fn status_gc_version_need_nothing_else() {
        for c in ["STATUS", "GC", "VERSION"] {
            let e = env(&[("CNI_COMMAND", c)]).unwrap();
            assert_eq!(e.container_id, None);
        }
    }

    #[test]
    fn bad_values_are_invalid_environment() {
        for (k, v) in [
            ("CNI_IFNAME", "a/b"),
            ("CNI_IFNAME", "sixteen-chars-xx"),
            ("CNI_CONTAINERID", "-x"),
        ] {
            let mut vars = vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_NETNS", "/n"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_CONTAINERID", "c"),
            ];
            vars.retain(|(kk, _)| *kk != k);
            vars.push((k, v));
            assert_eq!(
                env(&vars).unwrap_err().code,
                ErrorCode::InvalidEnvironment,
                "{k}={v}"
            );
        }
        assert_eq!(
            env(&[("CNI_COMMAND", "FROB")]).unwrap_err().code,
            ErrorCode::InvalidEnvironment
        );
        assert_eq!(env(&[]).unwrap_err().code, ErrorCode::InvalidEnvironment);
    }

    #[test]
    fn cni_args_known_unknown_and_ignore_unknown() {
        let a =
            CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.1.0.9,fd00::9;FOO=bar").unwrap();
        assert_eq!(a.pod_name.as_deref(), Some("web"));
        assert_eq!(a.ips.len(), 2);
        assert_eq!(
            CniArgs::parse("FOO=bar").unwrap_err().code,
            ErrorCode::UnsupportedField
        );
        assert_eq!(
            CniArgs::parse("FOO").unwrap_err().code,
            ErrorCode::InvalidEnvironment
        );
        assert_eq!(
            CniArgs::parse("IP=nope").unwrap_err().code,
            ErrorCode::InvalidEnvironment
        );
    }
}
