//! What each firmware loads, decided once, in one pure function: from what the kernel is
//! (architecture, signature), which architectures something else may boot (a profile's image, a
//! multi-arch image), what the operator chose (`--ipxe-*`, `--efi-ipxe`) and the image's own
//! signed chain, [`loaders`] gives the files TFTP
//! (and HTTP Boot) serve and the boot file names the ProxyDHCP answers carry, with the lines
//! worth logging about it. Reading the operator's files is [`Given::read`]'s.

use std::path::Path;

use anyhow::Context as _;
use bytes::Bytes;
use pxe::{BootFiles, CpuArch};

use crate::ipxe::{names, EfiBuild};
use crate::kernel::KernelFacts;

/// The operator's own binaries, read at start.
#[derive(Debug, Clone, Default)]
pub struct Given {
    pub bios: Option<Bytes>,
    pub efi64: Option<Bytes>,
    pub arm64: Option<Bytes>,
    /// The built-in iPXE for UEFI x64, when `efi64` names no file.
    pub efi_build: Option<EfiBuild>,
}

/// Names the operator's binaries are served under.
const CUSTOM_BIOS: &str = "custom-bios.kpxe";
const CUSTOM_X64: &str = "custom-x64.efi";
const CUSTOM_ARM64: &str = "custom-arm64.efi";
/// The largest loader read into memory (an image's shim or GRUB, a given iPXE): real ones are
/// a few MiB.
pub const MAX_LOADER: u64 = 32 << 20;

impl Given {
    /// Whether the operator chose the UEFI x64 binary (`--efi-ipxe`, `--ipxe-efi64`): then no
    /// Secure Boot chain is offered in its place.
    pub fn chose_uefi_binary(&self) -> bool {
        self.efi_build.is_some() || self.efi64.is_some()
    }

    /// Reads `--ipxe-bios`, `--ipxe-efi64` and `--ipxe-arm64`; an unreadable or empty file is
    /// an error that names the flag.
    pub fn read(
        bios: Option<&Path>,
        efi64: Option<&Path>,
        arm64: Option<&Path>,
        efi_build: Option<EfiBuild>,
    ) -> anyhow::Result<Given> {
        let read = |p: Option<&Path>, what: &str| -> anyhow::Result<Option<Bytes>> {
            let Some(p) = p else { return Ok(None) };
            let data = std::fs::read(p)
                .with_context(|| format!("cannot read {what} iPXE binary {}", p.display()))?;
            anyhow::ensure!(
                !data.is_empty(),
                "{what} iPXE binary {} is empty",
                p.display()
            );
            Ok(Some(data.into()))
        };
        Ok(Given {
            bios: read(bios, "--ipxe-bios")?,
            efi64: read(efi64, "--ipxe-efi64")?,
            arm64: read(arm64, "--ipxe-arm64")?,
            efi_build,
        })
    }
}

/// The image's own Secure Boot chain: its distribution's signed shim and network GRUB, which
/// trust its kernel.
#[derive(Debug, Clone)]
pub struct Chain {
    pub shim: Bytes,
    pub grub: Bytes,
    /// Where they come from, for the log.
    pub from: String,
}

/// What the choice is made from.
#[derive(Debug, Clone)]
pub struct Setup<'a> {
    /// The command's kernel; `None` when each machine's kernel is an API's to name.
    pub kernel: Option<KernelFacts>,
    /// Architectures something besides the kernel may boot (profiles' images, a multi-arch
    /// image's other variants).
    pub others: &'a [CpuArch],
    pub given: &'a Given,
    pub chain: Option<&'a Chain>,
    /// Where GRUB on the Secure Boot chain reads its configuration.
    pub http: pxe::HttpAddress,
}

/// A line worth logging about the choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Info(String),
    Warn(String),
}

/// The choice.
#[derive(Debug, Clone)]
pub struct Loaders {
    /// What TFTP serves, by name (and HTTP Boot, under `/ipxe/NAME`).
    pub files: tftp::Files,
    /// The boot file names the ProxyDHCP answers carry, per firmware.
    pub boot: BootFiles,
    pub notes: Vec<Note>,
    /// What a machine whose own kernel is signed gets where each machine's kernel is an API's
    /// to name ([`pxe::driver::Allowed::Chain`]): `boot`, with the Secure Boot chain for UEFI
    /// x64 PXE.
    pub chain: Option<BootFiles>,
}

/// What each firmware loads.
pub fn loaders(s: &Setup<'_>) -> Loaders {
    let mut files = crate::ipxe::builtin();
    let mut boot = BootFiles::default();
    let mut notes = Vec::new();
    let g = s.given;
    for (bytes, name, slot) in [
        (&g.bios, CUSTOM_BIOS, &mut boot.bios),
        (&g.efi64, CUSTOM_X64, &mut boot.efi_x64),
        (&g.arm64, CUSTOM_ARM64, &mut boot.efi_arm64),
    ] {
        if let Some(b) = bytes {
            files.insert(name.into(), b.clone());
            *slot = Some(name.into());
        }
    }
    if g.efi64.is_none() && g.efi_build == Some(EfiBuild::Snponly) {
        boot.efi_x64 = Some(names::SNPONLY.into());
    }
    let Some(kernel) = s.kernel else {
        let chain = per_machine_chain(s, &mut files, &boot);
        return Loaders {
            files,
            boot,
            notes,
            chain,
        };
    };
    let arch = kernel.arch.unwrap_or(CpuArch::Amd64);
    // Machines of an architecture get a loader only when there is a kernel for them.
    let serves = |a: CpuArch| arch == a || s.others.contains(&a);
    if boot.efi_arm64.is_none() && serves(CpuArch::Arm64) {
        boot.efi_arm64 = Some(names::ARM64.into());
    }
    if !serves(CpuArch::Amd64) {
        if g.bios.is_none() {
            (boot.bios, boot.bios_ipxe) = (None, None);
        }
        if g.efi64.is_none() {
            boot.efi_x64 = None;
        }
    }
    let answered: Vec<&str> = [
        (CpuArch::Amd64, "x86-64 (BIOS and UEFI)"),
        (CpuArch::Arm64, "arm64 (UEFI)"),
    ]
    .into_iter()
    .filter(|(a, _)| serves(*a))
    .map(|(_, n)| n)
    .collect();
    notes.push(Note::Info(format!(
        "machines answered: {} (the kernel is {})",
        answered.join(", "),
        arch
    )));
    secure_boot(s, kernel, arch, &mut files, &mut boot, &mut notes);
    Loaders {
        files,
        boot,
        notes,
        chain: None,
    }
}

/// No kernel for everyone (an API names each machine's): the chain is ready for the machines
/// whose kernel turns out signed, unless the operator chose the UEFI binary.
fn per_machine_chain(
    s: &Setup<'_>,
    files: &mut tftp::Files,
    boot: &BootFiles,
) -> Option<BootFiles> {
    if s.given.chose_uefi_binary() {
        return None;
    }
    let stub = crate::render::grub_stub(s.http);
    files.insert(names::GRUB_CFG.into(), stub.into_bytes().into());
    Some(BootFiles {
        efi_x64_signed: Some(names::SHIM.into()),
        ..boot.clone()
    })
}

/// A signed kernel: UEFI x64 PXE machines get the signed chain (shim, GRUB), which boots
/// whether or not the firmware enforces Secure Boot; iPXE, unsigned, would be refused where it
/// does. In every command (pixiecore's too: its compatibility is its commands and log lines,
/// not its limits), unless the operator chose the UEFI binary.
fn secure_boot(
    s: &Setup<'_>,
    kernel: KernelFacts,
    arch: CpuArch,
    files: &mut tftp::Files,
    boot: &mut BootFiles,
    notes: &mut Vec<Note>,
) {
    if arch != CpuArch::Amd64 {
        return;
    }
    if !kernel.signed {
        notes.push(Note::Warn("the kernel carries no Secure Boot signature: UEFI machines that enforce Secure Boot will refuse to boot (iPXE is unsigned too); serve a signed kernel for them".into()));
        return;
    }
    if s.given.chose_uefi_binary() {
        notes.push(Note::Info("the kernel carries a Secure Boot signature, but the UEFI binary was chosen (--efi-ipxe, --ipxe-efi64): UEFI machines that enforce Secure Boot will refuse it".into()));
        return;
    }
    boot.efi_x64_signed = Some(names::SHIM.into());
    // GRUB asks for its machine's own configuration by HTTP.
    let stub = crate::render::grub_stub(s.http);
    files.insert(names::GRUB_CFG.into(), stub.into_bytes().into());
    // The image's own shim and GRUB trust its distribution's kernels; the built-in ones trust
    // Debian's.
    if let Some(c) = s.chain {
        files.insert(names::SHIM.into(), c.shim.clone());
        files.insert(names::GRUB.into(), c.grub.clone());
        notes.push(Note::Info(format!(
            "the Secure Boot chain is the image's own shim and network GRUB ({}), which trust its kernel",
            c.from
        )));
    }
    notes.push(Note::Info("the kernel carries a Secure Boot signature: UEFI x64 PXE machines get shim, then GRUB, then the kernel over HTTP (Secure Boot on or off)".into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the answers carry: (bios, bios_ipxe, efi_x64, efi_arm64, efi_x64_signed).
    type Files = [Option<&'static str>; 5];
    /// (kernel, other architectures, the operator's files) -> what the answers carry.
    type Row<'a> = (Option<KernelFacts>, &'a [CpuArch], &'a Given, Files);

    fn files(l: &Loaders) -> [Option<String>; 5] {
        let b = &l.boot;
        [
            b.bios.clone(),
            b.bios_ipxe.clone(),
            b.efi_x64.clone(),
            b.efi_arm64.clone(),
            b.efi_x64_signed.clone(),
        ]
    }

    #[test]
    fn every_firmware_gets_its_loader_in_every_case() {
        const X86: Files = [
            Some("undionly.kpxe"),
            Some("ipxe.pxe"),
            Some("ipxe.efi"),
            None,
            None,
        ];
        const X86_SIGNED: Files = [
            Some("undionly.kpxe"),
            Some("ipxe.pxe"),
            Some("ipxe.efi"),
            None,
            Some("shimx64.efi"),
        ];
        const ARM: Files = [None, None, None, Some("ipxe-arm64.efi"), None];
        const BOTH: Files = [
            Some("undionly.kpxe"),
            Some("ipxe.pxe"),
            Some("ipxe.efi"),
            Some("ipxe-arm64.efi"),
            None,
        ];
        const BOTH_SIGNED: Files = [
            Some("undionly.kpxe"),
            Some("ipxe.pxe"),
            Some("ipxe.efi"),
            Some("ipxe-arm64.efi"),
            Some("shimx64.efi"),
        ];
        const OWN: Files = [
            Some("custom-bios.kpxe"),
            Some("ipxe.pxe"),
            Some("custom-x64.efi"),
            None,
            None,
        ];
        const OWN_ARM: Files = [
            Some("custom-bios.kpxe"),
            Some("ipxe.pxe"),
            Some("custom-x64.efi"),
            Some("custom-arm64.efi"),
            None,
        ];
        const SNP: Files = [
            Some("undionly.kpxe"),
            Some("ipxe.pxe"),
            Some("snponly.efi"),
            None,
            None,
        ];
        let amd = |signed| {
            Some(KernelFacts {
                signed,
                arch: Some(CpuArch::Amd64),
            })
        };
        let arm = |signed| {
            Some(KernelFacts {
                signed,
                arch: Some(CpuArch::Arm64),
            })
        };
        let built_in = Given::default();
        let own = Given {
            bios: Some(Bytes::from_static(b"bios")),
            efi64: Some(Bytes::from_static(b"MZx64")),
            arm64: Some(Bytes::from_static(b"MZarm")),
            efi_build: None,
        };
        let own_x86 = Given {
            arm64: None,
            ..own.clone()
        };
        let snp = Given {
            efi_build: Some(EfiBuild::Snponly),
            ..Given::default()
        };
        let amd64 = [CpuArch::Amd64];
        let arm64 = [CpuArch::Arm64];
        let rows: Vec<Row> = vec![
            // Every command (pixiecore's start-pixie and boot too): the kernel decides, the
            // signature brings the chain.
            (amd(false), &[], &built_in, X86),
            (amd(true), &[], &built_in, X86_SIGNED),
            (arm(false), &[], &built_in, ARM),
            (arm(true), &[], &built_in, ARM),
            (amd(false), &arm64, &built_in, BOTH),
            (amd(true), &arm64, &built_in, BOTH_SIGNED),
            (arm(false), &amd64, &built_in, BOTH),
            // An unknown kernel is taken for x86-64.
            (Some(KernelFacts::default()), &[], &built_in, X86),
            // The operator's binaries win, and a chosen UEFI binary means no chain.
            (amd(true), &[], &own_x86, OWN),
            (arm(false), &[], &own, OWN_ARM),
            (amd(true), &[], &snp, SNP),
            // API mode: the API names each kernel; every built-in x86-64 loader.
            (None, &[], &built_in, X86),
            (None, &[], &own, OWN_ARM),
        ];
        for (i, (kernel, others, given, want)) in rows.into_iter().enumerate() {
            let l = loaders(&Setup {
                kernel,
                others,
                given,
                chain: None,
                http: pxe::HttpAddress::default(),
            });
            let want = want.map(|f| f.map(str::to_string));
            assert_eq!(files(&l), want, "row {i}");
            // Every name an answer carries is a file TFTP serves.
            for name in files(&l).into_iter().flatten() {
                assert!(l.files.contains_key(&name), "row {i}: {name} is not served");
            }
            let has_stub = l.files.contains_key(names::GRUB_CFG);
            let chain = l.boot.efi_x64_signed.is_some() || l.chain.is_some();
            assert_eq!(has_stub, chain, "row {i}");
            // Without a kernel for everyone (an API names each machine's), the chain is ready
            // for a machine whose kernel is signed, unless the UEFI binary was chosen.
            if kernel.is_none() {
                let chosen = given.efi_build.is_some() || given.efi64.is_some();
                assert_eq!(l.chain.is_none(), chosen, "row {i}");
                if let Some(c) = &l.chain {
                    assert_eq!(c.efi_x64_signed.as_deref(), Some(names::SHIM), "row {i}");
                    for name in [names::SHIM, names::GRUB] {
                        assert!(l.files.contains_key(name), "row {i}: {name} is not served");
                    }
                }
            }
        }
    }

    #[test]
    fn the_images_own_chain_replaces_the_built_in_one_and_the_log_says_so() {
        let chain = Chain {
            shim: Bytes::from_static(b"MZshim"),
            grub: Bytes::from_static(b"MZgrub"),
            from: "the image".into(),
        };
        let l = loaders(&Setup {
            kernel: Some(KernelFacts {
                signed: true,
                arch: Some(CpuArch::Amd64),
            }),
            others: &[],
            given: &Given::default(),
            chain: Some(&chain),
            http: pxe::HttpAddress::default(),
        });
        assert_eq!(&l.files[names::SHIM][..], b"MZshim");
        assert_eq!(&l.files[names::GRUB][..], b"MZgrub");
        assert!(String::from_utf8_lossy(&l.files[names::GRUB_CFG]).contains("configfile"));
        assert!(l
            .notes
            .iter()
            .any(|n| matches!(n, Note::Info(t) if t.contains("image's own shim"))));
        let unsigned = loaders(&Setup {
            kernel: Some(KernelFacts::default()),
            others: &[],
            given: &Given::default(),
            chain: Some(&chain),
            http: pxe::HttpAddress::default(),
        });
        assert!(unsigned
            .notes
            .iter()
            .any(|n| matches!(n, Note::Warn(t) if t.contains("no Secure Boot signature"))));
        assert_ne!(&unsigned.files[names::SHIM][..], b"MZshim");
    }

    #[test]
    fn the_operators_files_are_read_or_named_in_the_error() {
        let d = testkit::tempdir("loaders-given");
        std::fs::write(d.join("arm64.efi"), b"MZarm64").unwrap();
        std::fs::write(d.join("empty.efi"), b"").unwrap();
        let g = Given::read(None, None, Some(&d.join("arm64.efi")), None).unwrap();
        assert_eq!(&g.arm64.unwrap()[..], b"MZarm64");
        let e = Given::read(Some(&d.join("empty.efi")), None, None, None).unwrap_err();
        assert!(
            e.to_string().contains("--ipxe-bios") && e.to_string().contains("empty"),
            "{e}"
        );
        let e = Given::read(None, Some(&d.join("missing")), None, None).unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot read --ipxe-efi64"),
            "{e:#}"
        );
        let _ = std::fs::remove_dir_all(d);
    }
}
