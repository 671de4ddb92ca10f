//! Orchestration: bearer-token authentication — kube-apiserver's static token file
//! (`--token-auth-file`). Invariant: with tokens configured, a request is served only when
//! its `Authorization: Bearer <token>` names a known token; anything else gets 401
//! `Unauthorized` as a `Status`, as from the real server with anonymous access off.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Known tokens and the user each one authenticates.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens(Arc<HashMap<String, String>>);

impl std::fmt::Debug for Tokens {
    // Never print the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} known)", self.0.len())
    }
}

impl Tokens {
    /// Parses a static token file: one `token,user[,uid[,"group1,group2"]]` per line (the
    /// columns after the user are accepted and ignored); blank lines and `#` comments are
    /// skipped. Errors name the line.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut out = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut cols = line.splitn(3, ',');
            let token = cols.next().unwrap_or("").trim();
            let user = cols.next().unwrap_or("").trim();
            if token.is_empty() || user.is_empty() {
                return Err(format!("line {}: want token,user[,uid,groups]", i + 1));
            }
            if out.insert(token.to_string(), user.to_string()).is_some() {
                return Err(format!("line {}: duplicate token", i + 1));
            }
        }
        if out.is_empty() {
            return Err("no tokens".into());
        }
        Ok(Tokens(Arc::new(out)))
    }

    /// Reads and parses a static token file.
    pub fn read(path: &Path) -> anyhow::Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("read token file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display()))
    }

    /// The user an `Authorization` header authenticates (`Bearer <token>`, the scheme
    /// case-insensitive as in RFC 7235).
    pub fn authenticate(&self, authorization: Option<&http::HeaderValue>) -> Option<&str> {
        let value = authorization?.to_str().ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.0.get(token.trim()).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(v: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(v).unwrap()
    }

    #[test]
    fn static_token_file() {
        let t =
            Tokens::parse("# lab\nabc,admin,1,\"system:masters\"\n\ndef,system:node:n1\n").unwrap();
        assert_eq!(t.authenticate(Some(&header("Bearer abc"))), Some("admin"));
        assert_eq!(
            t.authenticate(Some(&header("bearer def"))),
            Some("system:node:n1")
        );
        assert_eq!(t.authenticate(Some(&header("Bearer nope"))), None);
        assert_eq!(t.authenticate(Some(&header("Basic abc"))), None);
        assert_eq!(t.authenticate(Some(&header("abc"))), None);
        assert_eq!(t.authenticate(None), None);
        assert_eq!(format!("{t:?}"), "Tokens(2 known)");
        assert_eq!(
            Tokens::parse("abc\n").unwrap_err(),
            "line 1: want token,user[,uid,groups]"
        );
        assert_eq!(
            Tokens::parse("a,u\na,v\n").unwrap_err(),
            "line 2: duplicate token"
        );
        assert!(Tokens::parse("# nothing\n").is_err());
    }
}
