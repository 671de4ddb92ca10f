//! Integration: the cluster install in `deploy/` (what `kubectl apply -f deploy/` creates).
//!
//! - Every manifest validates against the Kubernetes schemas with PyPI's
//!   `kubernetes-validate --strict` (installed by scripts/setup), for the oldest and the
//!   newest Kubernetes version named below; deliberately broken copies are rejected (so a
//!   pass means something).
//! - What a schema cannot see: the ClusterRoles grant exactly list/watch on the kinds the
//!   agent's and the DNS server's source read; the kinds they write (the agent: pod CIDR
//!   claims, Leases) are granted by a Role in their namespace, with exactly the verbs the
//!   writing file calls, and nowhere else; the
//!   DaemonSet tolerates every taint and has exactly its two capabilities; the ConfigMap's
//!   keys are exactly the settings `podnet agent` reads, and every value parses.
//! - The agent as deployed (root; network namespaces of their own): with exactly the
//!   DaemonSet's capabilities it programs a node, without any one of them it does not; with
//!   no API option it uses the pod's service account (token, CA, HTTPS), and a kubeconfig
//!   works too.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const PODNET: &str = env!("CARGO_BIN_EXE_podnet");
/// The Kubernetes versions the manifests are validated for (the oldest and newest claimed
/// in docs/install.md).
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.34.0"];
const VALIDATOR: &str = "/var/cache/podnet/venv/bin/kubernetes-validate";
const IMAGE: &str = "ghcr.io/podnet/podnet:0.1.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

/// The manifests, in the order `kubectl apply -f deploy/` applies them.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy"))
        .expect("deploy/ exists")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn all_documents() -> Vec<Value> {
    manifests().iter().flat_map(|p| documents(p)).collect()
}

/// The one object of `kind` named `name`, typed.
fn object<T: serde::de::DeserializeOwned>(kind: &str, name: &str) -> T {
    let found: Vec<Value> = all_documents()
        .into_iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "{kind}/{name} in deploy/");
    serde_json::from_value(found[0].clone()).unwrap_or_else(|e| panic!("{kind}/{name}: {e}"))
}

fn validator() -> PathBuf {
    let path = std::env::var_os("PODNET_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(VALIDATOR));
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup (it installs kubernetes-validate into a venv)",
        path.display()
    );
    path
}

/// `kubernetes-validate --strict` over `files`. Ok only when it exits 0, prints no
/// warning or error, and reports every document as passed: the tool only *warns* about a
/// kind it has no schema for (a misspelt kind or apiVersion) and exits 0.
fn validate(files: &[PathBuf], version: &str) -> Result<(), String> {
    let out = Command::new(validator())
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: usize = files.iter().map(|f| documents(f).len()).sum();
    let passed = text
        .lines()
        .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
        .count();
    let complaints = text
        .lines()
        .any(|l| ["WARN", "ERROR", "FATAL"].iter().any(|w| l.starts_with(w)));
    if out.status.success() && !complaints && passed == expected {
        Ok(())
    } else {
        Err(format!(
            "{} ({passed} of {expected} documents passed):\n{text}",
            out.status
        ))
    }
}

#[test]
fn manifests_are_numbered_yaml_namespace_first() {
    let names: Vec<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.len() >= 7, "{names:?}");
    for n in &names {
        let b = n.as_bytes();
        assert!(
            b.len() > 3 && b[0].is_ascii_digit() && b[1].is_ascii_digit() && b[2] == b'-',
            "{n}: NN-name.yaml, so that `kubectl apply -f deploy/` applies in order"
        );
        assert!(n.ends_with(".yaml"), "{n}: kubectl applies .yaml");
    }
    let first = documents(&manifests()[0]);
    assert_eq!(first[0]["kind"], "Namespace");
    assert_eq!(first[0]["metadata"]["name"], "podnet-system");
    // Every namespaced object lives in podnet-system or kube-system.
    for d in all_documents() {
        if let Some(ns) = d["metadata"]["namespace"].as_str() {
            assert!(["podnet-system", "kube-system"].contains(&ns), "{d}");
        }
    }
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let files = manifests();
    for version in KUBERNETES_VERSIONS {
        if let Err(e) = validate(&files, version) {
            panic!("Kubernetes {version}: {e}");
        }
    }
}

#[test]
fn a_broken_manifest_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let original = repo().join("deploy/12-agent-daemonset.yaml");
    let text = std::fs::read_to_string(&original).unwrap();
    let copy = |name: &str, from: &str, to: &str| -> PathBuf {
        assert!(text.contains(from), "{from:?} not in the DaemonSet");
        let path = dir.path().join(name);
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        path
    };
    // The control: an unchanged copy passes, so each failure below is its change's.
    let same = copy("same.yaml", "hostNetwork: true", "hostNetwork: true");
    validate(&[same], KUBERNETES_VERSIONS[1]).expect("an unchanged copy passes");
    for (name, from, to, why) in [
        (
            "typo.yaml",
            "hostNetwork: true",
            "hostNetwrok: true",
            "an unknown field (--strict)",
        ),
        (
            "type.yaml",
            "containerPort: 9102",
            "containerPort: \"9102\"",
            "a string where an integer belongs",
        ),
        (
            "missing.yaml",
            "  selector:\n    matchLabels:\n      app.kubernetes.io/name: podnet-agent\n",
            "",
            "a required field missing",
        ),
        (
            "kind.yaml",
            "kind: DaemonSet",
            "kind: DaemonSett",
            "a kind without a schema (the tool only warns)",
        ),
    ] {
        let broken = copy(name, from, to);
        let err = validate(&[broken], KUBERNETES_VERSIONS[1])
            .err()
            .unwrap_or_else(|| panic!("{why} was accepted"));
        assert!(err.contains(name), "{why}: {err}");
    }
}

/// The kinds a text opens an `Api` for (`Api::<Kind>` or `Api<Kind>`).
fn api_kinds(text: &str) -> BTreeSet<String> {
    let mut kinds = BTreeSet::new();
    for marker in ["Api::<", "Api<"] {
        for (i, _) in text.match_indices(marker) {
            let rest = &text[i + marker.len()..];
            let kind: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            // `Api<K>` in generic code is not a kind.
            if kind.len() > 1 {
                kinds.insert(kind);
            }
        }
    }
    kinds
}

/// Every write of kube's `Api` takes one of these; reads take none.
const WRITE_PARAMS: [&str; 3] = ["PostParams", "PatchParams", "DeleteParams"];

/// kube `Api` methods → the RBAC verb each needs.
const METHOD_VERBS: [(&str, &str); 9] = [
    (".create(", "create"),
    (".replace(", "update"),
    (".patch(", "patch"),
    (".delete(", "delete"),
    (".delete_collection(", "deletecollection"),
    (".get(", "get"),
    (".get_opt(", "get"),
    (".list(", "list"),
    ("watcher(", "watch"),
];

/// What a crate's source does with the API: the kinds read (every `Api` opened in a file
/// that writes nothing: mirrored by list + watch, or listed), and per written kind the
/// verbs of its file. A file that writes must open exactly one kind, so that each call
/// in it is that kind's.
struct Access {
    reads: BTreeSet<String>,
    writes: BTreeMap<String, BTreeSet<String>>,
}

fn api_access(src: &Path) -> Access {
    let mut access = Access {
        reads: BTreeSet::new(),
        writes: BTreeMap::new(),
    };
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let kinds = api_kinds(&text);
        if !WRITE_PARAMS.iter().any(|w| text.contains(w)) {
            access.reads.extend(kinds);
            continue;
        }
        assert_eq!(
            kinds.len(),
            1,
            "{} writes to the API and opens {kinds:?}: keep one kind's writes in a file of \
             their own, so that its verbs can be read off",
            p.display()
        );
        let verbs: BTreeSet<String> = METHOD_VERBS
            .iter()
            .filter(|(m, _)| text.contains(m))
            .map(|(_, v)| v.to_string())
            .collect();
        assert!(!verbs.is_empty(), "{}", p.display());
        access
            .writes
            .entry(kinds.into_iter().next().unwrap())
            .or_default()
            .extend(verbs);
    }
    access
}

/// (API group, resource) of a kind the code may use.
fn resource_of(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "Node" => ("", "nodes"),
        "Service" => ("", "services"),
        "Pod" => ("", "pods"),
        "Namespace" => ("", "namespaces"),
        "EndpointSlice" => ("discovery.k8s.io", "endpointslices"),
        "NetworkPolicy" => ("networking.k8s.io", "networkpolicies"),
        "Lease" => ("coordination.k8s.io", "leases"),
        other => panic!("the code uses {other}: add it to resource_of and to the roles"),
    }
}

type Grants = BTreeMap<(String, String), BTreeSet<String>>;

/// A role's grants: (group, resource) → verbs.
fn grants(rules: Option<&Vec<PolicyRule>>) -> Grants {
    let mut out: Grants = BTreeMap::new();
    for rule in rules.into_iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                assert!(g != "*" && r != "*", "no wildcards");
                out.entry((g.clone(), r.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    out
}

fn grant(
    kind: &str,
    verbs: impl IntoIterator<Item = String>,
) -> ((String, String), BTreeSet<String>) {
    let (g, r) = resource_of(kind);
    ((g.to_string(), r.to_string()), verbs.into_iter().collect())
}

/// The ClusterRole named `name` grants list and watch — nothing else — on exactly the
/// kinds the source in `src` reads and does not write; the kinds it writes are granted by
/// the Role `name` in `namespace` (the writing file's verbs, plus list and watch when the
/// kind is read elsewhere too) and by no ClusterRole — or no such Role exists when the
/// source writes nothing. Both are bound to service account `sa` in `namespace`.
fn check_role(name: &str, src: &str, sa: &str, namespace: &str) {
    let access = api_access(&repo().join(src));
    assert!(!access.reads.is_empty(), "{src}: no Api found");
    let cluster_wanted: Grants = access
        .reads
        .iter()
        .filter(|k| !access.writes.contains_key(*k))
        .map(|k| grant(k, ["list", "watch"].map(String::from)))
        .collect();
    let role: ClusterRole = object("ClusterRole", name);
    assert_eq!(
        grants(role.rules.as_ref()),
        cluster_wanted,
        "ClusterRole {name} vs {src}"
    );

    let binding: ClusterRoleBinding = object("ClusterRoleBinding", name);
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, name);
    check_subjects(binding.subjects, sa, namespace);

    let role_wanted: Grants = access
        .writes
        .iter()
        .map(|(k, verbs)| {
            let mut verbs = verbs.clone();
            if access.reads.contains(k) {
                verbs.extend(["list", "watch"].map(String::from));
            }
            grant(k, verbs)
        })
        .collect();
    let roles: Vec<Value> = all_documents()
        .into_iter()
        .filter(|d| d["kind"] == "Role" && d["metadata"]["name"] == name)
        .collect();
    if role_wanted.is_empty() {
        assert!(roles.is_empty(), "{src} writes nothing: no Role {name}");
        return;
    }
    let role: Role = object("Role", name);
    assert_eq!(role.metadata.namespace.as_deref(), Some(namespace));
    assert_eq!(
        grants(role.rules.as_ref()),
        role_wanted,
        "Role {name} vs {src}"
    );
    let binding: RoleBinding = object("RoleBinding", name);
    assert_eq!(binding.metadata.namespace.as_deref(), Some(namespace));
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.name, name);
    check_subjects(binding.subjects, sa, namespace);
}

fn check_subjects(
    subjects: Option<Vec<k8s_openapi::api::rbac::v1::Subject>>,
    sa: &str,
    namespace: &str,
) {
    let subjects = subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, sa);
    assert_eq!(subjects[0].namespace.as_deref(), Some(namespace));
    let account: Value = all_documents()
        .into_iter()
        .find(|d| d["kind"] == "ServiceAccount" && d["metadata"]["name"] == sa)
        .unwrap_or_else(|| panic!("ServiceAccount {sa}"));
    assert_eq!(account["metadata"]["namespace"], namespace);
}

/// The agent's writes are exactly its pod CIDR claims: Leases, created and updated (no
/// get, patch or delete), from claim.rs alone — so the control above has something to
/// check, and a new write elsewhere fails loudly.
#[test]
fn the_agent_writes_only_its_claims() {
    let access = api_access(&repo().join("crates/orchestration/agent/src"));
    assert_eq!(
        access.writes,
        BTreeMap::from([(
            "Lease".to_string(),
            ["create", "list", "update"].map(String::from).into()
        )])
    );
    assert!(access.reads.contains("Lease") && access.reads.contains("Node"));
    let claim =
        std::fs::read_to_string(repo().join("crates/orchestration/agent/src/claim.rs")).unwrap();
    assert!(
        claim.contains("Api::namespaced("),
        "claims live in one namespace"
    );
    assert!(!claim.contains("Api::all("));
}

#[test]
fn agent_role_is_what_the_agent_reads() {
    check_role(
        "podnet-agent",
        "crates/orchestration/agent/src",
        "podnet-agent",
        "podnet-system",
    );
}

#[test]
fn dns_role_is_what_the_dns_server_reads() {
    check_role(
        "podnet-dns",
        "crates/orchestration/dns/src",
        "podnet-dns",
        "kube-system",
    );
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn capabilities(c: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.clone())
        .unwrap_or_default();
    (
        caps.add.unwrap_or_default().into_iter().collect(),
        caps.drop.unwrap_or_default().into_iter().collect(),
    )
}

#[test]
fn agent_daemonset_runs_on_every_node_with_just_its_privileges() {
    let ds: DaemonSet = object("DaemonSet", "podnet-agent");
    assert_eq!(ds.metadata.namespace.as_deref(), Some("podnet-system"));
    let spec = pod_spec(&ds);
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(spec.service_account_name.as_deref(), Some("podnet-agent"));
    // Tolerates every taint: one toleration, operator Exists, no key, no effect.
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    assert_eq!(tolerations.len(), 1, "{tolerations:?}");
    let t = &tolerations[0];
    assert_eq!(t.operator.as_deref(), Some("Exists"));
    assert!(t.key.is_none() && t.effect.is_none() && t.value.is_none());

    assert_eq!(spec.containers.len(), 1);
    let agent = &spec.containers[0];
    assert_eq!(agent.image.as_deref(), Some(IMAGE));
    let sc = agent.security_context.clone().unwrap();
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.run_as_user, Some(0));
    let (add, drop) = capabilities(agent);
    assert_eq!(add, set(&["NET_ADMIN", "SYS_ADMIN"]));
    assert_eq!(drop, set(&["ALL"]));

    // NODE_NAME from the downward API.
    let env = agent.env.clone().unwrap_or_default();
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
    // The settings: the whole ConfigMap.
    let from = agent.env_from.clone().unwrap_or_default();
    assert_eq!(from.len(), 1);
    assert_eq!(
        from[0].config_map_ref.as_ref().map(|c| c.name.as_str()),
        Some("podnet-agent-config")
    );

    // Readiness: /healthz on the named metrics port, the port the agent listens on.
    let args = agent.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("agent"));
    assert!(args.contains(&"--metrics-addr=0.0.0.0:9102".to_string()));
    let ports = agent.ports.clone().unwrap_or_default();
    let metrics = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(metrics.container_port, 9102);
    let probe = agent
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("an HTTP readiness probe");
    assert_eq!(probe.path.as_deref(), Some("/healthz"));
    assert_eq!(
        probe.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into())
    );

    // Host paths: exactly the CNI binary and config directories.
    let host_paths: BTreeSet<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    assert_eq!(host_paths, set(&["/opt/cni/bin", "/etc/cni/net.d"]));

    // The init container installs the plugin by copy-then-rename, with no privileges.
    let init = spec.init_containers.clone().unwrap_or_default();
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].image.as_deref(), Some(IMAGE));
    // The image is the one binary (no shell): its own `install-cni` does the copy, into
    // the mounted node directory (tests/podman/run.sh runs exactly this with podman).
    assert_eq!(init[0].command, None);
    assert_eq!(
        init[0].args.clone().unwrap_or_default(),
        ["install-cni", "/host/opt/cni/bin"]
    );
    let mounts: Vec<(String, String)> = init[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect();
    assert_eq!(
        mounts,
        [("cni-bin".to_string(), "/host/opt/cni/bin".to_string())]
    );
    let (add, drop) = capabilities(&init[0]);
    assert!(add.is_empty());
    assert_eq!(drop, set(&["ALL"]));
}

/// The environment variables `podnet agent --help` says it reads.
fn agent_env_names() -> BTreeSet<String> {
    let out = Command::new(PODNET)
        .args(["agent", "--help"])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    help.match_indices("[env: ")
        .map(|(i, m)| {
            help[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect()
        })
        .collect()
}

fn config_data() -> BTreeMap<String, String> {
    let cm: ConfigMap = object("ConfigMap", "podnet-agent-config");
    assert_eq!(cm.metadata.namespace.as_deref(), Some("podnet-system"));
    cm.data.unwrap_or_default()
}

#[test]
fn config_keys_are_the_agents_settings() {
    let mut settings = agent_env_names();
    assert!(settings.remove("NODE_NAME"), "NODE_NAME comes from the pod");
    assert!(settings.len() >= 7, "{settings:?}");
    let keys: BTreeSet<String> = config_data().into_keys().collect();
    assert_eq!(keys, settings);
}

/// `podnet agent` with only `env` and a kubeconfig that does not exist: it parses every
/// setting, then fails at reading the kubeconfig, before it touches anything.
fn agent_with(env: &BTreeMap<String, String>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(PODNET)
        .arg("agent")
        .arg("--kubeconfig")
        .arg(dir.path().join("missing"))
        .env_clear()
        .envs(env)
        .env("NODE_NAME", "node-1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn config_values_parse() {
    let data = config_data();
    let err = agent_with(&data);
    assert!(err.contains("read kubeconfig"), "{err}");
    // The control: each key does reach the agent (a bad value is refused by name).
    for key in data.keys() {
        let mut bad = data.clone();
        bad.insert(key.clone(), "bogus".into());
        let err = agent_with(&bad);
        assert!(
            err.contains("invalid value 'bogus'") && !err.contains("read kubeconfig"),
            "{key}: {err}"
        );
    }
    let mut everything = data.clone();
    everything.insert("PODNET_CLUSTER_CIDR".into(), "0.0.0.0/0".into());
    let err = agent_with(&everything);
    assert!(err.contains("no address outside the cluster"), "{err}");
}

#[test]
fn dns_deployment_and_service() {
    let d: Deployment = object("Deployment", "podnet-dns");
    assert_eq!(d.metadata.namespace.as_deref(), Some("kube-system"));
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let template = &spec.template;
    let labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
    let pod = template.spec.as_ref().unwrap();
    assert_eq!(pod.dns_policy.as_deref(), Some("Default"));
    assert_eq!(pod.service_account_name.as_deref(), Some("podnet-dns"));
    assert_ne!(pod.host_network, Some(true));
    let anti = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .expect("anti-affinity");
    assert!(
        anti.required_during_scheduling_ignored_during_execution
            .is_none()
    );
    let preferred = anti
        .preferred_during_scheduling_ignored_during_execution
        .clone()
        .unwrap();
    assert_eq!(
        preferred[0].pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    let psc = pod.security_context.clone().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert!(psc.run_as_user.is_some_and(|u| u != 0));
    // Port 53 without a capability: the pod's own unprivileged port floor.
    let sysctls = psc.sysctls.unwrap_or_default();
    assert!(
        sysctls
            .iter()
            .any(|s| s.name == "net.ipv4.ip_unprivileged_port_start" && s.value == "53")
    );
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(IMAGE));
    let sc = c.security_context.clone().unwrap();
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let (add, drop) = capabilities(c);
    assert!(add.is_empty(), "{add:?}");
    assert_eq!(drop, set(&["ALL"]));
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("dns"));
    for flag in [
        "--listen=0.0.0.0:53",
        "--zone=cluster.local",
        "--metrics-addr=0.0.0.0:9153",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag}: {args:?}");
    }
    // Every argument parses: `podnet dns` gets as far as reading the kubeconfig.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(PODNET)
        .args(&args)
        .arg("--kubeconfig")
        .arg(dir.path().join("missing"))
        .env_clear()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("read kubeconfig"),
        "{err}"
    );
    let probe = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/healthz"));

    let svc: Service = object("Service", "kube-dns");
    assert_eq!(svc.metadata.namespace.as_deref(), Some("kube-system"));
    let s = svc.spec.unwrap();
    assert_eq!(s.cluster_ip.as_deref(), Some("10.96.0.10"));
    for (k, v) in s.selector.clone().unwrap() {
        assert_eq!(labels.get(&k), Some(&v), "the Service selects the pods");
    }
    let ports: BTreeSet<(String, i32, String)> = s
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port, p.protocol.unwrap()))
        .collect();
    assert_eq!(
        ports,
        [
            ("dns", 53, "UDP"),
            ("dns-tcp", 53, "TCP"),
            ("metrics", 9153, "TCP")
        ]
        .map(|(n, p, t)| (n.to_string(), p, t.to_string()))
        .into()
    );
}

#[test]
fn install_cni_copies_the_binary_atomically() {
    let dir = tempfile::tempdir().unwrap();
    // An older plugin in place: replaced whole.
    std::fs::write(dir.path().join("podnet"), b"old plugin").unwrap();
    let out = Command::new(common::PODNET)
        .args(["install-cni"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let installed = dir.path().join("podnet");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(common::PODNET).unwrap()
    );
    let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["podnet"], "no temporary file left");
    // The installed copy is the plugin.
    let mut child = Command::new(&installed)
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"cniVersion": "1.1.0"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.1.0", "{v}");
    // A directory that is not there: a clear error, nothing written.
    let out = Command::new(common::PODNET)
        .args(["install-cni"])
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a directory"), "{err}");
}

// The agent as deployed: how it reaches the API server.

mod common;

/// A TLS API server stand-in (Python's ssl): logs each request's line and Authorization
/// header, answers 403 (so the agent never gets a list and never programs anything).
const TLS_SERVER: &str = r#"
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(16)
print("port", srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    try:
        tls = ctx.wrap_socket(conn, server_side=True)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = tls.recv(4096)
            if not chunk:
                break
            head += chunk
        lines = head.decode(errors="replace").split("\r\n")
        auth = [l for l in lines if l.lower().startswith("authorization:")]
        print("request", lines[0], "|", auth[0] if auth else "no authorization", flush=True)
        body = b'{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403}'
        tls.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        tls.close()
    except Exception as e:
        print("error", e, flush=True)
"#;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it: `ca.crt`, `srv.crt`,
/// `srv.key` in `dir`.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=kube-apiserver",
    ]);
    openssl(dir, &csr);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
}

/// Child processes killed on drop (also when the test fails).
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The lines a child prints, as they come.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first request line carrying `token`, within 20 s (connections the client drops
/// before sending a request, and requests of an agent stopped earlier, are skipped).
/// `log`: the agent's output, for the failure message.
fn request_with(rx: &std::sync::mpsc::Receiver<String>, token: &str, log: &Path) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with("request ") && l.contains(token) => return l,
            Ok(l) => seen.push(l),
            Err(e) => panic!(
                "no request with {token} reached the TLS server ({e}); it saw {seen:?}; \
                 the agent said:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
}

/// In a namespace of its own: `podnet agent` with no API option finds the service
/// account's token and CA where a pod has them and speaks HTTPS with the bearer token to
/// KUBERNETES_SERVICE_HOST:PORT; with `--kubeconfig` it uses the file's server, CA and
/// token. The stand-in server refuses every request, so the agent never syncs.
#[test]
fn agent_reaches_the_api_in_cluster_and_by_kubeconfig() {
    use std::process::Stdio;
    let node = common::Node::new();
    let work = node.work.path();
    certificates(work);
    let netns = format!("--net={}", node.node.display());
    let status = Command::new("nsenter")
        .args([&netns, "ip", "link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(work.join("server.py"), TLS_SERVER).unwrap();
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new("nsenter")
            .arg(&netns)
            .arg("python3")
            .arg(work.join("server.py"))
            .arg(work.join("srv.crt"))
            .arg(work.join("srv.key"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let server = lines_of(&mut children.0[0]);
    let first = server
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let port = first.strip_prefix("port ").expect("port line").to_string();

    // In-cluster: the service account's files appear where a pod has them, on a tmpfs in
    // a private mount namespace (the host's /run is untouched).
    let sa = work.join("serviceaccount");
    std::fs::create_dir(&sa).unwrap();
    std::fs::copy(work.join("ca.crt"), sa.join("ca.crt")).unwrap();
    std::fs::write(sa.join("token"), "sa-token-1234").unwrap();
    std::fs::write(sa.join("namespace"), "podnet-system").unwrap();
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /run; \
         mkdir -p /run/secrets/kubernetes.io/serviceaccount; \
         cp {sa}/ca.crt {sa}/token {sa}/namespace /run/secrets/kubernetes.io/serviceaccount/; \
         exec {PODNET} agent --cni-conf-dir {conf} --metrics-addr 127.0.0.1:9102",
        sa = sa.display(),
        conf = work.join("net.d").display(),
    );
    children.0.push(
        Command::new("nsenter")
            .arg(&netns)
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", work.join("no-home"))
            .env("NODE_NAME", "node-1")
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", &port)
            .stdout(std::fs::File::create(work.join("agent-1.log")).unwrap())
            .stderr(std::fs::File::create(work.join("agent-1.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    // The service account's token, over TLS verified with its CA.
    let request = request_with(&server, "Bearer sa-token-1234", &work.join("agent-1.log"));
    assert!(request.contains("GET /api"), "{request}");
    let _ = children.0[1].kill();
    let _ = children.0[1].wait();

    // A kubeconfig: its server, CA and token.
    let ca = std::fs::read(work.join("ca.crt")).unwrap();
    let kubeconfig = work.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: k, cluster: {{server: \"https://127.0.0.1:{port}\", certificate-authority-data: {}}}}}]\n\
             users: [{{name: u, user: {{token: kc-token-5678}}}}]\n\
             contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n",
            base64(&ca)
        ),
    )
    .unwrap();
    children.0.push(
        Command::new("nsenter")
            .arg(&netns)
            .arg(PODNET)
            .arg("agent")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cni-conf-dir")
            .arg(work.join("net.d"))
            .args(["--metrics-addr", "127.0.0.1:9102", "--node-name", "node-1"])
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(std::fs::File::create(work.join("agent-2.log")).unwrap())
            .stderr(std::fs::File::create(work.join("agent-2.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let request = request_with(&server, "Bearer kc-token-5678", &work.join("agent-2.log"));
    assert!(request.contains("GET /api"), "{request}");
    drop(children);
    // Refused by the stand-in, the agent never synced: no CNI config was written.
    assert!(!work.join("net.d").exists());
}

/// Standard base64 (RFC 4648, padded).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// One HTTP/1.1 request to 127.0.0.1:`port` inside the namespace at `ns`: (status, body),
/// or `None` while nothing listens there.
fn http_in(ns: &Path, port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let fd = podnet_netlink::netns::open(ns).unwrap();
    podnet_netlink::netns::run_in(&fd, || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    })
    .unwrap()
}

/// Polls `f` every 100 ms until it is true or `secs` pass.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    f()
}

/// The DaemonSet's capabilities are enough and none is superfluous: in a namespace of its
/// own, against the lab's control plane, the agent runs as root with only those
/// capabilities (`setpriv --bounding-set`, no others, like the container) and programs its
/// node (healthy, conflist written); without any one of them it never gets healthy.
#[test]
fn agent_runs_with_exactly_the_daemonsets_capabilities() {
    use std::process::Stdio;
    let ds: DaemonSet = object("DaemonSet", "podnet-agent");
    let (caps, _) = capabilities(&pod_spec(&ds).containers[0]);
    assert!(!caps.is_empty());

    let node = common::Node::new();
    let work = node.work.path();
    let netns = format!("--net={}", node.node.display());
    let status = Command::new("nsenter")
        .args([&netns, "ip", "link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(status.success());
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new("nsenter")
            .arg(&netns)
            .args([PODNET, "apiserver", "--listen", "127.0.0.1:6443"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        eventually(10, || http_in(&node.node, 6443, "GET", "/api/v1/nodes", "")
            .is_some()),
        "the API server did not come up"
    );
    let created = http_in(
        &node.node,
        6443,
        "POST",
        "/api/v1/nodes",
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-1"},
            "status":{"addresses":[{"type":"InternalIP","address":"127.0.0.1"}]}}"#,
    );
    assert!(
        matches!(&created, Some((201 | 200, _))),
        "create node: {created:?}"
    );

    // Runs the agent with `bounding` as its only capabilities; true once it is healthy.
    let run = |name: &str, bounding: &BTreeSet<String>, wait: u64| -> bool {
        let set: Vec<String> = bounding
            .iter()
            .map(|c| format!("+{}", c.to_ascii_lowercase()))
            .collect();
        let bounding = format!("-all,{}", set.join(","));
        let conf = work.join(format!("net.d-{name}"));
        let mut agent = Command::new("nsenter")
            .arg(&netns)
            .args([
                "setpriv",
                "--bounding-set",
                &bounding,
                "--inh-caps",
                "-all",
                "--",
            ])
            .args([PODNET, "agent", "--server", "http://127.0.0.1:6443"])
            .args(["--node-name", "node-1", "--metrics-addr", "127.0.0.1:9102"])
            .arg("--cni-conf-dir")
            .arg(&conf)
            .stdout(std::fs::File::create(work.join(format!("{name}.log"))).unwrap())
            .stderr(std::fs::File::create(work.join(format!("{name}.err"))).unwrap())
            .spawn()
            .unwrap();
        let healthy = eventually(wait, || {
            matches!(
                http_in(&node.node, 9102, "GET", "/healthz", ""),
                Some((200, _))
            )
        });
        let _ = agent.kill();
        let _ = agent.wait();
        healthy && conf.join("10-podnet.conflist").exists()
    };
    // Without one capability first (so that nothing the full set programmed helps them).
    for cap in &caps {
        let mut fewer = caps.clone();
        fewer.remove(cap);
        assert!(
            !run(&format!("without-{cap}"), &fewer, 4),
            "the agent got healthy without {cap}: drop it from the DaemonSet"
        );
    }
    assert!(
        run("all", &caps, 15),
        "the agent is not healthy with {caps:?}:\n{}",
        std::fs::read_to_string(work.join("all.log")).unwrap_or_default()
    );
}
