//! A decompression bomb (200 MB of zeros in a 10 KB zstd layer) is stopped by the ratio limit
//! as it streams, long before it is unpacked, with an error that names the layer.

use std::io::Read;

use artifacts::build::{self, BuildError};
use artifacts::oci::LayerBlob;
use artifacts::Compression;

#[test]
fn a_decompression_bomb_is_stopped_while_it_streams() {
    let dir = testkit::tempdir("bomb");
    let enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    let mut b = tar::Builder::new(enc);
    let mut h = tar::Header::new_gnu();
    let size = 200u64 << 20;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "zeros", std::io::repeat(0).take(size))
        .unwrap();
    let layer = b.into_inner().unwrap().finish().unwrap();
    assert!(layer.len() < 100_000, "{} bytes", layer.len());
    let path = dir.join("layer.tar.zst");
    std::fs::write(&path, &layer).unwrap();
    let blob = LayerBlob {
        path,
        offset: 0,
        size: layer.len() as u64,
        digest: None,
        name: "sha256:bomb".into(),
    };
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let e = build::from_layers(
        1,
        &mut |_| Ok(blob.clone()),
        &out,
        Compression::Gzip,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(matches!(e, BuildError::Limit { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("decompression bomb") && msg.contains("sha256:bomb"),
        "{msg}"
    );
}
