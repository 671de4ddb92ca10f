//! Pure: Kubernetes label selectors — the query-string form (`a=b,c!=d,e in (x,y),!f`) and
//! the object forms (a Service's map, a `LabelSelector` with expressions) — and matching.
//!
//! Invariant: one `Selector` type for all three forms, so list/watch filtering, Service
//! endpoints and NetworkPolicy selection cannot disagree on semantics.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("invalid label selector {selector:?}: {reason}")]
    Invalid { selector: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A conjunction of requirements; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    /// Parses the query-string form used by `?labelSelector=`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let err = |reason: &str| SelectorError::Invalid {
            selector: s.to_string(),
            reason: reason.to_string(),
        };
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let req = if let Some(key) = term.strip_prefix('!') {
                Requirement::DoesNotExist(check_key(key.trim()).map_err(|r| err(&r))?)
            } else if let Some(open) = term.find('(') {
                let close = term
                    .rfind(')')
                    .filter(|c| *c > open && term[c + 1..].trim().is_empty())
                    .ok_or_else(|| err("unbalanced parentheses"))?;
                let head: Vec<&str> = term[..open].split_whitespace().collect();
                let [key, op] = head[..] else {
                    return Err(err("expected `key in (...)` or `key notin (...)`"));
                };
                let values: BTreeSet<String> = term[open + 1..close]
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                let key = check_key(key).map_err(|r| err(&r))?;
                match op {
                    "in" => Requirement::In(key, values),
                    "notin" => Requirement::NotIn(key, values),
                    other => return Err(err(&format!("unknown operator {other:?}"))),
                }
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(check_key(k.trim()).map_err(|r| err(&r))?, v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                Requirement::Equals(check_key(k.trim()).map_err(|r| err(&r))?, v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement::Equals(check_key(k.trim()).map_err(|r| err(&r))?, v.trim().into())
            } else {
                Requirement::Exists(check_key(term).map_err(|r| err(&r))?)
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// A Service's (or ReplicaSet's) `selector` map: all pairs must match.
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        Selector(
            map.iter()
                .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
                .collect(),
        )
    }

    /// A `metav1.LabelSelector` (NetworkPolicy, Deployment).
    pub fn from_label_selector(sel: &LabelSelector) -> Result<Self, SelectorError> {
        let mut s = sel
            .match_labels
            .as_ref()
            .map(Self::from_map)
            .unwrap_or_default();
        for e in sel.match_expressions.iter().flatten() {
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            s.0.push(match e.operator.as_str() {
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                other => {
                    return Err(SelectorError::Invalid {
                        selector: format!("{sel:?}"),
                        reason: format!("unknown operator {other:?}"),
                    });
                }
            });
        }
        Ok(s)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn check_key(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
    {
        return Err(format!("invalid key {key:?}"));
    }
    Ok(key.to_string())
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_forms() {
        let l = labels(&[("app", "web"), ("tier", "fe")]);
        assert!(Selector::parse("app=web").unwrap().matches(&l));
        assert!(Selector::parse("app==web,tier=fe").unwrap().matches(&l));
        assert!(!Selector::parse("app!=web").unwrap().matches(&l));
        assert!(Selector::parse("app!=db").unwrap().matches(&l));
        assert!(Selector::parse("missing!=x").unwrap().matches(&l));
        assert!(Selector::parse("").unwrap().matches(&l));
    }

    #[test]
    fn set_based_forms() {
        let l = labels(&[("env", "prod"), ("app", "web")]);
        assert!(Selector::parse("env in (prod, qa)").unwrap().matches(&l));
        assert!(!Selector::parse("env notin (prod,qa)").unwrap().matches(&l));
        assert!(Selector::parse("zone notin (a)").unwrap().matches(&l));
        assert!(!Selector::parse("zone in (a)").unwrap().matches(&l));
        assert!(Selector::parse("app").unwrap().matches(&l));
        assert!(!Selector::parse("!app").unwrap().matches(&l));
        assert!(
            Selector::parse("!zone,env in (prod),app=web")
                .unwrap()
                .matches(&l)
        );
        assert_eq!(
            Selector::parse("env in (a,b),x").unwrap().0.len(),
            2,
            "commas inside parentheses do not split"
        );
    }

    #[test]
    fn bad_selectors_are_rejected() {
        assert!(Selector::parse("env in (a").is_err());
        assert!(Selector::parse("env within (a)").is_err());
        assert!(Selector::parse("=x").is_err());
        assert!(Selector::parse("a b=c").is_err());
    }

    #[test]
    fn label_selector_object() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "NotIn".into(),
                values: Some(vec!["dev".into()]),
            }]),
        };
        let s = Selector::from_label_selector(&sel).unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
        assert!(
            Selector::from_label_selector(&LabelSelector::default())
                .unwrap()
                .matches(&BTreeMap::new())
        );
    }
}
