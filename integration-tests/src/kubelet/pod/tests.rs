use super::env::EnvError;
use super::spec::{image_default_args, node_selector_matches, ImageError, PrepareError};
use super::volumes::VolumeError;
use super::{expand, image_binary, map_mounts, map_mounts_in_text};
use crate::kubelet::KubeletOptions;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

#[test]
fn expansion_and_mount_mapping() {
    let vars = HashMap::from([("A".to_string(), "x".to_string())]);
    assert_eq!(expand("$(A)/$(B)", &vars), "x/$(B)");
    let mounts = vec![("/var/run/job".to_string(), PathBuf::from("/tmp/p/job"))];
    assert_eq!(map_mounts("/var/run/job", &mounts), "/tmp/p/job");
    assert_eq!(map_mounts("/var/run/job/token", &mounts), "/tmp/p/job/token");
    assert_eq!(map_mounts("/var/run/jobs", &mounts), "/var/run/jobs");
}

#[test]
fn mount_paths_in_mounted_files_map_as_whole_paths() {
    let mounts = vec![
        ("/etc/job-manager".to_string(), PathBuf::from("/w/config")),
        ("/data".to_string(), PathBuf::from("/w/claim")),
    ];
    let text = "file: \"/etc/job-manager/vars.json\"\nmountPath: /data\nurl: http://x/data\nother: /database\n";
    assert_eq!(
        map_mounts_in_text(text, &mounts),
        "file: \"/w/config/vars.json\"\nmountPath: /w/claim\nurl: http://x/data\nother: /database\n"
    );
    assert_eq!(map_mounts_in_text(r#"{"p":"/data"}"#, &mounts), r#"{"p":"/w/claim"}"#);
}

#[test]
fn images_map_to_binaries_by_repository() {
    let opts = KubeletOptions {
        images: vec![("sidecar".into(), "/bin/sidecar".into()), ("runtime".into(), "/bin/rt".into())],
        ..KubeletOptions::without_binaries()
    };
    assert_eq!(image_binary(&opts, "reg.io/newrelic/serverless-sidecar:latest"), Some("/bin/sidecar".into()));
    assert_eq!(image_binary(&opts, "newrelic/synthetics-node-api-runtime:1.2"), Some("/bin/rt".into()));
    assert_eq!(image_binary(&opts, "nginx:runtime"), None, "tags do not count");
    assert_eq!(image_binary(&opts, "busybox"), None);
}

#[test]
fn image_default_args_apply_only_without_command_or_args() {
    let opts = KubeletOptions {
        image_args: vec![("persistent".into(), vec!["--serve".into()])],
        ..KubeletOptions::without_binaries()
    };
    assert_eq!(image_default_args(&opts, &json!({"image": "rt-persistent:1"})), vec!["--serve"]);
    assert!(image_default_args(&opts, &json!({"image": "rt-persistent:1", "args": ["x"]})).is_empty());
    assert!(image_default_args(&opts, &json!({"image": "other:1"})).is_empty());
}

#[test]
fn node_selectors_must_match_the_node() {
    let labels = BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())]);
    assert!(node_selector_matches(&json!({"spec": {}}), &labels));
    assert!(node_selector_matches(&json!({"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}}), &labels));
    assert!(!node_selector_matches(&json!({"spec": {"nodeSelector": {"gpu": "yes"}}}), &labels));
}

/// One container that cannot start yet: the waiting reason and message the kubelet shows.
struct Blocked {
    error: PrepareError,
    reason: &'static str,
    message: &'static str,
}

#[test]
fn blocked_containers_show_the_kubelets_reason_and_message() {
    let cases = [
        Blocked {
            error: VolumeError::SecretNotFound { volume: "creds".into(), secret: "s".into() }.into(),
            reason: "ContainerCreating",
            message: r#"MountVolume.SetUp failed for volume "creds" : secret "s" not found"#,
        },
        Blocked {
            error: VolumeError::ConfigMapNotFound { volume: "cfg".into(), config_map: "c".into() }.into(),
            reason: "ContainerCreating",
            message: r#"MountVolume.SetUp failed for volume "cfg" : configmap "c" not found"#,
        },
        Blocked {
            error: ImageError::NotBuilt { image: "rt:1".into(), binary: "/bin/rt".into() }.into(),
            reason: "ErrImagePull",
            message: r#"Failed to pull image "rt:1": binary /bin/rt is not built"#,
        },
        Blocked {
            error: ImageError::NotFound { image: "busybox".into() }.into(),
            reason: "ErrImagePull",
            message: r#"Failed to pull image "busybox": rpc error: code = NotFound desc = failed to pull and unpack image: not found"#,
        },
        Blocked {
            error: EnvError::Secret { name: "s".into() }.into(),
            reason: "CreateContainerConfigError",
            message: r#"secret "s" not found"#,
        },
        Blocked {
            error: EnvError::ConfigMap { name: "c".into() }.into(),
            reason: "CreateContainerConfigError",
            message: r#"configmap "c" not found"#,
        },
        Blocked {
            error: EnvError::SecretKey { namespace: "ns".into(), secret: "s".into(), key: "k".into() }.into(),
            reason: "CreateContainerConfigError",
            message: "couldn't find key k in Secret ns/s",
        },
        Blocked {
            error: EnvError::ConfigMapKey { name: "c".into(), key: "k".into() }.into(),
            reason: "CreateContainerConfigError",
            message: r#"configmap "c" or its key k not found"#,
        },
    ];
    for case in cases {
        assert_eq!(case.error.reason(), case.reason, "{}", case.message);
        assert_eq!(case.error.to_string(), case.message);
    }
}
