//! The kubelet hands pods the in-cluster configuration (root: containers get a mount
//! namespace): the `kubernetes` Service's variables from the API server that publishes it,
//! and the service account's `token`, `ca.crt`, `namespace` at
//! /var/run/secrets/kubernetes.io/serviceaccount/, read-only — unless the pod says
//! `automountServiceAccountToken: false`. `hostNetwork` pods, so nothing touches the network.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use std::time::{Duration, Instant};

const SA: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn pod(name: &str, automount: Option<bool>) -> Pod {
    let script = format!(
        "echo \"$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT\"; \
         cat {SA}/namespace {SA}/token {SA}/ca.crt 2>/dev/null; echo; \
         if [ -e {SA}/token ]; then touch {SA}/x 2>/dev/null && echo writable; fi; \
         exec sleep 300"
    );
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": "sa-node",
            "hostNetwork": true,
            "automountServiceAccountToken": automount,
            "containers": [{"name": "main", "image": "busybox", "command": ["/bin/sh", "-c", script]}]
        }
    }))
    .unwrap()
}

async fn log_of(pods: &Api<Pod>, state: &std::path::Path, name: &str) -> String {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(p) = pods.get(name).await
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        {
            let uid = p.metadata.uid.unwrap();
            let log = state.join(format!("pods/{uid}/main.log"));
            // The script's output ends with the line after the files.
            if let Ok(text) = std::fs::read_to_string(&log)
                && text.lines().count() >= 2
            {
                return text;
            }
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for {name}'s output"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_the_kubernetes_service_and_their_service_account() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = podnet_apiserver::Config {
        advertise: Some(addr),
        ..Default::default()
    };
    tokio::spawn(podnet_apiserver::serve(listener, config));
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("token"), "pod-token").unwrap();
    std::fs::write(tmp.path().join("ca.crt"), "CA").unwrap();
    let cfg = podnet_kubelet::Config {
        node_name: "sa-node".into(),
        node_ip: "127.0.0.1".parse().unwrap(),
        cni_conf_dir: tmp.path().join("net.d"),
        cni_bin_dirs: vec![],
        cni_cache_dir: tmp.path().join("cni"),
        state_dir: tmp.path().join("state"),
        netns_prefix: format!("pnsa{}", std::process::id()),
        echo_exe: "/bin/false".into(),
        cluster_dns: vec![],
        cluster_domain: "cluster.local".into(),
        node_resolv_conf: Default::default(),
        service_account: Some(podnet_kubelet::ServiceAccount {
            token_file: tmp.path().join("token"),
            ca_file: tmp.path().join("ca.crt"),
        }),
    };
    let kubelet = tokio::spawn(podnet_kubelet::run(cfg, client.clone()));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, automount) in [("mounted", None), ("opted-out", Some(false))] {
        pods.create(&PostParams::default(), &pod(name, automount))
            .await
            .unwrap();
    }
    let state = tmp.path().join("state");
    assert_eq!(
        log_of(&pods, &state, "mounted").await,
        "10.96.0.1:443\ndefaultpod-tokenCA\n"
    );
    assert_eq!(
        log_of(&pods, &state, "opted-out").await,
        "10.96.0.1:443\n\n"
    );
    let mut uids = Vec::new();
    for name in ["mounted", "opted-out"] {
        uids.push(pods.get(name).await.unwrap().metadata.uid.unwrap());
        pods.delete(name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
    // The kubelet stops the containers and drops their records before it goes: pods
    // outlive a kubelet that is simply stopped, and nothing may be left running.
    let until = Instant::now() + Duration::from_secs(20);
    while uids.iter().any(|u| state.join("pods").join(u).exists()) {
        assert!(
            Instant::now() < until,
            "the kubelet did not tear the pods down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kubelet.abort();
    // The node never saw the pod's files.
    assert!(!std::path::Path::new(SA).join("token").exists());
}
