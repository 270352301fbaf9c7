//! Credentials never go out in the clear to a place the registry names: a bearer challenge whose
//! token realm is plain HTTP on another host gets a token request without them; a realm on
//! HTTPS, or on the registry's own origin, gets them. (Its own test binary: it sets
//! DOCKER_CONFIG for the whole process.)

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use artifacts::oci::Reference;
use artifacts::registry::Client;

/// Each request's path and Authorization header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A server answering every request with `respond(path)`, recording what it was sent.
fn server(respond: impl Fn(&str) -> String + Send + 'static) -> (String, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(50) {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut auth = None;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.trim().strip_prefix("Authorization: ") {
                    auth = Some(v.to_string());
                }
                if let Some(v) = h.trim().strip_prefix("authorization: ") {
                    auth = Some(v.to_string());
                }
            }
            log.lock().unwrap().push((path.clone(), auth));
            let _ = s.write_all(respond(&path).as_bytes());
        }
    });
    (addr, seen)
}

#[test]
fn credentials_are_not_sent_to_a_plain_http_realm_elsewhere() {
    let dir = testkit::tempdir("auth-realm");
    std::fs::write(
        dir.join("config.json"),
        // user:secret
        r#"{"auths":{"REG":{"auth":"dXNlcjpzZWNyZXQ="}}}"#,
    )
    .unwrap();
    // The token realm: another origin, plain HTTP.
    let (token_addr, token_seen) = server(|_| {
        let body = r#"{"token":"t0k"}"#;
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    });
    let realm = format!("http://{token_addr}/token");
    let manifest = r#"{"schemaVersion":2,"manifests":[]}"#;
    let (reg_addr, _) = server(move |path| {
        if path.starts_with("/v2/") {
            // Every request is challenged; the test only looks at what reaches the realm.
            format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"r\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{manifest}",
                manifest.len()
            )
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
        }
    });
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("REG", &reg_addr);
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    std::env::set_var("DOCKER_CONFIG", &dir);
    let client = Client::new(
        &Reference::parse(&format!("{reg_addr}/test/img:v1")).unwrap(),
        false,
    );
    let _ = client.manifest_by_tag("v1");
    let seen = token_seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the realm was asked for a token");
    for (path, auth) in &seen {
        assert!(
            auth.is_none(),
            "{path}: credentials went to a plain-HTTP realm: {auth:?}"
        );
    }
}

/// A registry whose token challenge cannot be met: the error says what went wrong, at once
/// (asking again cannot help), with the registry's name.
#[test]
fn a_token_that_cannot_be_had_is_explained() {
    let (realm_addr, _) = server(|_| {
        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
    });
    let cases = [
        (
            format!("Bearer realm=\"http://{realm_addr}/token\",service=\"r\""),
            "the registry refused access (HTTP 401). Log in with `docker login".to_string(),
        ),
        (
            "Bearer realm=\"file:///etc/passwd\"".to_string(),
            "token realm that is not an http(s) URL: \"file:///etc/passwd\"".to_string(),
        ),
        (
            "Bearer service=\"r\"".to_string(),
            "asked for a token without naming a realm".to_string(),
        ),
    ];
    for (challenge, expected) in cases {
        let (reg_addr, _) = server(move |_| {
            format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        });
        let client = Client::new(
            &Reference::parse(&format!("{reg_addr}/test/img:v1")).unwrap(),
            false,
        );
        let err = client.manifest_by_tag("v1").unwrap_err().to_string();
        assert!(err.contains(&expected), "{err}");
        assert!(err.contains(&reg_addr), "names the registry: {err}");
    }
}
