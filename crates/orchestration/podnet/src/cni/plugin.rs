//! Orchestration: the CNI edge. Reads the environment and stdin, runs the verb, prints the
//! result or the spec's error JSON, and maps failures to exit codes. Nothing below this
//! module prints.

use super::bridge;
use podnet_cni_spec::config::{NetConf, parse_version, version_for_errors};
use podnet_cni_spec::version::render_version_info;
use podnet_cni_spec::{CniError, CniVersion, Command, Environment, Request};
use std::io::{Read, Write};

/// Runs one plugin invocation; returns the process exit code.
pub fn run() -> i32 {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return fail(
            CniError::io(format!("reading stdin: {e}")),
            CniVersion::LATEST,
        );
    }
    let vars: Vec<(String, String)> = std::env::vars().collect();
    match dispatch(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())), &stdin) {
        Ok(Some(out)) => {
            let mut stdout = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut stdout, &out);
            let _ = stdout.write_all(b"\n");
            0
        }
        Ok(None) => 0,
        Err(e) => fail(e, version_for_errors(&stdin)),
    }
}

fn fail(e: CniError, version: CniVersion) -> i32 {
    let mut stdout = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut stdout, &e.render(version));
    let _ = stdout.write_all(b"\n");
    eprintln!("podnet: {e}");
    1
}

/// Parses and runs one request; `Ok(Some(json))` is printed on stdout.
fn dispatch<'a>(
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    stdin: &[u8],
) -> Result<Option<serde_json::Value>, CniError> {
    let env = Environment::parse(vars)?;
    if env.command == Command::Version {
        let v = parse_version(stdin).unwrap_or(CniVersion::LATEST);
        return Ok(Some(render_version_info(v)));
    }
    let req = Request::new(env, NetConf::parse(stdin)?)?;
    match req.env.command {
        Command::Add => bridge::add(&req).map(|r| Some(r.render(req.conf.version))),
        Command::Del => bridge::del(&req).map(|()| None),
        Command::Check => bridge::check(&req).map(|()| None),
        Command::Status => bridge::status(&req).map(|()| None),
        Command::Gc => bridge::gc(&req).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}
