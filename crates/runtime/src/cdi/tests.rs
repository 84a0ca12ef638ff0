use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxDeviceType, Mount, Process, Spec};

use super::*;

fn base_spec() -> Spec {
    let mut process = Process::default();
    process.set_env(Some(vec!["PATH=/bin".into(), "MODE=image".into()]));
    process.user_mut().set_uid(1000).set_gid(1000);
    let mut spec = Spec::default();
    spec.set_process(Some(process));
    let mut proc_mount = Mount::default();
    proc_mount.set_destination("/proc".into()).set_typ(Some("proc".into()));
    spec.set_mounts(Some(vec![proc_mount]));
    spec
}

fn write(dir: &std::path::Path, name: &str, text: &str) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), text).unwrap();
}

const NULL_SPEC: &str = r#"{
  "cdiVersion": "0.6.0",
  "kind": "example.com/fake",
  "containerEdits": {"env": ["FAKE_VENDOR=1"]},
  "devices": [
    {"name": "null0", "containerEdits": {
      "deviceNodes": [{"path": "/dev/fake0", "hostPath": "/dev/null", "permissions": "rw"}],
      "env": ["MODE=cdi", "FAKE_DEVICE=null0"],
      "mounts": [{"hostPath": "/etc/hostname", "containerPath": "/run/fake/name", "options": ["ro", "bind"]}],
      "additionalGids": [0, 44]
    }},
    {"name": "hooked", "containerEdits": {
      "hooks": [{"hookName": "createContainer", "path": "/bin/true", "args": ["true", "x"]}]
    }}
  ]
}"#;

#[test]
fn requested_names_come_from_the_field_then_the_annotations_once_each() {
    let mut annotations = BTreeMap::new();
    annotations.insert("cdi.k8s.io/plugin".to_string(), "b.com/x=2, a.com/x=1".to_string());
    annotations.insert("other/key".to_string(), "not=cdi".to_string());
    let names = requested(&["a.com/x=1".to_string()], &annotations).unwrap();
    assert_eq!(names, ["a.com/x=1", "b.com/x=2"]);
    annotations.insert("cdi.k8s.io/bad".to_string(), "nodevice".to_string());
    let err = requested(&[], &annotations).unwrap_err().to_string();
    assert!(err.contains("cdi.k8s.io/bad"), "{err}");
    assert!(requested(&["vendor.com/class=".to_string()], &BTreeMap::new()).is_err());
    assert!(requested(&["1vendor/class=a".to_string()], &BTreeMap::new()).is_err());
}

#[test]
fn qualified_names_follow_the_spec() {
    assert_eq!(parse_qualified("nvidia.com/gpu=0").unwrap(), ("nvidia.com", "gpu", "0"));
    assert!(parse_qualified("nvidia.com/gpu=all:mig-1.2").is_ok());
    assert!(parse_qualified("nvidia.com/gpu").is_err());
    assert!(parse_qualified("nvidia.com=0").is_err());
    assert!(parse_qualified("nvidia.com/gpu=-0").is_err());
    assert!(parse_qualified("nvidia.com./gpu=0").is_err());
}

#[test]
fn a_device_brings_its_spec_edits_and_its_own() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "fake.json", NULL_SPEC);
    let mut oci = base_spec();
    inject(&mut oci, &[dir.path().to_path_buf()], &["example.com/fake=null0".into()]).unwrap();

    let process = oci.process().as_ref().unwrap();
    let env = process.env().as_ref().unwrap();
    assert!(env.contains(&"MODE=cdi".to_string()), "{env:?}");
    assert!(!env.contains(&"MODE=image".to_string()), "{env:?}");
    assert!(env.contains(&"FAKE_VENDOR=1".to_string()));
    assert!(env.contains(&"FAKE_DEVICE=null0".to_string()));
    // Group 0 is never handed out by a device.
    assert_eq!(process.user().additional_gids().as_deref(), Some(&[44][..]));

    let linux = oci.linux().as_ref().unwrap();
    let device = &linux.devices().as_ref().unwrap()[0];
    assert_eq!(device.path(), &PathBuf::from("/dev/fake0"));
    assert_eq!((device.typ(), device.major(), device.minor()), (LinuxDeviceType::C, 1, 3));
    // The container's user owns it, so that it can open it.
    assert_eq!((device.uid(), device.gid()), (Some(1000), Some(1000)));
    let rule = &linux.resources().as_ref().unwrap().devices().as_ref().unwrap()[0];
    assert!(rule.allow());
    assert_eq!((rule.major(), rule.minor()), (Some(1), Some(3)));
    assert_eq!(rule.access().as_deref(), Some("rw"));

    let mounts = oci.mounts().as_ref().unwrap();
    let added = mounts.iter().find(|m| m.destination() == &PathBuf::from("/run/fake/name"));
    let added = added.expect("the device's mount");
    assert_eq!(added.typ().as_deref(), Some("bind"));
    assert_eq!(added.source().as_deref(), Some(std::path::Path::new("/etc/hostname")));
    assert_eq!(mounts[0].destination(), &PathBuf::from("/proc"));
}

#[test]
fn hooks_land_in_the_list_of_their_name() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "fake.json", NULL_SPEC);
    let mut oci = base_spec();
    inject(&mut oci, &[dir.path().to_path_buf()], &["example.com/fake=hooked".into()]).unwrap();
    let hooks = oci.hooks().as_ref().unwrap();
    let list = hooks.create_container().as_ref().unwrap();
    assert_eq!(list[0].path(), &PathBuf::from("/bin/true"));
    assert!(hooks.start_container().is_none());
}

#[test]
fn yaml_files_are_read_and_a_later_directory_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (etc, run) = (dir.path().join("etc"), dir.path().join("run"));
    write(
        &etc,
        "a.yaml",
        "cdiVersion: 0.5.0\nkind: example.com/fake\ndevices:\n- name: one\n  containerEdits:\n    env: [WHO=etc]\n",
    );
    write(
        &run,
        "a.yaml",
        "cdiVersion: 0.5.0\nkind: example.com/fake\ndevices:\n- name: one\n  containerEdits:\n    env: [WHO=run]\n",
    );
    let mut oci = base_spec();
    inject(&mut oci, &[etc, run], &["example.com/fake=one".into()]).unwrap();
    let env = oci.process().as_ref().unwrap().env().clone().unwrap();
    assert!(env.contains(&"WHO=run".to_string()), "{env:?}");
}

#[test]
fn a_device_two_files_of_one_directory_define_is_refused_with_both_named() {
    let dir = tempfile::tempdir().unwrap();
    let one = "cdiVersion: 0.5.0\nkind: example.com/fake\ndevices:\n- name: one\n  containerEdits:\n    env: [A=1]\n";
    write(dir.path(), "a.yaml", one);
    write(dir.path(), "b.yaml", one);
    let err = inject(&mut base_spec(), &[dir.path().into()], &["example.com/fake=one".into()])
        .unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("a.yaml") && text.contains("b.yaml"), "{text}");
}

#[test]
fn an_unknown_device_names_the_directories_and_the_unusable_files() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "broken.json",
        "{\"cdiVersion\": \"9.0.0\", \"kind\": \"a.com/b\", \"devices\": []}",
    );
    write(dir.path(), "notes.txt", "ignored");
    let missing = dir.path().join("missing");
    let err = inject(
        &mut base_spec(),
        &[dir.path().into(), missing],
        &["example.com/fake=nothing".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("example.com/fake=nothing"), "{err}");
    assert!(err.contains("broken.json") && err.contains("9.0.0"), "{err}");
    assert!(!err.contains("notes.txt"), "{err}");
}

#[test]
fn bad_spec_files_are_refused_with_the_reason() {
    let path = std::path::Path::new("x.json");
    let cases = [
        (
            r#"{"cdiVersion":"0.2.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"env":["A=1"]}}]}"#,
            "0.2.0",
        ),
        (
            r#"{"cdiVersion":"0.6.0","kind":"a.com","devices":[{"name":"x","containerEdits":{"env":["A=1"]}}]}"#,
            "vendor/class",
        ),
        (
            r#"{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"env":["A"]}}]}"#,
            "KEY=VALUE",
        ),
        (
            r#"{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{}}]}"#,
            "no containerEdits",
        ),
        (
            r#"{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"env":["A=1"]}},{"name":"x","containerEdits":{"env":["A=1"]}}]}"#,
            "twice",
        ),
        (
            r#"{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"hooks":[{"hookName":"later","path":"/x"}]}}]}"#,
            "hook name",
        ),
        (
            r#"{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"deviceNodes":[{"path":"/dev/x","permissions":"rwx"}]}}]}"#,
            "rwm",
        ),
    ];
    for (text, expected) in cases {
        let err = spec::parse(path, text).unwrap_err();
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn a_device_node_the_host_lacks_must_be_described_in_full() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.json",
        r#"{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[
          {"name":"full","containerEdits":{"deviceNodes":[{"path":"/dev/nothere","type":"c","major":10,"minor":200}]}},
          {"name":"partial","containerEdits":{"deviceNodes":[{"path":"/dev/nothere"}]}}]}"#,
    );
    let dirs = [dir.path().to_path_buf()];
    inject(&mut base_spec(), &dirs, &["a.com/b=full".into()]).unwrap();
    let err = inject(&mut base_spec(), &dirs, &["a.com/b=partial".into()]).unwrap_err();
    assert!(err.to_string().contains("/dev/nothere"), "{err}");
}
