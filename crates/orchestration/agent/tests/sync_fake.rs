//! Fake-kernel sync tests: first sync, the no-op second sync, a node leaving, restart
//! with pre-existing state, mode switch, CNI config and masquerade writes.

use podnet_agent::Mode;
use podnet_agent::ops::{FakeNft, FakeNodeNet, NodeNetOps};
use podnet_agent::sync::{CONFLIST_NAME, SyncConfig, Syncer};
use podnet_nodenet::{NodeInfo, Route, diff, plan_node};

fn node(name: &str, ip: &str, cidr: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        ip: ip.parse().unwrap(),
        pod_cidr: cidr.parse().unwrap(),
    }
}

fn nodes() -> Vec<NodeInfo> {
    vec![
        node("w1", "192.168.50.11", "10.244.1.0/24"),
        node("w2", "192.168.50.12", "10.244.2.0/24"),
        node("w3", "192.168.50.13", "10.244.3.0/24"),
    ]
}

/// A syncer for node w1, whose IP is on link `eth0` unless `net` says otherwise.
fn syncer(
    mode: Mode,
    dir: &tempfile::TempDir,
    mut net: FakeNodeNet,
) -> Syncer<FakeNodeNet, FakeNft> {
    if net.addresses.is_empty() {
        net.addresses
            .push(("192.168.50.11".parse().unwrap(), "eth0".into()));
    }
    Syncer::new(
        SyncConfig {
            node_name: "w1".into(),
            mode,
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            cni_conf_dir: dir.path().join("net.d"),
            cni_data_dir: "/var/lib/cni/podnet".into(),
            underlay_mtu: 1500,
            masquerade_exceptions: Vec::new(),
        },
        net,
        FakeNft::default(),
    )
}

#[test]
fn first_sync_programs_everything_and_second_writes_nothing() {
    for mode in [Mode::HostGw, Mode::Vxlan] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = syncer(mode, &dir, FakeNodeNet::default());
        let r1 = s.sync(&nodes()).unwrap();
        assert!(r1.conflist_written && r1.nft_applied);
        assert!(s.net.forwarding);
        assert_eq!(r1.peers, 2);
        let expected = plan_node(&nodes()[0], &nodes(), mode, 1500).as_state();
        assert_eq!(s.net.state, expected, "{mode}");
        let writes = s.net.writes;
        assert_eq!(writes, if mode == Mode::HostGw { 2 } else { 8 });

        let r2 = s.sync(&nodes()).unwrap();
        assert_eq!(r2.kernel_writes, 0, "{mode}: {r2:?}");
        assert!(!r2.conflist_written && !r2.nft_applied);
        assert_eq!(s.net.writes, writes);
        // The masquerade table, then VXLAN mode's tunnel table on the underlay link (in
        // host-gw mode its removal, should a VXLAN run have left one).
        assert_eq!(s.nft.tables.len(), 2);
        assert!(s.nft.tables[0].starts_with("table ip podnet-nat"));
        if mode == Mode::HostGw {
            assert_eq!(s.nft.tables[1], "remove table netdev podnet-tunnel");
        } else {
            assert!(
                s.nft.tables[1].starts_with("table netdev podnet-tunnel")
                    && s.nft.tables[1].contains("hook ingress device \"eth0\""),
                "{}",
                s.nft.tables[1]
            );
        }
        let conf = std::fs::read_to_string(dir.path().join("net.d").join(CONFLIST_NAME)).unwrap();
        let mtu = if mode == Mode::HostGw { 1500 } else { 1450 };
        assert!(conf.contains(&format!("\"mtu\": {mtu}")), "{conf}");
        assert!(conf.contains("10.244.1.0/24"));
    }
}

#[test]
fn node_leaving_removes_exactly_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = syncer(Mode::Vxlan, &dir, FakeNodeNet::default());
    s.sync(&nodes()).unwrap();
    let before = s.net.state.clone();
    let w = s.net.writes;
    let r = s.sync(&nodes()[..2]).unwrap();
    // route + neighbour + fdb, and the node-ips sets changed (one nft transaction for
    // each table).
    assert_eq!(s.net.writes - w, 3);
    assert!(r.nft_applied);
    assert_eq!(s.nft.tables.len(), 4);
    assert!(
        s.nft.tables[2..]
            .iter()
            .all(|t| !t.contains("192.168.50.13"))
    );
    let after = s.net.state.clone();
    let gone: Vec<&Route> = before.routes.difference(&after.routes).collect();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].dst.to_string(), "10.244.3.0/24");
    let (bv, av) = (before.vxlan.unwrap(), after.vxlan.unwrap());
    assert_eq!(bv.fdb.len() - 1, av.fdb.len());
    assert!(av.fdb.iter().all(|f| f.dst.to_string() != "192.168.50.13"));
    assert!(
        av.neighbours
            .iter()
            .all(|n| n.ip.to_string() != "10.244.3.0")
    );
    assert_eq!(bv.device, av.device);
}

#[test]
fn restart_with_existing_state_applies_only_the_difference() {
    // The previous run programmed w2 and w3; meanwhile w3 left and w4 joined.
    let old = plan_node(&nodes()[0], &nodes(), Mode::HostGw, 1500).as_state();
    let dir = tempfile::tempdir().unwrap();
    let mut s = syncer(
        Mode::HostGw,
        &dir,
        FakeNodeNet {
            state: old,
            ..Default::default()
        },
    );
    let mut now = nodes()[..2].to_vec();
    now.push(node("w4", "192.168.50.14", "10.244.4.0/24"));
    s.sync(&now).unwrap();
    assert_eq!(
        s.net.writes, 2,
        "delete w3's route, add w4's; w2's untouched"
    );
    assert_eq!(
        s.net.state,
        plan_node(&now[0], &now, Mode::HostGw, 1500).as_state()
    );
}

#[test]
fn mode_switch_at_restart_cleans_the_other_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut vx = syncer(Mode::Vxlan, &dir, FakeNodeNet::default());
    vx.sync(&nodes()).unwrap();
    let mut gw = syncer(
        Mode::HostGw,
        &dir,
        FakeNodeNet {
            state: vx.net.state.clone(),
            ..Default::default()
        },
    );
    gw.sync(&nodes()).unwrap();
    assert!(gw.net.state.vxlan.is_none(), "the VXLAN device is gone");
    assert_eq!(
        gw.net.state,
        plan_node(&nodes()[0], &nodes(), Mode::HostGw, 1500).as_state()
    );
    assert_eq!(gw.net.writes, 1 + 2, "device delete + two routes");
    let conf = std::fs::read_to_string(dir.path().join("net.d").join(CONFLIST_NAME)).unwrap();
    assert!(conf.contains("\"mtu\": 1500"));

    let mut back = syncer(
        Mode::Vxlan,
        &dir,
        FakeNodeNet {
            state: gw.net.state.clone(),
            ..Default::default()
        },
    );
    back.sync(&nodes()).unwrap();
    assert_eq!(
        back.net.state,
        plan_node(&nodes()[0], &nodes(), Mode::Vxlan, 1500).as_state()
    );
}

#[test]
fn own_node_without_pod_cidr_is_an_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = syncer(Mode::HostGw, &dir, FakeNodeNet::default());
    assert!(s.sync(&nodes()[1..]).is_err());
    assert_eq!(s.net.writes, 0);
    assert!(s.nft.tables.is_empty());
    assert!(!dir.path().join("net.d").join(CONFLIST_NAME).exists());
}

#[test]
fn drift_behind_the_agents_back_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = syncer(Mode::Vxlan, &dir, FakeNodeNet::default());
    s.sync(&nodes()).unwrap();
    // Someone deletes a neighbour entry and downs the device.
    let v = s.net.state.vxlan.as_mut().unwrap();
    let n = *v.neighbours.iter().next().unwrap();
    v.neighbours.remove(&n);
    v.up = false;
    let w = s.net.writes;
    s.sync(&nodes()).unwrap();
    assert_eq!(s.net.writes - w, 2);
    let plan = plan_node(&nodes()[0], &nodes(), Mode::Vxlan, 1500);
    assert!(diff(&s.net.read_state().unwrap(), &plan).is_empty());
}

#[test]
fn tunnel_table_follows_the_underlay_link() {
    let dir = tempfile::tempdir().unwrap();
    // No link holds the node IP: the tunnel table cannot be hooked, and the sync says so,
    // having programmed everything else.
    let mut s = syncer(
        Mode::Vxlan,
        &dir,
        FakeNodeNet {
            addresses: vec![("192.168.50.99".parse().unwrap(), "eth0".into())],
            ..Default::default()
        },
    );
    let err = s.sync(&nodes()).unwrap_err().to_string();
    assert!(
        err.contains("tunnel") && err.contains("192.168.50.11"),
        "{err}"
    );
    assert_eq!(s.nft.tables.len(), 1, "the masquerade table is in place");
    let plan = plan_node(&nodes()[0], &nodes(), Mode::Vxlan, 1500);
    assert!(diff(&s.net.read_state().unwrap(), &plan).is_empty());
    // The address appears (on ens5): the next sync hooks that link.
    s.net.addresses = vec![("192.168.50.11".parse().unwrap(), "ens5".into())];
    s.sync(&nodes()).unwrap();
    assert!(s.nft.tables[1].contains("hook ingress device \"ens5\""));
    assert!(s.sync(&nodes()).unwrap().kernel_writes == 0);
    // The node IP moves to another link: the table is replaced, bound to it.
    s.net.addresses = vec![("192.168.50.11".parse().unwrap(), "bond0".into())];
    let r = s.sync(&nodes()).unwrap();
    assert_eq!(r.kernel_writes, 1);
    assert!(s.nft.tables[2].contains("hook ingress device \"bond0\""));
}

/// The fast path's kernel side for these tests: the transactions, rendered.
#[derive(Clone, Default)]
struct FastKernel {
    sent: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl podnet_agent::fastpath::FastPathKernel for FastKernel {
    fn apply(&mut self, tx: &podnet_nft::Transaction) -> anyhow::Result<()> {
        podnet_nft::validate(tx)?;
        self.sent
            .lock()
            .unwrap()
            .push(podnet_nft::render_transaction(tx));
        Ok(())
    }
    fn dnat_targets(&mut self) -> anyhow::Result<std::collections::BTreeSet<std::net::Ipv4Addr>> {
        Ok(Default::default())
    }
}

fn link(name: &str, index: u32, master: Option<u32>) -> podnet_agent::ops::LinkInfo {
    podnet_agent::ops::LinkInfo {
        name: name.into(),
        index,
        master,
    }
}

/// The node syncer's part of the fast path: the devices by index, the bridge's ports as
/// the pods' hooks, the peers' next hops; a new pod's veth is hooked by the next refresh
/// without a sync, and a sync with nothing changed sends nothing.
#[test]
fn fast_path_follows_devices_pods_and_peers() {
    for mode in [Mode::HostGw, Mode::Vxlan] {
        let dir = tempfile::tempdir().unwrap();
        let net = FakeNodeNet {
            links: vec![
                link("lo", 1, None),
                link("eth0", 2, None),
                link("podnet.vxlan", 3, None),
                link("podnet0", 4, None),
                link("pn0123456789ab", 5, Some(4)),
            ],
            ..Default::default()
        };
        let kernel = FastKernel::default();
        let fp =
            podnet_agent::fastpath::FastPath::new(Box::new(kernel.clone()), false, false).shared();
        let mut s = syncer(mode, &dir, net).with_fast_path(fp.clone());
        s.sync(&nodes()).unwrap();
        let sent = kernel.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1, "{sent:?}");
        let (device, hop) = match mode {
            Mode::HostGw => ("eth0", "192.168.50.12"),
            Mode::Vxlan => ("podnet.vxlan", "10.244.2.0"),
        };
        let tx = &sent[0];
        assert!(
            tx.contains(&format!(
                "fwd ip to ip daddr map @next-hops device \"{device}\""
            )) && tx.contains(&format!("10.244.2.0/24 : {hop}"))
                && tx.contains("fwd ip to ip daddr device \"podnet0\"")
                && tx.contains("hook ingress device \"pn0123456789ab\""),
            "{mode}: {tx}"
        );
        assert!(fp.lock().unwrap().armed());

        // Nothing changed: nothing sent, by a sync or a refresh.
        s.sync(&nodes()).unwrap();
        s.refresh_fast_path().unwrap();
        assert_eq!(kernel.sent.lock().unwrap().len(), 1);

        // A new pod: its chain, by the refresh alone, without replacing the table.
        s.net.links.push(link("pn00000000beef", 6, Some(4)));
        s.refresh_fast_path().unwrap();
        let sent = kernel.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 2);
        assert!(
            sent[1].contains("add chain netdev podnet-fastpath pod-pn00000000beef")
                && !sent[1].contains("delete table"),
            "{}",
            sent[1]
        );

        // A node leaves: its next hop goes.
        s.sync(&nodes()[..2]).unwrap();
        let last = kernel.sent.lock().unwrap().last().cloned().unwrap();
        assert!(
            last.contains("delete element netdev podnet-fastpath")
                && last.contains("10.244.3.0/24"),
            "{last}"
        );
    }
}
