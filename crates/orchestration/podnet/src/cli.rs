//! Orchestration: the command line (everything except the CNI plugin role).

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use podnet_kubelet::cni::{Attachment, ConfList, Runtime};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "podnet",
    version,
    about = "The Kubernetes networking model, end to end."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a conflist against a container, as a container runtime would (a `cnitool`).
    Cni {
        #[command(subcommand)]
        verb: Box<CniVerb>,
    },
    /// Show pod networking on one node: two pods wired by the plugin, talking over TCP.
    Demo,
    /// A whole cluster on this machine, made of network namespaces.
    Lab {
        #[command(subcommand)]
        cmd: crate::lab::LabCmd,
    },
    /// The node agent: routes to other nodes' pods (host-gw or VXLAN), masquerade, CNI config.
    Agent(crate::roles::AgentArgs),
    /// The cluster DNS server (Kubernetes DNS schema 1.1.0), forwarding other names.
    Dns(crate::roles::DnsArgs),
    /// The lab's control plane: the Kubernetes API subset podnet needs, with controllers.
    Apiserver(crate::roles::ApiServerArgs),
    /// The lab's pod runtime for one node (what kubelet and a container runtime do).
    Kubelet(crate::roles::KubeletArgs),
    /// The built-in echo workload (configured by environment, as the pod runtime starts it).
    Echo,
    /// Copy this binary into DIR as the CNI plugin `podnet`, atomically (the agent
    /// DaemonSet's init container runs this with the node's /opt/cni/bin mounted at DIR).
    InstallCni {
        /// The node's CNI plugin directory, as mounted in the container.
        #[arg(default_value = "/host/opt/cni/bin")]
        dir: PathBuf,
    },
    /// Internal: delete a veth pair the CNI plugin's DEL retired (run detached by DEL).
    #[command(hide = true)]
    ReapLink { name: String },
    /// Internal: one SCTP INIT → INIT-ACK with an echo server (raw socket); prints its line.
    #[command(hide = true)]
    SctpProbe {
        addr: std::net::SocketAddrV4,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

#[derive(Args)]
struct RuntimeArgs {
    /// The network configuration list.
    #[arg(long)]
    conflist: PathBuf,
    /// Directories to find plugins in (repeatable).
    #[arg(long = "plugin-dir", default_values = ["/opt/cni/bin", "/usr/lib/cni"])]
    plugin_dirs: Vec<PathBuf>,
    /// Where results are cached between ADD and DEL/CHECK.
    #[arg(long, default_value = "/var/lib/cni/podnet-runtime")]
    cache_dir: PathBuf,
    /// Run the plugins inside this network namespace (the node's), not the caller's.
    #[arg(long)]
    exec_netns: Option<PathBuf>,
}

#[derive(Args)]
struct AttachArgs {
    #[command(flatten)]
    rt: RuntimeArgs,
    /// The container's network namespace path.
    #[arg(long)]
    netns: String,
    #[arg(long)]
    container_id: String,
    #[arg(long, default_value = "eth0")]
    ifname: String,
    /// CNI_ARGS entries, KEY=VALUE (repeatable).
    #[arg(long = "arg")]
    args: Vec<String>,
    /// Capability arguments as a JSON object, e.g. '{"portMappings":[…]}'.
    #[arg(long)]
    capability_args: Option<String>,
}

#[derive(Subcommand)]
enum CniVerb {
    /// ADD: attach, print the result.
    Add(AttachArgs),
    /// DEL: detach.
    Del(AttachArgs),
    /// CHECK: verify against the cached result.
    Check(AttachArgs),
    /// GC: keep only the listed attachments (CONTAINER_ID/IFNAME, repeatable).
    Gc {
        #[command(flatten)]
        rt: RuntimeArgs,
        #[arg(long = "valid")]
        valid: Vec<String>,
    },
    /// STATUS: can the network take ADDs now?
    Status {
        #[command(flatten)]
        rt: RuntimeArgs,
    },
}

impl RuntimeArgs {
    fn build(&self) -> Result<(Runtime, ConfList)> {
        let list = ConfList::load(&self.conflist)?;
        let rt = Runtime {
            plugin_dirs: self.plugin_dirs.clone(),
            cache_dir: self.cache_dir.clone(),
            exec_netns: self.exec_netns.clone(),
        };
        Ok((rt, list))
    }
}

impl AttachArgs {
    fn attachment(&self) -> Result<Attachment> {
        let args = self
            .args
            .iter()
            .map(|a| split_pair(a, '=', "--arg wants KEY=VALUE"))
            .collect::<Result<Vec<_>>>()?;
        let capability_args = match &self.capability_args {
            Some(s) => serde_json::from_str(s).context("--capability-args is not a JSON object")?,
            None => Default::default(),
        };
        Ok(Attachment {
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            args,
            capability_args,
        })
    }
}

pub fn run() -> Result<()> {
    match Cli::parse().command {
        Cmd::Demo => crate::demo::run(),
        Cmd::ReapLink { name } => crate::cni::bridge::reap(&name),
        Cmd::Lab { cmd } => crate::lab::run(cmd),
        Cmd::Agent(a) => crate::roles::agent(a),
        Cmd::Dns(a) => crate::roles::dns(a),
        Cmd::Apiserver(a) => crate::roles::apiserver(a),
        Cmd::Kubelet(a) => crate::roles::kubelet(a),
        Cmd::Echo => podnet_kubelet::echo::run_from_env(),
        Cmd::InstallCni { dir } => install_cni(&dir),
        Cmd::SctpProbe { addr, timeout_ms } => {
            let r =
                podnet_kubelet::sctp::probe(addr, std::time::Duration::from_millis(timeout_ms))?;
            let id = podnet_kubelet::echo::Identity {
                pod: r.pod,
                namespace: r.namespace,
                ip: r.ip,
                node: r.node,
                container: r.container,
            };
            print!("{}", podnet_kubelet::echo::render_reply(&id, r.peer));
            Ok(())
        }
        Cmd::Cni { verb } => match *verb {
            CniVerb::Add(a) => {
                let (rt, list) = a.rt.build()?;
                let result = rt.add(&list, &a.attachment()?)?;
                println!("{}", serde_json::to_string_pretty(&result)?);
                Ok(())
            }
            CniVerb::Del(a) => {
                let (rt, list) = a.rt.build()?;
                rt.del(&list, &a.attachment()?)
            }
            CniVerb::Check(a) => {
                let (rt, list) = a.rt.build()?;
                rt.check(&list, &a.attachment()?)
            }
            CniVerb::Gc { rt, valid } => {
                let (rt, list) = rt.build()?;
                let valid = valid
                    .iter()
                    .map(|v| split_pair(v, '/', "--valid wants ID/IFNAME"))
                    .collect::<Result<Vec<_>>>()?;
                rt.gc(&list, &valid)
            }
            CniVerb::Status { rt } => {
                let (rt, list) = rt.build()?;
                rt.status(&list)
            }
        },
    }
}

/// Copies the running binary to `dir/podnet` under a temporary name, then renames it
/// over the old one: a runtime executing the plugin during an upgrade runs either the old
/// or the new file, never a half-written one (the running old binary's inode stays valid).
fn install_cni(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let me = std::env::current_exe().context("find the running binary")?;
    if !dir.is_dir() {
        anyhow::bail!(
            "{} is not a directory (mount the node's /opt/cni/bin there)",
            dir.display()
        );
    }
    let target = dir.join("podnet");
    let tmp = dir.join(format!(".podnet.tmp.{}", std::process::id()));
    let copy = || -> Result<u64> {
        let n = std::fs::copy(&me, &tmp)
            .with_context(|| format!("copy {} to {}", me.display(), tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("sync {}", tmp.display()))?;
        std::fs::rename(&tmp, &target)
            .with_context(|| format!("rename {} to {}", tmp.display(), target.display()))?;
        Ok(n)
    };
    match copy() {
        Ok(n) => {
            println!("installed {} ({n} bytes)", target.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// `"a<sep>b"` → `("a", "b")`, or an error saying what was wanted.
fn split_pair(s: &str, sep: char, wanted: &'static str) -> Result<(String, String)> {
    s.split_once(sep)
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .context(wanted)
}
