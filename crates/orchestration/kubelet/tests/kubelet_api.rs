//! The kubelet loop against the lab's API server (podnet-apiserver on loopback), with
//! `hostNetwork` pods only (no namespaces, no CNI, nothing touches the network): node
//! registration, NetworkNotReady for a pod network pod without a CNI config, a pod run to
//! Running, adoption across a kubelet restart (same pid), teardown on delete.

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
