//! Orchestration tests: `serve_tls` with a static token file — the real `kube::Client`
//! over HTTPS (rustls), verifying the server against a CA made here with rcgen.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, Error};

const ADMIN_TOKEN: &str = "admin-0123456789abcdef";

struct Server {
    port: u16,
    dir: tempfile::TempDir,
}

/// A CA, a serving certificate for 127.0.0.1 and `localhost` signed by it, a token file;
/// then the server on 127.0.0.1.
async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test-ca");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("ca.crt", &ca.pem());
    write("server.crt", &cert.pem());
    write("server.key", &key.serialize_pem());
    write(
        "tokens",
        &format!("{ADMIN_TOKEN},admin,1,\"system:masters\"\n"),
    );

    let tls = podnet_apiserver::tls_server_config(
        &dir.path().join("server.crt"),
        &dir.path().join("server.key"),
    )
    .unwrap();
    let config = podnet_apiserver::Config {
        tokens: Some(podnet_apiserver::Tokens::read(&dir.path().join("tokens")).unwrap()),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(podnet_apiserver::serve_tls(listener, config, tls));
    Server { port, dir }
}

/// A client from a kubeconfig naming the CA file and, when given, a token.
async fn client(s: &Server, server: &str, token: Option<&str>) -> Client {
    let ca = s.dir.path().join("ca.crt");
    let user = match token {
        Some(t) => format!("{{token: {t}}}"),
        None => "{}".into(),
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\nusers:\n- name: u\n  user: {user}\ncurrent-context: c\n",
        ca = ca.display()
    );
    let kc = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

fn url(s: &Server) -> String {
    format!("https://127.0.0.1:{}", s.port)
}

fn unauthorized(e: Error) {
    match e {
        Error::Api(s) => {
            assert_eq!(s.code, 401, "{s:?}");
            assert_eq!(s.reason, "Unauthorized", "{s:?}");
        }
        other => panic!("expected 401 Unauthorized, got {other:?}"),
    }
}

#[tokio::test]
async fn requests_without_a_known_token_get_401() {
    let s = start().await;
    let ns = |c: Client| Api::<Namespace>::all(c);
    unauthorized(
        ns(client(&s, &url(&s), None).await)
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    let wrong = client(&s, &url(&s), Some("not-a-token")).await;
    unauthorized(ns(wrong.clone()).get("default").await.unwrap_err());
    unauthorized(wrong.apiserver_version().await.unwrap_err());
    // Health probes are open, as kube-apiserver's are to anonymous clients.
    let health = wrong
        .request_text(http::Request::get("/healthz").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(health, "ok");
}

#[tokio::test]
async fn the_right_token_over_tls_is_served() {
    let s = start().await;
    let c = client(&s, &url(&s), Some(ADMIN_TOKEN)).await;
    let ns = Api::<Namespace>::all(c.clone());
    let names: Vec<String> = ns
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_string()), "{names:?}");
    let created = ns
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "t"}})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.name.as_deref(), Some("t"));
    // The certificate names `localhost` too.
    let by_name = client(
        &s,
        &format!("https://localhost:{}", s.port),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert!(by_name.apiserver_version().await.is_ok());
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let s = start().await;
    // Another CA's certificate in place of the server's.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(s.dir.path().join("ca.crt"), other.cert.pem()).unwrap();
    let c = client(&s, &url(&s), Some(ADMIN_TOKEN)).await;
    let e = c.apiserver_version().await.unwrap_err();
    assert!(!matches!(e, Error::Api(_)), "{e:?}");
    // Plain HTTP to the HTTPS port is no way in either.
    let plain = Client::try_from(kube::Config::new(
        format!("http://127.0.0.1:{}", s.port).parse().unwrap(),
    ))
    .unwrap();
    assert!(plain.apiserver_version().await.is_err());
}
