//! Apply (files): the lab's credentials, made by `lab up` before the API server starts —
//! a CA, the API server's serving certificate (rcgen, ECDSA P-256), static bearer tokens
//! and one kubeconfig per client. Invariant: every lab role reaches the API over HTTPS,
//! verifying the server against the lab's CA and presenting a token of its own; pods get
//! the service account's token and the CA from their kubelet (in-cluster configuration).
//!
//! Layout under the lab's directory: `pki/ca.crt`, `pki/apiserver.{crt,key}`,
//! `pki/tokens.csv` (the API server's `--token-file`), `pki/serviceaccount.token` (what
//! kubelets mount into pods), `kubeconfig` (the admin's: `lab kubectl`, `lab apply`, …),
//! `nodes/<node>/{kubelet,agent}.kubeconfig`. The CA's key is never written: nothing signs
//! after `lab up`.

use super::topology::{CONTROL_PLANE_IP, SERVICE_CIDR, Topology};
use anyhow::{Context, Result};
use base64::Engine;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The admin's user in the token file (kubeadm's `kubernetes-admin`).
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The user the pods' token authenticates.
pub const POD_USER: &str = "system:serviceaccount:default:default";

/// One client of the API: the user its token authenticates and where its kubeconfig goes
/// (relative to the lab's directory; `None` for the pods' token, which is a bare file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPlan {
    pub user: String,
    pub groups: &'static str,
    pub kubeconfig: Option<PathBuf>,
}

/// Pure: the lab's API clients — the admin, each node's kubelet and agent, the pods.
pub fn plan_clients(t: &Topology) -> Vec<ClientPlan> {
    let mut out = vec![ClientPlan {
        user: ADMIN_USER.into(),
        groups: "system:masters",
        kubeconfig: Some("kubeconfig".into()),
    }];
    for m in &t.workers {
        let dir = Path::new("nodes").join(&m.name);
        out.push(ClientPlan {
            user: format!("system:node:{}", m.name),
            groups: "system:nodes",
            kubeconfig: Some(dir.join("kubelet.kubeconfig")),
        });
        out.push(ClientPlan {
            user: format!(
                "system:serviceaccount:podnet-system:podnet-agent-{}",
                m.name
            ),
            groups: "system:serviceaccounts",
            kubeconfig: Some(dir.join("agent.kubeconfig")),
        });
    }
    out.push(ClientPlan {
        user: POD_USER.into(),
        groups: "system:serviceaccounts",
        kubeconfig: None,
    });
    out
}

/// The `kubernetes` Service's cluster IP: the first address of the service range, as the
/// API server allocates it (`podnet apiserver --advertise-address`).
pub fn kubernetes_service_ip() -> IpAddr {
    let range: ipnet::IpNet = SERVICE_CIDR.parse().expect("literal CIDR");
    range.hosts().next().expect("a service range has addresses")
}

/// Pure: the names the serving certificate carries — what kube-apiserver's certificate
/// carries (kubeadm): the advertised address, the `kubernetes` Service's cluster IP and
/// DNS names, and loopback.
pub fn plan_serving_names() -> Vec<String> {
    let mut names = vec![
        CONTROL_PLANE_IP.to_string(),
        kubernetes_service_ip().to_string(),
        "127.0.0.1".into(),
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
    ];
    names.push(format!(
        "kubernetes.default.svc.{}",
        super::dns::CLUSTER_DOMAIN
    ));
    names
}

/// Pure: the API server's static token file.
pub fn render_token_file(tokens: &[(String, &ClientPlan)]) -> String {
    tokens
        .iter()
        .enumerate()
        .map(|(i, (token, c))| format!("{token},{},{},\"{}\"\n", c.user, i + 1, c.groups))
        .collect()
}

/// Pure: a kubeconfig for the lab's API over HTTPS: the CA inline, a bearer token.
pub fn render_kubeconfig(t: &Topology, ca_pem: &str, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {lab}\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\ncontexts:\n- name: {lab}\n  context:\n    cluster: {lab}\n    user: {user:?}\n    namespace: default\nusers:\n- name: {user:?}\n  user:\n    token: {token}\ncurrent-context: {lab}\n",
        lab = t.lab,
        url = t.api_url(),
        ca = base64::engine::general_purpose::STANDARD.encode(ca_pem),
    )
}

/// Where the credentials of a lab are.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn at(lab_dir: &Path) -> Pki {
        Pki {
            dir: lab_dir.join("pki"),
        }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn serving_cert(&self) -> PathBuf {
        self.dir.join("apiserver.crt")
    }
    pub fn serving_key(&self) -> PathBuf {
        self.dir.join("apiserver.key")
    }
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("tokens.csv")
    }
    pub fn pod_token(&self) -> PathBuf {
        self.dir.join("serviceaccount.token")
    }
}

/// Makes the CA, the serving certificate, a token per client and the kubeconfigs.
pub fn create(t: &Topology, lab_dir: &Path) -> Result<Pki> {
    let pki = Pki::at(lab_dir);
    std::fs::create_dir_all(&pki.dir).with_context(|| format!("creating {}", pki.dir.display()))?;

    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("podnet-lab-{}-ca", t.lab),
    );
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)
        .context("the lab's CA")?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(plan_serving_names())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &ca)
        .context("the API server's certificate")?;
    let ca_pem = ca.pem();
    write(&pki.ca_cert(), ca_pem.as_bytes(), false)?;
    write(&pki.serving_cert(), cert.pem().as_bytes(), false)?;
    write(&pki.serving_key(), key.serialize_pem().as_bytes(), true)?;

    let clients = plan_clients(t);
    let tokens: Vec<(String, &ClientPlan)> = clients
        .iter()
        .map(|c| Ok((random_token()?, c)))
        .collect::<Result<_>>()?;
    write(
        &pki.token_file(),
        render_token_file(&tokens).as_bytes(),
        true,
    )?;
    for (token, c) in &tokens {
        match &c.kubeconfig {
            Some(rel) => {
                let path = lab_dir.join(rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let text = render_kubeconfig(t, &ca_pem, &c.user, token);
                write(&path, text.as_bytes(), true)?;
            }
            None => write(&pki.pod_token(), token.as_bytes(), true)?,
        }
    }
    Ok(pki)
}

/// 128 random bits as 32 hex digits.
fn random_token() -> Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Writes a file, readable by its owner only when `secret`.
fn write(path: &Path, content: &[u8], secret: bool) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(content)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_names_and_token_file() {
        let t = super::super::topology::plan_topology("t", 2).unwrap();
        let clients = plan_clients(&t);
        let users: Vec<&str> = clients.iter().map(|c| c.user.as_str()).collect();
        assert_eq!(
            users,
            [
                ADMIN_USER,
                "system:node:node-1",
                "system:serviceaccount:podnet-system:podnet-agent-node-1",
                "system:node:node-2",
                "system:serviceaccount:podnet-system:podnet-agent-node-2",
                POD_USER,
            ]
        );
        assert_eq!(
            clients[3].kubeconfig.as_deref(),
            Some(Path::new("nodes/node-2/kubelet.kubeconfig"))
        );
        let names = plan_serving_names();
        for n in ["172.18.0.2", "10.96.0.1", "kubernetes.default.svc"] {
            assert!(names.contains(&n.to_string()), "{names:?}");
        }
        let file = render_token_file(&[("abc".into(), &clients[0]), ("def".into(), &clients[1])]);
        assert_eq!(
            file,
            "abc,kubernetes-admin,1,\"system:masters\"\ndef,system:node:node-1,2,\"system:nodes\"\n"
        );
        assert_eq!(
            podnet_apiserver::Tokens::parse(&file)
                .unwrap()
                .authenticate(Some(&"Bearer def".parse().unwrap())),
            Some("system:node:node-1")
        );
    }

    #[test]
    fn kubeconfig_reads_back_with_ca_and_token() {
        let t = super::super::topology::plan_topology("t", 1).unwrap();
        let text = render_kubeconfig(
            &t,
            "-----BEGIN CERTIFICATE-----\n",
            "system:node:node-1",
            "tok",
        );
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://172.18.0.2:6443"));
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==")
        );
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(kc.auth_infos[0].name, "system:node:node-1");
        assert!(user.token.is_some());
        assert_eq!(kc.current_context.as_deref(), Some("t"));
    }
}
