//! Daybreak as it is deployed: the container image (Containerfile, scripts/container.sh) run by
//! podman with only NET_BIND_SERVICE and NET_RAW, and the systemd unit (dist/daybreak.service)
//! verified and its command run as the unit runs it. See tests/e2e/deploy.sh.

mod common;

use common::{require, run_e2e, BIN};

fn deploy(what: &str, tools: &[&str]) {
    if require(true, tools) {
        run_e2e("deploy.sh", &[what, BIN], "DEPLOY-PASS");
    }
}

/// The image holds the binary, its libraries and CA certificates (no shell), its entrypoint is
/// daybreak, and run by podman in a network namespace with every capability dropped but
/// NET_BIND_SERVICE and NET_RAW it serves ProxyDHCP, TFTP and HTTP.
#[test]
fn container_image_serves_with_two_capabilities() {
    deploy("container", &["podman", "runc", "ip", "curl"]);
}

/// The unit passes `systemd-analyze verify`, and its ExecStart, run as a user of its own with
/// ambient NET_BIND_SERVICE and NET_RAW only, serves ProxyDHCP, TFTP and HTTP.
#[test]
fn systemd_unit_runs_as_its_own_user_with_two_capabilities() {
    deploy("service", &["systemd-analyze", "setpriv", "ip", "curl"]);
}

/// Every object `kubectl kustomize deploy/kubernetes` renders, offline.
fn kustomize() -> Vec<serde_json::Value> {
    let root = common::workspace_root();
    let o = common::output_within(
        std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(root.join("deploy/kubernetes")),
        std::time::Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .split("\n---\n")
        .map(|doc| serde_saphyr::from_str(doc).unwrap())
        .collect()
}

/// Item: the Kubernetes deployment renders offline: Daybreak as a DaemonSet on the nodes of the
/// boot network with host networking and NET_BIND_SERVICE and NET_RAW only, its ConfigMaps and
/// the Secret for the etcd client, and a 3-member etcd; the container's command line is one
/// Daybreak takes, and the machines file is one a replica applies to etcd. (No Kubernetes
/// schema checker runs here: the objects' shapes are checked field by field.)
#[test]
fn kubernetes_manifests_render_offline_with_two_capabilities_and_a_working_command() {
    if !require(false, &["kubectl", "etcd", "etcdctl"]) {
        return;
    }
    let objects = kustomize();
    let kind = |k: &str| -> Vec<&serde_json::Value> {
        objects.iter().filter(|o| o["kind"] == k).collect()
    };
    let names = |k: &str| -> Vec<String> {
        kind(k)
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    for o in &objects {
        assert!(
            o["apiVersion"].is_string() && o["metadata"]["name"].is_string(),
            "{o}"
        );
        if o["kind"] != "Namespace" {
            assert_eq!(o["metadata"]["namespace"], "daybreak", "{o}");
        }
    }
    let ds = kind("DaemonSet");
    assert_eq!(ds.len(), 1);
    let pod = &ds[0]["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert!(pod["nodeSelector"]
        .as_object()
        .is_some_and(|m| !m.is_empty()));
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["NET_BIND_SERVICE", "NET_RAW"])
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert!(sc.get("privileged").is_none_or(|p| p == false));
    // What the pod names exists.
    let maps = names("ConfigMap");
    for v in pod["volumes"].as_array().unwrap() {
        if let Some(name) = v["configMap"]["name"].as_str() {
            assert!(maps.iter().any(|m| m == name), "{name} in {maps:?}");
        }
        if let Some(name) = v["secret"]["secretName"].as_str() {
            assert!(names("Secret").iter().any(|m| m == name), "{name}");
        }
    }
    let env_map = c["envFrom"][0]["configMapRef"]["name"].as_str().unwrap();
    let env = kind("ConfigMap")
        .into_iter()
        .find(|m| m["metadata"]["name"] == env_map)
        .unwrap();
    let store = env["data"]["DAYBREAK_STORE"].as_str().unwrap().to_string();
    assert!(
        store.starts_with("etcd://etcd-0.etcd.daybreak.svc:2379,"),
        "{store}"
    );
    let sts = kind("StatefulSet");
    assert_eq!(sts.len(), 1);
    assert_eq!(sts[0]["spec"]["replicas"], 3);
    assert!(kind("Service")
        .iter()
        .any(|s| s["metadata"]["name"] == "etcd" && s["spec"]["clusterIP"] == "None"));

    // The container's arguments are Daybreak's: every flag known (clap stops at an unknown
    // one before it reaches --help), the store URL one it reads.
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().replace("$(DAYBREAK_STORE)", &store))
        .collect();
    let o = common::output_within(
        std::process::Command::new(BIN).args(&args).arg("--help"),
        std::time::Duration::from_secs(20),
    );
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(store.parse::<daybreak::store::Location>().is_ok());
    // The machines file in the ConfigMap is one a replica applies to a real etcd.
    let config = kind("ConfigMap")
        .into_iter()
        .find(|m| m["data"]["machines.yaml"].is_string())
        .unwrap();
    let dir = common::tempdir("deploy-k8s");
    let file = dir.join("machines.yaml");
    std::fs::write(&file, config["data"]["machines.yaml"].as_str().unwrap()).unwrap();
    let Some(etcd) = testkit::Etcd::start("deploy-k8s-etcd") else {
        return;
    };
    let o = common::output_within(
        std::process::Command::new(BIN)
            .args(["machines", "apply"])
            .arg(&file)
            .arg("--store")
            .arg(format!("etcd://{}/daybreak", etcd.endpoint)),
        std::time::Duration::from_secs(20),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("(1 profile) applied"));
}
