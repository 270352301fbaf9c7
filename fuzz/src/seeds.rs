//! Writes the starting corpus of every fuzz target into DIR/<target>/, from the same shapes
//! the tests use: the DHCP requests of each firmware, TFTP exchanges (UEFI's size probe
//! included), request heads, OCI indexes and manifests, and tar layers with every entry type.
//! (ISO seeds are made by scripts/fuzz.sh with xorriso.)

use std::path::Path;

use pxe::message::{Message, MessageType};

fn put(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), data).unwrap();
}

fn dhcp(mtype: u8, giaddr: [u8; 4], options: &[(u8, &[u8])]) -> Vec<u8> {
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let opts = options.iter().map(|(c, v)| (*c, v.to_vec()));
    let mut m = Message::client_request(MessageType::from_u8(mtype), 0x1234_5678, mac, opts);
    (m.giaddr, m.secs) = (giaddr.into(), 4);
    m.encode()
}

fn tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn header(ty: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(ty);
    h.set_mode(0o755);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seeds DIR");
    let dir = Path::new(&dir);
    let uuid: Vec<u8> = (0..17).collect();
    let seeds: [(&str, Vec<u8>); 8] = [
        (
            "bios",
            dhcp(
                1,
                [0; 4],
                &[(93, &[0, 0]), (60, b"PXEClient:Arch:00000:UNDI:002001")],
            ),
        ),
        (
            "uefi",
            dhcp(1, [0; 4], &[(93, &[0, 7]), (60, b"PXEClient"), (97, &uuid)]),
        ),
        (
            "ipxe",
            dhcp(
                1,
                [0; 4],
                &[(93, &[0, 0]), (77, b"iPXE"), (175, &[0x13, 1, 1])],
            ),
        ),
        (
            "pixiecore",
            dhcp(1, [0; 4], &[(93, &[0, 7]), (77, b"pixiecore")]),
        ),
        (
            "httpboot",
            dhcp(1, [0; 4], &[(93, &[0, 16]), (60, b"HTTPClient")]),
        ),
        ("arm64", dhcp(1, [0; 4], &[(93, &[0, 11])])),
        ("relayed", dhcp(1, [10, 1, 2, 1], &[(93, &[0, 7])])),
        (
            "4011",
            dhcp(
                3,
                [0; 4],
                &[(93, &[0, 0]), (43, &[71, 4, 0x80, 0, 0, 0, 255])],
            ),
        ),
    ];
    for (name, data) in seeds {
        put(dir, "dhcp", name, &data);
    }

    use tftp::packet::{ack, error, rrq};
    let join = |parts: &[Vec<u8>]| parts.join(&0xfe_u8);
    let probe = rrq(
        "ipxe.efi",
        "octet",
        &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")],
    );
    put(
        dir,
        "tftp",
        "plain",
        &join(&[rrq("undionly.kpxe", "octet", &[]), ack(1), ack(2)]),
    );
    put(
        dir,
        "tftp",
        "uefi-probe",
        &join(&[probe.clone(), error(8, "User aborted")]),
    );
    put(
        dir,
        "tftp",
        "windowed",
        &join(&[probe, ack(0), ack(4), ack(3), ack(8)]),
    );
    put(
        dir,
        "tftp",
        "timeout",
        &rrq("ipxe.efi", "octet", &[("timeout", "255")]),
    );
    put(
        dir,
        "tftp",
        "netascii",
        &rrq("/boot\\x.efi", "netascii", &[]),
    );

    for (name, head) in [
        (
            "get",
            "GET /kernel HTTP/1.1\r\nHost: 10.0.0.1:8090\r\nRange: bytes=0-9\r\n\r\n",
        ),
        (
            "head",
            "HEAD /rootfs.squashfs HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        ),
        (
            "script",
            "GET /_/ipxe?arch=7&mac=52%3A54%3A00%3A12%3A34%3A56 HTTP/1.1\r\n\r\n",
        ),
        (
            "suffix",
            "GET http://x/a+b%20c.img HTTP/1.1\r\nRange: bytes=-100\r\nConnection: close\r\n\r\n",
        ),
        (
            "body",
            "POST /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
    ] {
        put(dir, "http_head", name, head.as_bytes());
    }

    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d('1'), "size": 500,
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": d('2'), "size": 500, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": d('3'), "size": 1, "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    let manifest = serde_json::json!({"schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d('4'), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d('5'), "size": 1000},
                   {"digest": d('6'), "size": 7}]});
    put(dir, "oci", "index", index.to_string().as_bytes());
    put(dir, "oci", "manifest", manifest.to_string().as_bytes());
    put(
        dir,
        "oci",
        "reference",
        b"quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.7.2",
    );

    use tar::EntryType as T;
    let kairos = tar(|b| {
        for (p, ty, data) in [
            ("boot/", T::Directory, &b""[..]),
            ("boot/vmlinuz-6.1.0-9-amd64", T::Regular, b"kernel"),
            ("boot/initrd.img-6.1.0-9-amd64", T::Regular, b"initrd"),
            ("etc/os-release", T::Regular, b"ID=kairos\n"),
            ("usr/lib/modules/6.1.0/vmlinuz", T::Regular, b"k"),
            ("usr/lib/modules/6.1.0/initramfs.img", T::Regular, b"i"),
        ] {
            b.append_data(&mut header(ty, data.len() as u64), p, data)
                .unwrap();
        }
        b.append_link(
            &mut header(T::Symlink, 0),
            "boot/vmlinuz",
            "vmlinuz-6.1.0-9-amd64",
        )
        .unwrap();
        b.append_link(&mut header(T::Symlink, 0), "lib", "usr/lib")
            .unwrap();
        b.append_link(
            &mut header(T::Link, 0),
            "etc/os-release.hard",
            "etc/os-release",
        )
        .unwrap();
        b.append_data(
            &mut header(T::Regular, 0),
            "lib/modules/.wh.6.0.0",
            &b""[..],
        )
        .unwrap();
        b.append_data(&mut header(T::Regular, 0), "etc/.wh..wh..opq", &b""[..])
            .unwrap();
        b.append_data(&mut header(T::Fifo, 0), "run/fifo", &b""[..])
            .unwrap();
        b.append_pax_extensions([("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02"[..])])
            .unwrap();
        b.append_data(&mut header(T::Regular, 1), "usr/bin/ping", &b"p"[..])
            .unwrap();
        let long = format!("{}/f", vec!["d"; 60].join("/"));
        b.append_data(&mut header(T::Regular, 1), long, &b"x"[..])
            .unwrap();
    });
    put(dir, "layer", "kairos", &kairos);
    // What a shared store holds: profiles as `daybreak machines apply` writes them, a member.
    for (name, text) in [
        (
            "profiles",
            r#"[{"mac":"52:54:00:00:00:01","hostname":"edge-1","cloud_config":"c","container_image":"quay.io/kairos/ubuntu:24.04"}]"#,
        ),
        (
            "profiles-machines",
            r#"{"machines":[{"arch":"arm64","iso":"https://example.invalid/k.iso"},{"action":"live"}]}"#,
        ),
        ("local", r#"[{"kernel":"/etc/shadow"}]"#),
        (
            "member",
            r#"{"id":"host-1a2b3c","addresses":["10.0.0.2"],"version":"0.1.0","started":1}"#,
        ),
    ] {
        put(dir, "shared_store", name, text.as_bytes());
    }
}
