//! Orchestration tests: the real `kube::Client` against `serve` on 127.0.0.1.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Error};
use serde_json::json;

async fn start() -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(podnet_apiserver::serve(
        listener,
        podnet_apiserver::Config::default(),
    ));
    let cfg = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    Client::try_from(cfg).unwrap()
}

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn node(name: &str) -> Node {
    from(
        json!({"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    )
}

fn pod(name: &str, app: &str) -> Pod {
    from(json!({"metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "echo", "ports": [{"name": "http", "containerPort": 8080}]}]}}))
}

fn api_err(e: Error) -> kube::core::Status {
    match e {
        Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn crud_conflict_and_not_found() {
    let client = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created = pods
        .create(&PostParams::default(), &pod("a", "web"))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let rv1 = created.metadata.resource_version.clone().unwrap();

    let got = pods.get("a").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());

    // Update with the current resourceVersion works; then the stale one conflicts.
    let mut cur = pods.get("a").await.unwrap();
    cur.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("x".into(), "1".into());
    let updated = pods
        .replace("a", &PostParams::default(), &cur)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        cur.metadata.resource_version
    );
    let e = api_err(
        pods.replace("a", &PostParams::default(), &cur)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    let mut stale = created.clone();
    stale.metadata.resource_version = Some(rv1);
    assert_eq!(
        api_err(
            pods.replace("a", &PostParams::default(), &stale)
                .await
                .unwrap_err()
        )
        .code,
        409
    );

    // Duplicate create.
    let e = api_err(
        pods.create(&PostParams::default(), &pod("a", "web"))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));

    // generateName.
    let mut g = pod("", "web");
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let g = pods.create(&PostParams::default(), &g).await.unwrap();
    let gname = g.metadata.name.unwrap();
    assert!(gname.starts_with("gen-") && gname.len() == 9, "{gname}");

    // Merge patch on main resource keeps status; status patch changes only status.
    let p = pods
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"y": "2"}}, "status": {"phase": "Running"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.as_ref().unwrap()["y"], "2");
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    let p = pods
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"z": "3"}}, "status": {"phase": "Running"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    assert!(!p.metadata.labels.as_ref().unwrap().contains_key("z"));
    // Strategic merge patch is accepted (treated as merge patch).
    let p = pods
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"annotations": {"k": "v"}}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.annotations.unwrap()["k"], "v");

    // Label and field selectors.
    let web = pods
        .list(&ListParams::default().labels("app in (web),y"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 1);
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=a"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);

    // Delete returns the object; then 404 comes through as an API error with code 404.
    let deleted = pods.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(deleted.left().is_some());
    let e = api_err(pods.get("a").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    let e = api_err(
        pods.delete("a", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);

    // All-namespaces list and discovery.
    let all: Api<Pod> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let nss: Api<Namespace> = Api::all(client.clone());
    let names: Vec<_> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| n.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["default", "kube-system"]);
    assert_eq!(client.apiserver_version().await.unwrap().major, "1");
}

#[tokio::test]
async fn watcher_sees_create_update_delete() {
    let client = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("before", "web"))
        .await
        .unwrap();
    let mut stream = watcher(pods.clone(), watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    let next = async |s: &mut futures::stream::BoxStream<
        'static,
        watcher::Result<watcher::Event<Pod>>,
    >| {
        tokio::time::timeout(Duration::from_secs(5), s.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    // Init, InitApply(before), InitDone.
    loop {
        match next(&mut stream).await {
            watcher::Event::InitApply(p) => seen.push(p.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["before"]);
    pods.create(&PostParams::default(), &pod("w", "web"))
        .await
        .unwrap();
    let mut events = Vec::new();
    // Create, then the scheduler's binding attempt (no nodes → Unschedulable condition).
    pods.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}})),
    )
    .await
    .unwrap();
    pods.delete("w", &DeleteParams::default()).await.unwrap();
    while events.last().map(|(t, _): &(&str, String)| *t) != Some("delete") {
        match next(&mut stream).await {
            watcher::Event::Apply(p) => events.push((
                "apply",
                p.metadata
                    .labels
                    .unwrap()
                    .get("v")
                    .cloned()
                    .unwrap_or_default(),
            )),
            watcher::Event::Delete(p) => events.push(("delete", p.metadata.name.unwrap())),
            _ => {}
        }
    }
    assert_eq!(events.first().unwrap(), &("apply", String::new()));
    assert!(events.contains(&("apply", "2".to_string())));
    assert_eq!(events.last().unwrap(), &("delete", "w".to_string()));

    // Streaming-list mode (sendInitialEvents + initial-events-end bookmark) works too.
    let mut s2 = watcher(pods.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut init = Vec::new();
    loop {
        match next(&mut s2).await {
            watcher::Event::InitApply(p) => init.push(p.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(init, ["before"]);
}

#[tokio::test]
async fn watch_resumes_from_revision_and_honours_timeout() {
    use kube::api::WatchEvent;
    use kube::api::WatchParams;
    let client = start().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("a", "web"))
        .await
        .unwrap();
    // Resume from a revision: the later events are replayed.
    let mut s = pods
        .watch(&WatchParams::default().timeout(2), "1")
        .await
        .unwrap()
        .boxed();
    match s.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(p) => assert_eq!(p.metadata.namespace.as_deref(), Some("default")),
        other => panic!("expected namespace-scoped replay, got {other:?}"),
    }
    // timeoutSeconds ends the stream.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while s.try_next().await.unwrap().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "watch did not honour timeoutSeconds");
}

#[tokio::test]
async fn node_cidrs_scheduling_and_endpoint_slices() {
    let client = start().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");

    // A pod with no node: Pending, PodScheduled=False Unschedulable.
    pods.create(&PostParams::default(), &pod("p1", "web"))
        .await
        .unwrap();
    let p1 = pods.get("p1").await.unwrap();
    assert!(p1.spec.unwrap().node_name.is_none());
    let cond = p1
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_deref()),
        ("False", Some("Unschedulable"))
    );

    // Nodes get distinct pod CIDRs; the pending pod is scheduled once a node is Ready.
    let n1 = nodes
        .create(&PostParams::default(), &node("n1"))
        .await
        .unwrap();
    let n2 = nodes
        .create(&PostParams::default(), &node("n2"))
        .await
        .unwrap();
    assert_eq!(
        n1.spec.as_ref().unwrap().pod_cidr.as_deref(),
        Some("10.244.0.0/24")
    );
    assert_eq!(
        n2.spec.as_ref().unwrap().pod_cidrs.clone().unwrap(),
        ["10.244.1.0/24"]
    );
    // Status on create is kept for nodes (kubelet registers with it).
    assert_eq!(n1.status.unwrap().conditions.unwrap()[0].status, "True");
    assert_eq!(
        pods.get("p1")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .as_deref(),
        Some("n1")
    );
    pods.create(&PostParams::default(), &pod("p2", "web"))
        .await
        .unwrap();
    assert_eq!(
        pods.get("p2")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .as_deref(),
        Some("n2")
    );
    // Node deleted → its CIDR is reused.
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    let n3 = nodes
        .create(&PostParams::default(), &node("n3"))
        .await
        .unwrap();
    assert_eq!(n3.spec.unwrap().pod_cidr.as_deref(), Some("10.244.0.0/24"));
    // A tainted node is skipped.
    let mut n4 = node("a-tainted");
    n4.spec = Some(from(
        json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}),
    ));
    nodes.create(&PostParams::default(), &n4).await.unwrap();
    pods.create(&PostParams::default(), &pod("p3", "web"))
        .await
        .unwrap();
    assert_ne!(
        pods.get("p3")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .as_deref(),
        Some("a-tainted")
    );

    // Service: clusterIP and node port allocated; a placeholder slice until pods have IPs.
    let svc: Service = from(
        json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    );
    let svc = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let spec = svc.spec.unwrap();
    // The first address above the static band (KEP-3070), as the real allocator.
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.1.0"));
    assert_eq!(spec.ports.unwrap()[0].node_port, Some(30000));
    let sl = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap()
        .items;
    assert_eq!(sl.len(), 1);
    assert!(sl[0].metadata.name.as_ref().unwrap().starts_with("web-"));
    assert!(sl[0].endpoints.is_empty());
    let slice_name = sl[0].metadata.name.clone().unwrap();

    // Pod gets an IP (not ready) then becomes Ready: the slice follows.
    pods.patch_status(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"podIP": "10.244.0.5", "phase": "Running"}})),
    )
    .await
    .unwrap();
    let s = slices.get(&slice_name).await.unwrap();
    assert_eq!(s.endpoints.len(), 1);
    assert_eq!(
        s.endpoints[0].conditions.as_ref().unwrap().ready,
        Some(false)
    );
    assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
    assert_eq!(s.endpoints[0].node_name.as_deref(), Some("n1"));
    pods.patch_status(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await
    .unwrap();
    let s = slices.get(&slice_name).await.unwrap();
    assert_eq!(
        s.endpoints[0].conditions.as_ref().unwrap().ready,
        Some(true)
    );
    // No churn: an unrelated pod change does not rewrite the slice.
    let rv = s.metadata.resource_version.clone();
    pods.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"a": "b"}}})),
    )
    .await
    .unwrap();
    assert_eq!(
        slices
            .get(&slice_name)
            .await
            .unwrap()
            .metadata
            .resource_version,
        rv
    );
    // The pod, bound to n1, is deleted gracefully: it stays, marked (grace from its spec),
    // and its endpoint is terminating but still serving.
    pods.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"terminationGracePeriodSeconds": 40}})),
    )
    .await
    .unwrap();
    let marked = pods
        .delete("p1", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("a graceful delete returns the pod");
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(40));
    let at = marked.metadata.deletion_timestamp.clone().unwrap().0;
    let left = at.as_second() - k8s_openapi::jiff::Timestamp::now().as_second();
    assert!((38..=40).contains(&left), "{left}");
    let c = slices.get(&slice_name).await.unwrap().endpoints[0]
        .conditions
        .clone()
        .unwrap();
    assert_eq!(
        (c.ready, c.serving, c.terminating),
        (Some(false), Some(true), Some(true))
    );
    // A second delete never lengthens the grace; a shorter one shortens it.
    let again = pods
        .delete("p1", &DeleteParams::default().grace_period(100))
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(again.metadata.deletion_grace_period_seconds, Some(40));
    assert_eq!(again.metadata.deletion_timestamp.unwrap().0, at);
    let shorter = pods
        .delete("p1", &DeleteParams::default().grace_period(5))
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(shorter.metadata.deletion_grace_period_seconds, Some(5));
    assert!(shorter.metadata.deletion_timestamp.unwrap().0 < at);
    // Updates keep the marks.
    let kept = pods
        .patch(
            "p1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(kept.metadata.deletion_grace_period_seconds, Some(5));
    // A precondition naming another incarnation is refused.
    let other = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("not-this-one".into()),
            resource_version: None,
        }),
        ..DeleteParams::default().grace_period(0)
    };
    assert_eq!(
        api_err(pods.delete("p1", &other).await.unwrap_err()).code,
        409
    );
    // Grace 0 (what the kubelet sends once the containers are gone): gone, the slice empty.
    pods.delete("p1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(api_err(pods.get("p1").await.unwrap_err()).code, 404);
    assert!(slices.get(&slice_name).await.unwrap().endpoints.is_empty());

    // Duplicate clusterIP and nodePort are rejected.
    let dup: Service = from(
        json!({"metadata": {"name": "dup"}, "spec": {"type": "NodePort", "clusterIP": "10.96.1.0",
        "ports": [{"port": 80, "nodePort": 30000}]}}),
    );
    let e = api_err(svcs.create(&PostParams::default(), &dup).await.unwrap_err());
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("spec.clusterIP") && e.message.contains("spec.ports[0].nodePort"),
        "{}",
        e.message
    );

    // Deleting the Service deletes its slices.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(
        slices
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn namespace_deletion_cascades_and_label() {
    let client = start().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = nss
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "team"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        ns.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        "team"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), "team");
    pods.create(&PostParams::default(), &pod("a", "web"))
        .await
        .unwrap();
    nps.create(
        &PostParams::default(),
        &from(json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}})),
    )
    .await
    .unwrap();
    nss.delete("team", &DeleteParams::default()).await.unwrap();
    let all: Api<Pod> = Api::all(client.clone());
    assert!(
        all.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let e = api_err(nps.get("deny").await.unwrap_err());
    assert_eq!(e.code, 404);
    // Creating into a missing namespace fails.
    assert_eq!(
        api_err(
            pods.create(&PostParams::default(), &pod("b", "web"))
                .await
                .unwrap_err()
        )
        .code,
        404
    );
    assert_eq!(
        api_err(
            nss.delete("default", &DeleteParams::default())
                .await
                .unwrap_err()
        )
        .code,
        403
    );
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_the_field_named() {
    let client = start().await;
    let raw = |path: &str, body: serde_json::Value| {
        let req = http::Request::post(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap();
        let client = client.clone();
        async move { client.request::<serde_json::Value>(req).await }
    };
    // Wrong type: the decoder names the path.
    let e = api_err(
        raw(
            "/api/v1/namespaces/default/services",
            json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bad"}, "spec": {"ports": [{"port": "eighty"}]}}),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 400);
    assert!(
        e.message.contains("spec.ports[0].port") && e.message.contains("\"bad\""),
        "{}",
        e.message
    );

    // Semantic checks: 422 with each field.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let bad: Service = from(
        json!({"metadata": {"name": "bad"}, "spec": {"type": "Weird", "clusterIP": "192.168.0.1",
        "ports": [{"name": "a", "port": 70000, "protocol": "ICMP"}, {"name": "b", "port": 81, "nodePort": 30001}]}}),
    );
    let e = api_err(svcs.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    for f in [
        "spec.type",
        "spec.clusterIP",
        "spec.ports[0].port",
        "spec.ports[0].protocol",
    ] {
        assert!(e.message.contains(f), "{f} missing in {}", e.message);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let e = api_err(
        pods.create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "Bad_Name"},
        "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 0}]}]}})),
        )
        .await
        .unwrap_err(),
    );
    for f in [
        "metadata.name",
        "spec.containers[0].image",
        "spec.containers[0].ports[0].containerPort",
    ] {
        assert!(e.message.contains(f), "{f} missing in {}", e.message);
    }
    let e = api_err(
        pods.create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "empty"}, "spec": {"containers": []}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(e.message.contains("spec.containers"), "{}", e.message);
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), "default");
    let e = api_err(
        nps.create(
            &PostParams::default(),
            &from(
                json!({"metadata": {"name": "np"}, "spec": {"podSelector": {},
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}],
                     "ports": [{"port": "http", "endPort": 90}, {"port": 100, "endPort": 90}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "nonsense"}}]}]}}),
            ),
        )
        .await
        .unwrap_err(),
    );
    for f in [
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "spec.ingress[0].ports[0].endPort",
        "spec.ingress[0].ports[1].endPort",
        "spec.egress[0].to[0].ipBlock.cidr",
    ] {
        assert!(e.message.contains(f), "{f} missing in {}", e.message);
    }
    // Nothing was stored.
    assert!(
        svcs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        nps.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// coordination.k8s.io/v1 Leases through `kube`: discovered, created once per name
/// (409 AlreadyExists), updated only from the current resourceVersion (409 Conflict),
/// watched in their namespace with a label selector.
#[tokio::test]
async fn leases_are_served_with_optimistic_concurrency() {
    use k8s_openapi::api::coordination::v1::Lease;
    let client = start().await;
    let groups = client.list_api_groups().await.unwrap();
    let coordination = groups
        .groups
        .iter()
        .find(|g| g.name == "coordination.k8s.io")
        .expect("coordination.k8s.io discovered");
    assert_eq!(
        coordination.versions[0].group_version,
        "coordination.k8s.io/v1"
    );
    let resources = client
        .list_api_group_resources("coordination.k8s.io/v1")
        .await
        .unwrap();
    let leases = resources
        .resources
        .iter()
        .find(|r| r.name == "leases")
        .unwrap();
    assert!(leases.namespaced);
    assert_eq!(leases.kind, "Lease");

    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease = |holder: &str| -> Lease {
        from(json!({"metadata": {"name": "podcidr-10-244-3-0-24",
                                 "labels": {"podnet.io/claim": "pod-cidr"}},
                    "spec": {"holderIdentity": holder}}))
    };
    let events = watcher(
        api.clone(),
        watcher::Config::default().labels("podnet.io/claim=pod-cidr"),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        futures::pin_mut!(events);
        while let Some(Ok(e)) = events.next().await {
            let holder = match e {
                watcher::Event::InitDone => Some("(listed)".to_string()),
                watcher::Event::Apply(l) => l.spec.and_then(|s| s.holder_identity),
                _ => None,
            };
            if let Some(h) = holder {
                let _ = tx.send(h);
            }
        }
    });
    assert_eq!(rx.recv().await.unwrap(), "(listed)");
    let created = api
        .create(&PostParams::default(), &lease("node-1"))
        .await
        .unwrap();
    let e = api_err(
        api.create(&PostParams::default(), &lease("node-2"))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(
        e.details
            .as_ref()
            .map(|d| (d.group.as_str(), d.kind.as_str())),
        Some(("coordination.k8s.io", "leases"))
    );

    let mut a = created.clone();
    a.spec.as_mut().unwrap().holder_identity = Some("node-3".into());
    let mut b = created.clone();
    b.spec.as_mut().unwrap().holder_identity = Some("node-4".into());
    api.replace("podcidr-10-244-3-0-24", &PostParams::default(), &a)
        .await
        .unwrap();
    let e = api_err(
        api.replace("podcidr-10-244-3-0-24", &PostParams::default(), &b)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    let held = api.get("podcidr-10-244-3-0-24").await.unwrap();
    assert_eq!(
        held.spec.unwrap().holder_identity.as_deref(),
        Some("node-3")
    );

    // The watch (label-selected) saw the create and the one update that went through.
    assert_eq!(rx.recv().await.unwrap(), "node-1");
    assert_eq!(rx.recv().await.unwrap(), "node-3");
}
