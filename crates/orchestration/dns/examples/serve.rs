//! `podnet dns` without the rest of the `podnet` binary, for measuring this crate alone
//! (benchmarks while other parts of the workspace change): the same server, configured
//! from the environment — `API` (`http://127.0.0.1:6443`), `LISTEN` (`127.0.0.1:1053`),
//! `UPSTREAM` (`127.0.0.1:2053`), `METRICS` (`127.0.0.1:9153`), `WORKERS` (0: one per CPU).
//!
//! `cargo build --release -p podnet-dns-server --example serve`; `scripts/bench-dns`
//! takes it as `PODNET_DNS_BIN`.

use podnet_dns_server::{Config, run};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() -> anyhow::Result<()> {
    let config = Config {
        listen: env("LISTEN", "127.0.0.1:1053").parse()?,
        upstreams: vec![env("UPSTREAM", "127.0.0.1:2053").parse()?],
        metrics_addr: env("METRICS", "127.0.0.1:9153").parse()?,
        udp_workers: env("WORKERS", "0").parse()?,
        ..Config::default()
    };
    let api = env("API", "http://127.0.0.1:6443").parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = kube::Client::try_from(kube::Config::new(api))?;
        run(config, client).await
    })
}
