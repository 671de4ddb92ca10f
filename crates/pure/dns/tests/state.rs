//! The incremental zone against a full build: random sequences of Service and
//! EndpointSlice changes (shared addresses, headless Services whose endpoints, hostnames
//! and readiness change, slices moving between Services or arriving before their
//! Service, ExternalNames, bad objects), committed now and then; after every commit the
//! zone must be the one a fresh build of the same objects gives — every name, every
//! pre-encoded answer, the counts and the problems.

use podnet_dns::objects::{EndpointInfo, PortInfo, ServiceInfo, SliceInfo, SlicePort};
use podnet_dns::{Zone, ZoneConfig, ZoneState};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const NAMESPACES: [&str; 2] = ["default", "prod"];
const SERVICES: [&str; 5] = ["web", "db", "api", "cache", "x"];

fn ip(rng: &mut Rng) -> IpAddr {
    // A small pool, so that Services and endpoints share addresses (and PTR names).
    if rng.chance(20) {
        format!("fd00::{}", rng.below(4) + 1).parse().unwrap()
    } else {
        format!("10.96.0.{}", rng.below(6) + 1).parse().unwrap()
    }
}

fn name(rng: &mut Rng) -> Option<Box<str>> {
    match rng.below(4) {
        0 => None,
        1 => Some("".into()),
        2 => Some("http".into()),
        _ => Some("metrics".into()),
    }
}

fn service(rng: &mut Rng, ns: &str, svc: &str) -> ServiceInfo {
    let (external_name, cluster_ips): (Option<Option<Box<str>>>, Vec<Box<str>>) = match rng.below(8)
    {
        0 => (
            Some(Some(format!("{}.example.test", rng.below(3)).into())),
            vec![],
        ),
        1 => (Some(None), vec![]),
        2 | 3 => (None, vec!["None".into()]),
        4 => (None, vec![]),
        5 => (None, vec!["not-an-ip".into()]),
        6 => (
            None,
            vec![ip(rng).to_string().into(), ip(rng).to_string().into()],
        ),
        _ => (None, vec![ip(rng).to_string().into()]),
    };
    let ports = (0..rng.below(3))
        .map(|_| PortInfo {
            name: name(rng),
            port: *rng.pick(&[53, 80, 8080, 70000]),
            protocol: rng.pick(&[None, Some("UDP"), Some("TCP")]).map(Into::into),
        })
        .collect();
    ServiceInfo {
        namespace: ns.into(),
        name: svc.into(),
        external_name,
        cluster_ips: cluster_ips.into(),
        publish_not_ready: rng.chance(30),
        ports,
    }
}

fn slice(rng: &mut Rng, ns: &str, slice_name: &str) -> SliceInfo {
    let endpoints = (0..rng.below(4))
        .map(|_| EndpointInfo {
            addresses: (0..rng.below(2) + 1).map(|_| ip(rng)).collect(),
            hostname: rng
                .pick(&[None, None, Some("h0"), Some("h1"), Some("")])
                .map(Into::into),
            ready: rng.chance(70),
        })
        .collect();
    let ports = (0..rng.below(3))
        .map(|_| SlicePort {
            name: name(rng),
            port: *rng.pick(&[Some(5432), Some(80), None]),
            protocol: rng.pick(&[None, Some("UDP")]).map(Into::into),
        })
        .collect();
    SliceInfo {
        namespace: ns.into(),
        name: slice_name.into(),
        service: rng
            .pick(&[Some("web"), Some("db"), Some("api"), Some("nope"), None])
            .map(Into::into),
        ip: rng.chance(90),
        endpoints,
        ports,
    }
}

type Objects = (
    BTreeMap<(String, String), ServiceInfo>,
    BTreeMap<(String, String), SliceInfo>,
);

fn full(config: &ZoneConfig, serial: u32, (svcs, slices): &Objects) -> (Zone, ZoneState) {
    let mut s = ZoneState::new(config.clone());
    for v in slices.values() {
        s.apply_slice(v.clone());
    }
    for v in svcs.values() {
        s.apply_service(v.clone());
    }
    (s.commit(serial), s)
}

fn check(step: usize, inc: &Zone, inc_state: &ZoneState, reference: &(Zone, ZoneState)) {
    let (zone, state) = reference;
    assert_eq!(
        inc.record_count(),
        zone.record_count(),
        "step {step}: records"
    );
    assert_eq!(inc.name_count(), zone.name_count(), "step {step}: names");
    let (a, b) = (inc.dump(), zone.dump());
    if a != b {
        let show = |d: &podnet_dns::zone::Dump| {
            d.iter()
                .map(|(n, sets)| {
                    format!(
                        "{} {:?}",
                        String::from_utf8_lossy(n),
                        sets.iter().map(|(t, _)| *t).collect::<Vec<_>>()
                    )
                })
                .collect::<Vec<_>>()
        };
        panic!(
            "step {step}: the incremental zone differs\nincremental: {:#?}\nfull: {:#?}",
            show(&a),
            show(&b)
        );
    }
    assert_eq!(
        inc_state.problems(),
        state.problems(),
        "step {step}: problems"
    );
}

#[test]
fn incremental_updates_equal_a_full_build() {
    let config = ZoneConfig::default();
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        // Commit steps of 1–3 entries: names shared between steps are covered.
        let mut state = ZoneState::new(config.clone()).with_commit_step(1 + seed as usize % 3);
        let mut objects: Objects = Default::default();
        let mut serial = 1;
        for step in 0..60 {
            let ns = *rng.pick(&NAMESPACES);
            let svc = *rng.pick(&SERVICES);
            match rng.below(10) {
                0..=2 => {
                    let s = service(&mut rng, ns, svc);
                    objects.0.insert((ns.into(), svc.into()), s.clone());
                    state.apply_service(s);
                }
                3 => {
                    objects.0.remove(&(ns.to_string(), svc.to_string()));
                    state.delete_service(ns, svc);
                }
                4..=7 => {
                    let name = format!("s-{}", rng.below(4));
                    let s = slice(&mut rng, ns, &name);
                    objects.1.insert((ns.into(), name), s.clone());
                    state.apply_slice(s);
                }
                8 => {
                    let name = format!("s-{}", rng.below(4));
                    objects.1.remove(&(ns.to_string(), name.clone()));
                    state.delete_slice(ns, &name);
                }
                _ => {
                    // Everything listed again, some of it changed.
                    let mut svcs = objects.0.clone();
                    svcs.retain(|_, _| rng.chance(80));
                    let s = service(&mut rng, ns, svc);
                    svcs.insert((ns.into(), svc.into()), s);
                    objects.0 = svcs;
                    state.replace_all(
                        objects.0.values().cloned().collect(),
                        objects.1.values().cloned().collect(),
                    );
                }
            }
            if rng.chance(40) {
                serial += 1;
                let inc = state.commit(serial);
                check(
                    seed as usize * 1000 + step,
                    &inc,
                    &state,
                    &full(&config, serial, &objects),
                );
            }
        }
        serial += 1;
        let inc = state.commit(serial);
        check(
            seed as usize * 1000 + 999,
            &inc,
            &state,
            &full(&config, serial, &objects),
        );
        // Everything deleted: back to the empty zone.
        for (ns, name) in objects.0.keys() {
            state.delete_service(ns, name);
        }
        for (ns, name) in objects.1.keys() {
            state.delete_slice(ns, name);
        }
        let inc = state.commit(serial);
        check(
            seed as usize * 1000 + 1000,
            &inc,
            &state,
            &full(&config, serial, &Objects::default()),
        );
    }
}

#[test]
fn a_snapshot_never_changes_after_a_commit() {
    let mut state = ZoneState::new(ZoneConfig::default());
    let mut rng = Rng(7);
    state.apply_service(service(&mut rng, "default", "web"));
    let before = state.commit(1);
    let dump = before.dump();
    for i in 0..50 {
        state.apply_service(service(&mut rng, "default", SERVICES[i % 5]));
        state.apply_slice(slice(&mut rng, "default", "s-1"));
        state.commit(2 + i as u32);
    }
    assert_eq!(before.dump(), dump);
}
