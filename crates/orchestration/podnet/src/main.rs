//! Orchestration: the one `podnet` binary. With `CNI_COMMAND` set it is the CNI plugin;
//! otherwise a command-line tool (`podnet --help`).

mod cli;
mod cni;
mod demo;
mod lab;
mod roles;

fn main() {
    if std::env::var_os("CNI_COMMAND").is_some() {
        std::process::exit(cni::plugin::run());
    }
    if let Err(e) = cli::run() {
        eprintln!("podnet: {e:#}");
        std::process::exit(1);
    }
}
