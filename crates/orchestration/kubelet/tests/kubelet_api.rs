//! The kubelet loop against the lab's API server (podnet-apiserver on loopback), with
//! `hostNetwork` pods only (no namespaces, no CNI, nothing touches the network): node
//! registration, NetworkNotReady for a pod network pod without a CNI config, a pod run to
//! Running, adoption across a kubelet restart (same pid), teardown on delete; graceful
//! deletion (SIGTERM, Ready while running, SIGKILL at the grace).

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use std::time::{Duration, Instant};

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod(name: &str, host_network: bool) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": "kt-node",
            "hostNetwork": host_network,
            "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "300"]}]
        }
    }))
    .unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_survive_a_restart_and_go_away() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(podnet_apiserver::serve(listener, Default::default()));
    let kcfg = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(kcfg).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let cfg = podnet_kubelet::Config {
        node_name: "kt-node".into(),
        node_ip: "127.0.0.1".parse().unwrap(),
        cni_conf_dir: tmp.path().join("net.d"),
        cni_bin_dirs: vec!["/usr/lib/cni".into()],
        cni_cache_dir: tmp.path().join("cni"),
        state_dir: tmp.path().join("state"),
        netns_prefix: format!("pnkt{}", std::process::id()),
        echo_exe: "/bin/false".into(),
        cluster_dns: vec![],
        cluster_domain: "cluster.local".into(),
        node_resolv_conf: Default::default(),
        service_account: None,
    };
    let kubelet = tokio::spawn(podnet_kubelet::run(cfg.clone(), client.clone()));

    let nodes: Api<Node> = Api::all(client.clone());
    let node = eventually("node", || async {
        nodes.get_opt("kt-node").await.ok().flatten()
    })
    .await;
    let ready = node.status.unwrap().conditions.unwrap();
    assert!(
        ready
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("host", true))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("net", false))
        .await
        .unwrap();

    let (pid, uid) = eventually("host pod running", || async {
        let p = pods.get("host").await.ok()?;
        let st = p.status?;
        (st.phase.as_deref() == Some("Running")).then_some(())?;
        assert_eq!(st.pod_ip.as_deref(), Some("127.0.0.1"));
        let cid = st.container_statuses?[0].container_id.clone()?;
        let pid: u32 = cid.strip_prefix("podnet://")?.parse().ok()?;
        Some((pid, p.metadata.uid?))
    })
    .await;
    assert!(alive(pid));
    assert!(
        tmp.path()
            .join(format!("state/pods/{uid}/state.json"))
            .is_file()
    );

    eventually("NetworkNotReady", || async {
        let st = pods.get("net").await.ok()?.status?;
        let ready = st.conditions?.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.reason.as_deref() == Some("NetworkNotReady")).then_some(())
    })
    .await;

    // Restart: the process stays and is adopted.
    kubelet.abort();
    let _ = kubelet.await;
    let kubelet = tokio::spawn(podnet_kubelet::run(cfg.clone(), client.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(alive(pid), "the restart killed the container");
    let st = pods.get("host").await.unwrap().status.unwrap();
    assert_eq!(
        st.container_statuses.unwrap()[0].container_id.as_deref(),
        Some(format!("podnet://{pid}").as_str())
    );

    // Delete: the process and the record go.
    pods.delete("host", &DeleteParams::default()).await.unwrap();
    eventually("teardown", || async {
        (!alive(pid) && !tmp.path().join(format!("state/pods/{uid}")).exists()).then_some(())
    })
    .await;
    pods.delete("net", &DeleteParams::default()).await.unwrap();
    kubelet.abort();
}

/// Graceful deletion: a pod that exits on SIGTERM goes at once, long before its grace; a pod
/// that ignores SIGTERM stays (Ready, its process alive) until its grace is over, then is
/// killed and deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_deletion_sigterm_then_sigkill_at_the_grace() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(podnet_apiserver::serve(listener, Default::default()));
    let kcfg = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(kcfg).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = podnet_kubelet::Config {
        node_name: "kt-grace".into(),
        node_ip: "127.0.0.1".parse().unwrap(),
        cni_conf_dir: tmp.path().join("net.d"),
        cni_bin_dirs: vec!["/usr/lib/cni".into()],
        cni_cache_dir: tmp.path().join("cni"),
        state_dir: tmp.path().join("state"),
        netns_prefix: format!("pnkg{}", std::process::id()),
        echo_exe: "/bin/false".into(),
        cluster_dns: vec![],
        cluster_domain: "cluster.local".into(),
        node_resolv_conf: Default::default(),
        service_account: None,
    };
    let kubelet = tokio::spawn(podnet_kubelet::run(cfg, client.clone()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let shell_pod = |name: &str, script: &str, grace: i64| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": "kt-grace", "hostNetwork": true,
                     "terminationGracePeriodSeconds": grace,
                     "containers": [{"name": "main", "image": "busybox",
                                     "command": ["/bin/sh", "-c", script]}]}
        }))
        .unwrap()
    };
    let polite = shell_pod(
        "polite",
        "trap 'exit 0' TERM; while :; do sleep 0.2; done",
        30,
    );
    let stubborn = shell_pod("stubborn", "trap '' TERM; while :; do sleep 0.2; done", 3);
    for p in [&polite, &stubborn] {
        pods.create(&PostParams::default(), p).await.unwrap();
    }
    let running = |name: &'static str| {
        let pods = pods.clone();
        async move {
            eventually("pod running", || async {
                let st = pods.get(name).await.ok()?.status?;
                (st.phase.as_deref() == Some("Running")).then_some(())?;
                let cid = st.container_statuses?[0].container_id.clone()?;
                cid.strip_prefix("podnet://")?.parse::<u32>().ok()
            })
            .await
        }
    };
    let (polite_pid, stubborn_pid) = (running("polite").await, running("stubborn").await);
    let ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };

    // The polite one exits on SIGTERM: deleted in well under its 30 s grace.
    let t = Instant::now();
    let marked = pods
        .delete("polite", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("graceful: the pod stays for now");
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    eventually("polite deleted", || async {
        pods.get_opt("polite")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(!alive(polite_pid));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // The stubborn one ignores SIGTERM: it keeps running and Ready through its 3 s grace,
    // then gets SIGKILL and is deleted.
    let t = Instant::now();
    pods.delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let p = pods.get("stubborn").await.unwrap();
    assert!(p.metadata.deletion_timestamp.is_some());
    assert!(ready(&p), "Ready while its container runs: {:?}", p.status);
    assert!(alive(stubborn_pid), "killed before the grace was over");
    eventually("stubborn deleted", || async {
        pods.get_opt("stubborn")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(!alive(stubborn_pid));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "{took:?}"
    );
    kubelet.abort();
}
