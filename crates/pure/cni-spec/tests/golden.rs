//! Golden tests: configuration parsing and result rendering per spec version, compared
//! with files under tests/golden/. `UPDATE_GOLDEN=1 cargo test` rewrites the files; review
//! the diff before committing it.

use podnet_cni_spec::config::{NetConf, parse_version, version_for_errors};
use podnet_cni_spec::version::render_version_info;
use podnet_cni_spec::{CniError, CniResult, CniVersion, Environment, ErrorCode, Request};
use std::path::PathBuf;

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}; run with UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert_eq!(
        actual, want,
        "golden {name} differs (UPDATE_GOLDEN=1 to accept)"
    );
}

const DUAL_STACK: &str = r#"{
  "cniVersion": "1.1.0", "name": "podnet", "type": "podnet", "bridge": "pn0", "mtu": 1450,
  "ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]],
           "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}], "dataDir": "/tmp/x"},
  "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]},
  "runtimeConfig": {"ips": ["10.244.1.77/24"], "mac": "02:00:00:00:00:01"},
  "someRuntimeField": {"ignored": true}
}"#;

fn sample_result() -> CniResult {
    let v = serde_json::json!({
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "pn0", "mac": "02:aa:00:00:00:01"},
            {"name": "pn1a2b3c4d5e6f", "mac": "02:aa:00:00:00:02"},
            {"name": "eth0", "mac": "02:aa:00:00:00:03", "mtu": 1450, "sandbox": "/run/netns/p1"}
        ],
        "ips": [
            {"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 2},
            {"address": "fd00:10:244:1::2/64", "gateway": "fd00:10:244:1::1", "interface": 2}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1", "mtu": 1400}],
        "dns": {"nameservers": ["10.96.0.10"]}
    });
    CniResult::parse(&v).unwrap()
}

#[test]
fn config_parses_to_the_expected_model() {
    let conf = NetConf::parse(DUAL_STACK.as_bytes()).unwrap();
    golden("conf-dual-stack.txt", &format!("{conf:#?}\n"));
}

#[test]
fn conflist_on_stdin_uses_the_podnet_entry_with_list_name_and_version() {
    let list = r#"{"cniVersion": "0.4.0", "name": "list", "plugins": [
        {"type": "podnet", "ipam": {"subnet": "10.1.0.0/24"}}, {"type": "portmap"}]}"#;
    let conf = NetConf::parse(list.as_bytes()).unwrap();
    assert_eq!(
        (conf.name.as_str(), conf.version),
        ("list", CniVersion::V0_4_0)
    );
}

#[test]
fn cni_versions_picks_the_highest_supported() {
    let c = r#"{"cniVersions": ["0.4.0", "1.0.0", "7.0.0"], "name": "n", "ipam": {"subnet": "10.1.0.0/24"}}"#;
    assert_eq!(
        NetConf::parse(c.as_bytes()).unwrap().version,
        CniVersion::V1_0_0
    );
}

#[test]
fn result_renders_per_version() {
    let r = sample_result();
    for v in CniVersion::ALL {
        let text = serde_json::to_string_pretty(&r.render(v)).unwrap();
        golden(&format!("result-{v}.json"), &format!("{text}\n"));
    }
}

#[test]
fn rendered_result_parses_back_for_every_version() {
    let r = sample_result();
    for v in CniVersion::ALL {
        let back = CniResult::parse(&r.render(v)).unwrap();
        assert_eq!(back.ips, r.ips, "{v}");
        assert_eq!(back.interfaces.len(), 3, "{v}");
    }
}

#[test]
fn merge_shifts_interface_indexes() {
    let first = sample_result();
    let merged = first.clone().merge(sample_result());
    assert_eq!(merged.interfaces.len(), 6);
    assert_eq!(merged.ips[2].interface, Some(5));
}

#[test]
fn version_info_and_errors_render() {
    let text = serde_json::to_string_pretty(&render_version_info(CniVersion::V1_1_0)).unwrap();
    golden("version.json", &format!("{text}\n"));
    let e = CniError::new(ErrorCode::InvalidConfig, "bad").with_details("why");
    let text = serde_json::to_string_pretty(&e.render(CniVersion::V0_4_0)).unwrap();
    golden("error.json", &format!("{text}\n"));
}

fn code_of(stdin: &str) -> ErrorCode {
    NetConf::parse(stdin.as_bytes()).unwrap_err().code
}

#[test]
fn bad_configurations_get_the_spec_codes() {
    assert_eq!(code_of(""), ErrorCode::Decode);
    assert_eq!(code_of("{not json"), ErrorCode::Decode);
    assert_eq!(
        code_of(r#"{"cniVersion": "0.2.0", "name": "n", "ipam": {"subnet": "10.1.0.0/24"}}"#),
        ErrorCode::IncompatibleVersion
    );
    assert_eq!(
        code_of(r#"{"name": "n", "ipam": {"subnet": "10.1.0.0/24"}}"#),
        ErrorCode::IncompatibleVersion
    );
    assert_eq!(
        code_of(r#"{"cniVersion": "1.0.0", "ipam": {"subnet": "10.1.0.0/24"}}"#),
        ErrorCode::InvalidConfig
    );
    assert_eq!(
        code_of(r#"{"cniVersion": "1.0.0", "name": "../etc", "ipam": {"subnet": "10.1.0.0/24"}}"#),
        ErrorCode::InvalidConfig
    );
    assert_eq!(
        code_of(
            r#"{"cniVersion": "1.0.0", "name": "n", "mtu": "big", "ipam": {"subnet": "10.1.0.0/24"}}"#
        ),
        ErrorCode::InvalidConfig
    );
    assert_eq!(
        code_of(
            r#"{"cniVersion": "1.0.0", "name": "n", "mtu": 20, "ipam": {"subnet": "10.1.0.0/24"}}"#
        ),
        ErrorCode::InvalidConfig
    );
    assert_eq!(
        code_of(r#"{"cniVersion": "1.0.0", "name": "n"}"#),
        ErrorCode::InvalidConfig
    );
    assert_eq!(
        code_of(r#"{"cniVersion": "1.0.0", "name": "n", "ipam": {"subnet": "10.1.0.1/24"}}"#),
        ErrorCode::InvalidConfig
    );
    assert_eq!(
        code_of(
            r#"{"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "dhcp", "subnet": "10.1.0.0/24"}}"#
        ),
        ErrorCode::UnsupportedField
    );
    assert_eq!(
        code_of(
            r#"{"cniVersion": "1.0.0", "name": "n", "ipMasq": true, "ipam": {"subnet": "10.1.0.0/24"}}"#
        ),
        ErrorCode::UnsupportedField
    );
    assert_eq!(
        code_of(
            r#"{"cniVersion": "1.0.0", "name": "n", "ipam": {"subnet": "10.1.0.0/24"}, "runtimeConfig": {"mac": "01:00:00:00:00:00"}}"#
        ),
        ErrorCode::InvalidConfig
    );
    assert_eq!(
        code_of(
            r#"{"cniVersion": "1.0.0", "name": "n", "ipam": {"subnet": "10.1.0.0/24"}, "prevResult": {"ips": "x"}}"#
        ),
        ErrorCode::Decode
    );
    assert_eq!(
        version_for_errors(b"{\"cniVersion\": \"0.3.1\"}"),
        CniVersion::V0_3_1
    );
    assert_eq!(version_for_errors(b"garbage"), CniVersion::LATEST);
    assert_eq!(
        parse_version(br#"{"cniVersion": "0.3.0"}"#).unwrap(),
        CniVersion::V0_3_0
    );
}

#[test]
fn verbs_are_checked_against_the_version() {
    let env = |cmd: &'static str| {
        Environment::parse([
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/n"),
        ])
        .unwrap()
    };
    let conf = |v: &str, extra: &str| {
        NetConf::parse(format!(r#"{{"cniVersion": "{v}", "name": "n", "ipam": {{"subnet": "10.1.0.0/24"}}{extra}}}"#).as_bytes())
            .unwrap()
    };
    let code = |cmd, v, extra| Request::new(env(cmd), conf(v, extra)).unwrap_err().code;
    assert_eq!(code("CHECK", "0.3.1", ""), ErrorCode::IncompatibleVersion);
    assert_eq!(code("CHECK", "1.0.0", ""), ErrorCode::InvalidConfig);
    assert_eq!(code("STATUS", "1.0.0", ""), ErrorCode::IncompatibleVersion);
    assert_eq!(code("GC", "1.0.0", ""), ErrorCode::IncompatibleVersion);
    assert_eq!(code("GC", "1.1.0", ""), ErrorCode::InvalidConfig);
    let gc = Request::new(env("GC"), conf("1.1.0", r#", "cni.dev/attachments": []"#)).unwrap();
    assert_eq!(gc.conf.valid_attachments, Some(vec![]));
    let add = Request::new(env("ADD"), conf("0.3.0", "")).unwrap();
    assert_eq!(add.owner().unwrap().ifname, "eth0");
}
