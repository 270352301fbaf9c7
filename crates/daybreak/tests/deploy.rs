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
