//! A [`Decision`] in the languages of the loaders that ask for one: an iPXE script, a GRUB
//! configuration (the Secure Boot chain's GRUB reads it over HTTP). One writer per language,
//! whatever decided.

use std::net::Ipv4Addr;

use crate::decision::{BootSpec, Decision};

/// A machine's GRUB configuration on the Secure Boot chain: `/_/grub/MAC.cfg`.
pub const GRUB: &str = "/_/grub/";

/// Seconds a waiting machine is told to wait (the decision's `retry`, shown and slept).
fn seconds(d: std::time::Duration) -> u64 {
    d.as_secs().max(1)
}

/// The iPXE script for `d`; `again` is the URL a waiting machine chains when its wait is over;
/// `syslog`, where iPXE sends its own lines (an iPXE built with syslog does; others ignore the
/// setting). `None` for a machine not served here: the request is answered 404, as if unknown.
pub fn ipxe(d: &Decision, again: &str, syslog: Option<Ipv4Addr>) -> Option<String> {
    Some(match d {
        Decision::Boot(spec) => match check_ipxe(&spec.cmdline) {
            Ok(()) => ipxe_boot(spec, syslog),
            Err(e) => {
                tracing::error!("not booted: {e}");
                "#!ipxe\necho Daybreak: not booted: its kernel command line cannot go into an iPXE script (the server's log says why)\nexit\n".into()
            }
        },
        Decision::Script(s) => s.clone(),
        // BIOS: the first disk by its BIOS number; UEFI: back to the firmware, which boots
        // the next entry of its boot order (the disk).
        Decision::Local => "#!ipxe\necho Daybreak: booting from the local disk\n\
             iseq ${platform} pcbios && sanboot --no-describe --drive 0x80 ||\nexit\n"
            .into(),
        Decision::Wait { why, retry } => {
            let s = seconds(*retry);
            format!(
                "#!ipxe\necho Daybreak: {} (asking again in {s} seconds)\nsleep {s}\nchain {again} ||\n",
                ipxe_text(why)
            )
        }
        Decision::Refuse(why) => {
            format!(
                "#!ipxe\necho Daybreak: not booted: {}\nexit\n",
                ipxe_text(why)
            )
        }
        Decision::Ignore => return None,
    })
}

/// A boot in iPXE's words. With a `ready` URL (the machine is known), each step names itself
/// (`daybreak_step`) and a failed one goes to a last part that tells the server which step
/// failed and iPXE's error number (`${errno}`, expanded only there: iPXE expands a whole line
/// before running it), then ends the script as a failure did before.
fn ipxe_boot(spec: &BootSpec, syslog: Option<Ipv4Addr>) -> String {
    let mut s = String::from("#!ipxe\n");
    if let Some(a) = syslog {
        s.push_str(&format!("set syslog {a} ||\n"));
    }
    let report = spec.ready.as_deref();
    let or_fail = if report.is_some() {
        " || goto daybreak_failed"
    } else {
        ""
    };
    let step = |s: &mut String, name: &str| {
        if report.is_some() {
            s.push_str(&format!("set {STEP} {name}\n"));
        }
    };
    step(&mut s, "kernel");
    s.push_str(&format!("kernel --name kernel {}{or_fail}\n", spec.kernel));
    let mut initrd_args = String::new();
    for (name, url) in &spec.initrds {
        step(&mut s, "initrd");
        s.push_str(&format!("initrd --name {name} {url}{or_fail}\n"));
        initrd_args.push_str(&format!("initrd={name} "));
    }
    if let Some(ready) = report {
        s.push_str(&format!(
            "imgfetch --name ready {ready} ||\nimgfree ready ||\n"
        ));
    }
    step(&mut s, "boot");
    s.push_str(&format!(
        "boot kernel {initrd_args}{}{or_fail}\n",
        spec.cmdline
    ));
    if let Some(ready) = report {
        s.push_str(&format!(
            ":daybreak_failed\n\
             imgfetch --name failed {ready}&failed=${{{STEP}}}&errno=${{errno}} ||\n\
             echo Daybreak: the ${{{STEP}}} step failed (error ${{errno}}): the server has it on this machine's timeline\n\
             exit 1\n"
        ));
    }
    s
}

/// The setting an iPXE script names its step in.
const STEP: &str = "daybreak_step";

/// The host GRUB reaches this server at: the advertised address, else the one it booted from.
fn grub_host(http: pxe::HttpAddress) -> String {
    match http.advertise {
        Some(a) => a.to_string(),
        None => GRUB_SERVER.into(),
    }
}

/// `http://HOST[:PORT]` as GRUB writes it: the base of the URLs in a decision GRUB renders.
pub fn grub_base(http: pxe::HttpAddress) -> String {
    pxe::http_base(grub_host(http), http.port)
}

/// GRUB's device for an `http://HOST[:PORT]/path` URL, and the path.
fn grub_path(url: &str) -> Option<(String, &str)> {
    let rest = url.strip_prefix("http://")?;
    let slash = rest.find('/')?;
    Some((format!("(http,{})", &rest[..slash]), &rest[slash..]))
}

/// The configuration a machine's GRUB reads for `d`: over HTTP from `http` (the stub
/// [`grub_stub`] points it there); a waiting machine reads it again after its wait.
pub fn grub(d: &Decision, http: pxe::HttpAddress) -> String {
    let again = || {
        format!(
            "configfile {}{}${{net_default_mac}}.cfg\n",
            grub_device(http),
            GRUB
        )
    };
    let exit = |why: &str| format!("echo {}\nexit\n", grub_quote(&format!("Daybreak: {why}")));
    match d {
        Decision::Boot(spec) => match grub_args(&spec.cmdline) {
            Err(e) => {
                tracing::error!("not booted: {e}");
                exit(&format!("not booted: {e}"))
            }
            Ok(_) => match grub_boot(spec) {
                Some(cfg) => cfg,
                None => exit("not booted: a file of this boot is not on this server"),
            },
        },
        Decision::Script(_) => exit("not booted: an iPXE script was given, which GRUB cannot run"),
        // Back to the firmware, which boots the next entry of its boot order (the disk).
        Decision::Local => exit("booting from the local disk"),
        Decision::Wait { why, retry } => {
            let s = seconds(*retry);
            format!(
                "echo {}\nsleep {s}\n{}",
                grub_quote(&format!("Daybreak: {why} (asking again in {s} seconds)")),
                again()
            )
        }
        Decision::Refuse(why) => exit(&format!("not booted: {why}")),
        Decision::Ignore => exit("this machine is not served here"),
    }
}

/// Why a kernel command line cannot be written in a loader's language.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the kernel command line cannot go into {language}: {why} (the word {word:?})")]
pub struct Unwritable {
    pub language: &'static str,
    pub word: String,
    pub why: &'static str,
}

/// Whether `text` (a kernel command line) can be a run of words in an iPXE command as it is.
/// iPXE has no quoting: it expands `${…}` settings, splits words at whitespace, and a word
/// `||`, `&&` or `;` ends the command and one starting with `#` a comment; a newline starts
/// another. What would be read so is refused, never passed on.
pub fn check_ipxe(text: &str) -> Result<(), Unwritable> {
    let refuse = |word: &str, why| {
        Err(Unwritable {
            language: "an iPXE script",
            word: word.chars().take(80).collect(),
            why,
        })
    };
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return refuse(
            &c.escape_default().to_string(),
            "a control character would end the line",
        );
    }
    for w in text.split_whitespace() {
        if w.contains("${") {
            return refuse(w, "iPXE would replace ${…} with one of its settings");
        }
        if matches!(w, "||" | "&&" | ";") {
            return refuse(w, "iPXE would end the command there and run what follows");
        }
        if w.starts_with('#') {
            return refuse(w, "iPXE would read the rest as a comment");
        }
    }
    Ok(())
}

/// The words of a kernel command line as the kernel splits it: at whitespace outside double
/// quotes.
pub fn kernel_words(cmdline: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let (mut start, mut quoted) = (None, false);
    for (i, c) in cmdline.char_indices() {
        match c {
            '"' => {
                quoted = !quoted;
                start.get_or_insert(i);
            }
            c if c.is_whitespace() && !quoted => {
                if let Some(s) = start.take() {
                    words.push(&cmdline[s..i]);
                }
            }
            _ => {
                start.get_or_insert(i);
            }
        }
    }
    if let Some(s) = start {
        words.push(&cmdline[s..]);
    }
    words
}

/// A kernel command line as arguments of GRUB's `linux`: each word in double quotes, so `;`,
/// `|`, `&`, `#`, `{` and the like are the kernel's, not GRUB's, and `$` escaped except in the
/// server address GRUB fills in. GRUB rewrites an argument holding a quote, a backslash or a
/// space (it escapes them for the kernel), so such a word is refused rather than changed.
fn grub_args(cmdline: &str) -> Result<String, Unwritable> {
    let mut out = Vec::new();
    for w in kernel_words(cmdline) {
        let refuse = |why| Unwritable {
            language: "a GRUB configuration",
            word: w.chars().take(80).collect(),
            why,
        };
        if w.chars().any(|c| c.is_control()) {
            return Err(refuse("a control character would end the line"));
        }
        if w.contains(['"', '\'', '\\', ' ', '\t']) {
            return Err(refuse("GRUB would hand it to the kernel escaped"));
        }
        let escaped = w
            .replace('$', "\\$")
            .replace(&format!("\\{GRUB_SERVER}"), GRUB_SERVER);
        out.push(format!("\"{escaped}\""));
    }
    Ok(out.join(" "))
}

/// The variable GRUB fills in with the server it booted from.
const GRUB_SERVER: &str = "${net_default_server}";

fn grub_boot(spec: &BootSpec) -> Option<String> {
    let (device, kernel) = grub_path(&spec.kernel)?;
    let initrds = spec
        .initrds
        .iter()
        .map(|(_, url)| grub_path(url).and_then(|(d, p)| grub_file(&d, p)))
        .collect::<Option<Vec<_>>>()?;
    let mut s = String::from(
        "# Written by Daybreak: the Secure Boot chain (shim, then this signed GRUB).\n\
         set timeout=0\n\
         set default=0\n\
         menuentry 'Daybreak netboot' {\n",
    );
    s.push_str(&format!(
        "  echo {}\n",
        grub_quote(&format!(
            "Loading {} over HTTP",
            kernel.trim_start_matches('/')
        ))
    ));
    let args = grub_args(&spec.cmdline).ok()?;
    s.push_str(&format!("  linux {} {args}\n", grub_file(&device, kernel)?));
    if !initrds.is_empty() {
        s.push_str(&format!("  initrd {}\n", initrds.join(" ")));
    }
    s.push_str("}\n");
    Some(s)
}

/// A file on GRUB's `device` (ours: `(http,HOST)`, the host may be GRUB's variable) as one
/// GRUB word: as it is when the path is plain, else double-quoted (an API's file URL has a
/// query: `?`, `&`, which GRUB reads as a wildcard and a metacharacter; variables still expand
/// inside the quotes); `None` for a path a double-quoted word cannot hold as it is (`$`, `\`,
/// `"`).
fn grub_file(device: &str, path: &str) -> Option<String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-,:".contains(c);
    if path.chars().all(plain) {
        return Some(format!("{device}{path}"));
    }
    if path.chars().any(|c| c.is_control() || "$\\\"".contains(c)) {
        return None;
    }
    Some(format!("\"{device}{path}\""))
}

/// GRUB's device for this server's HTTP: `(http,HOST[:PORT])`.
fn grub_device(http: pxe::HttpAddress) -> String {
    let host = grub_host(http);
    if http.port == 80 {
        format!("(http,{host})")
    } else {
        format!("(http,{host}:{})", http.port)
    }
}

/// What GRUB reads by TFTP: its machine's own configuration, by MAC, over HTTP.
pub fn grub_stub(http: pxe::HttpAddress) -> String {
    format!(
        "# Written by Daybreak: each machine's own configuration, from the server.\n\
         set timeout=0\n\
         configfile {}{}${{net_default_mac}}.cfg\n",
        grub_device(http),
        GRUB
    )
}

/// Text as one GRUB word in single quotes (a quote inside closes, escapes and reopens).
fn grub_quote(s: &str) -> String {
    format!("'{}'", one_line(s).replace('\'', "'\\''"))
}

/// Text for an iPXE `echo`: one line, no `${…}` for iPXE to expand, and no word iPXE would
/// read as the end of the command or a comment.
fn ipxe_text(s: &str) -> String {
    one_line(s)
        .replace("${", "$ {")
        .split(' ')
        .map(|w| match w {
            "||" | "&&" | ";" => format!("[{w}]"),
            w if w.starts_with('#') => format!("[{w}]"),
            w => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text for one line of a script: control characters (a newline would start a command) become
/// spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec() -> BootSpec {
        BootSpec {
            kernel: "http://10.0.0.1:8090/kernel".into(),
            initrds: vec![("initrd0".into(), "http://10.0.0.1:8090/initrd0".into())],
            cmdline: "root=live:http://10.0.0.1:8090/rootfs.squashfs quiet".into(),
            ready: Some("http://10.0.0.1:8090/_/booting?mac=52:54:00:00:00:01".into()),
        }
    }

    #[test]
    fn every_decision_as_an_ipxe_script() {
        let again = "http://10.0.0.1:8090/_/ipxe?mac=52:54:00:00:00:01";
        assert_eq!(
            ipxe(&Decision::Boot(spec()), again, None).unwrap(),
            "#!ipxe\nset daybreak_step kernel\n\
             kernel --name kernel http://10.0.0.1:8090/kernel || goto daybreak_failed\n\
             set daybreak_step initrd\n\
             initrd --name initrd0 http://10.0.0.1:8090/initrd0 || goto daybreak_failed\n\
             imgfetch --name ready http://10.0.0.1:8090/_/booting?mac=52:54:00:00:00:01 ||\n\
             imgfree ready ||\n\
             set daybreak_step boot\n\
             boot kernel initrd=initrd0 root=live:http://10.0.0.1:8090/rootfs.squashfs quiet || goto daybreak_failed\n\
             :daybreak_failed\n\
             imgfetch --name failed http://10.0.0.1:8090/_/booting?mac=52:54:00:00:00:01&failed=${daybreak_step}&errno=${errno} ||\n\
             echo Daybreak: the ${daybreak_step} step failed (error ${errno}): the server has it on this machine's timeline\n\
             exit 1\n"
        );
        // With iPXE's lines asked for; a machine not known by MAC gets no report.
        let anonymous = BootSpec {
            ready: None,
            ..spec()
        };
        assert_eq!(
            ipxe(
                &Decision::Boot(anonymous),
                again,
                Some(Ipv4Addr::new(10, 0, 0, 1))
            )
            .unwrap(),
            "#!ipxe\nset syslog 10.0.0.1 ||\n\
             kernel --name kernel http://10.0.0.1:8090/kernel\n\
             initrd --name initrd0 http://10.0.0.1:8090/initrd0\n\
             boot kernel initrd=initrd0 root=live:http://10.0.0.1:8090/rootfs.squashfs quiet\n"
        );
        let wait = Decision::Wait {
            why: "its image is being prepared".into(),
            retry: Duration::from_secs(10),
        };
        let w = ipxe(&wait, again, None).unwrap();
        assert!(
            w.contains("asking again in 10 seconds)\nsleep 10\nchain http://10.0.0.1:8090/_/ipxe?mac=52:54:00:00:00:01 ||"),
            "{w}"
        );
        assert!(ipxe(&Decision::Local, again, None)
            .unwrap()
            .contains("sanboot --no-describe --drive 0x80"));
        let r = ipxe(&Decision::Refuse("no kernel\nshell".into()), again, None).unwrap();
        assert_eq!(
            r,
            "#!ipxe\necho Daybreak: not booted: no kernel shell\nexit\n"
        );
        assert_eq!(ipxe(&Decision::Ignore, again, None), None);
        assert_eq!(
            ipxe(&Decision::Script("#!ipxe\nshell\n".into()), again, None).as_deref(),
            Some("#!ipxe\nshell\n")
        );
    }

    #[test]
    fn an_api_files_url_is_one_quoted_grub_word() {
        let http = pxe::HttpAddress::default();
        let mut s = spec();
        s.kernel = format!("{}/_/api?mac=52:54:00:00:00:01&n=0&t=ab12", grub_base(http));
        s.initrds.clear();
        let c = grub(&Decision::Boot(s.clone()), http);
        assert!(
            c.contains("  linux \"(http,${net_default_server}:8090)/_/api?mac=52:54:00:00:00:01&n=0&t=ab12\" "),
            "{c}"
        );
        s.kernel = format!("{}/k$x", grub_base(http));
        assert!(grub(&Decision::Boot(s), http).contains("not booted"));
    }

    #[test]
    fn every_decision_as_a_grub_configuration() {
        let http = pxe::HttpAddress::default();
        let mut s = spec();
        s.kernel = format!("{}/kernel", grub_base(http));
        s.initrds[0].1 = format!("{}/initrd0", grub_base(http));
        let c = grub(&Decision::Boot(s), http);
        assert!(
            c.contains("  linux (http,${net_default_server}:8090)/kernel \"root=live:"),
            "{c}"
        );
        assert!(
            c.contains("  initrd (http,${net_default_server}:8090)/initrd0\n"),
            "{c}"
        );
        assert!(grub(&Decision::Local, http).ends_with("exit\n"));
        let w = grub(
            &Decision::Wait {
                why: "it's busy".into(),
                retry: Duration::from_secs(10),
            },
            http,
        );
        assert!(w.contains("echo 'Daybreak: it'\\''s busy (asking again in 10 seconds)'\nsleep 10\nconfigfile (http,${net_default_server}:8090)/_/grub/${net_default_mac}.cfg\n"), "{w}");
        assert!(grub(&Decision::Ignore, http).contains("not served here"));
        let advertised = pxe::HttpAddress {
            port: 80,
            advertise: Some(std::net::Ipv4Addr::new(192, 0, 2, 7)),
        };
        assert_eq!(grub_base(advertised), "http://192.0.2.7");
        assert!(grub_stub(advertised).contains("configfile (http,192.0.2.7)/_/grub/"));
    }

    /// Item: a `;` (or `||`, `&&`, `#…`, `${…}`) in a command line made iPXE run what followed.
    /// iPXE has no quoting, so such a command line is refused, at start and at a boot.
    #[test]
    fn a_command_line_ipxe_would_read_as_commands_is_refused() {
        for bad in [
            "quiet ; shell",
            "quiet || shell",
            "a && b",
            "quiet #x",
            "x=${net0/mac}",
            "a\nshell",
        ] {
            assert!(check_ipxe(bad).is_err(), "{bad:?}");
            let mut sp = spec();
            sp.cmdline = bad.into();
            let script = ipxe(&Decision::Boot(sp), "", None).unwrap();
            assert!(
                !script.contains("kernel --name") && !script.contains("shell"),
                "{script}"
            );
        }
        // A `;` or `#` inside a word is the kernel's.
        assert!(check_ipxe("ds=nocloud;s=http://10.0.0.1/ a=b#c console=ttyS0,115200").is_ok());
        // What goes into an echo cannot end it either.
        let r = ipxe(&Decision::Refuse("x ; shell #y ${z}".into()), "", None).unwrap();
        assert_eq!(
            r,
            "#!ipxe\necho Daybreak: not booted: x [;] shell [#y] $ {z}\nexit\n"
        );
    }

    /// Item: in GRUB a profile's `ds=nocloud;s=…` split the `linux` line and dropped
    /// `root=live:` and `config_url=`. Each kernel word is now one quoted GRUB word.
    #[test]
    fn grub_keeps_each_kernel_word_whole() {
        let http = pxe::HttpAddress::default();
        let mut sp = spec();
        sp.kernel = format!("{}/kernel", grub_base(http));
        sp.initrds[0].1 = format!("{}/initrd0", grub_base(http));
        sp.cmdline = format!(
            "ds=nocloud;s=http://10.0.0.9/ x=$HOME {{a}} root=live:{}/rootfs.squashfs config_url={}/c.yaml",
            grub_base(http),
            grub_base(http)
        );
        let c = grub(&Decision::Boot(sp.clone()), http);
        assert!(
            c.contains("/kernel \"ds=nocloud;s=http://10.0.0.9/\" \"x=\\$HOME\" \"{a}\" \"root=live:http://${net_default_server}:8090/rootfs.squashfs\" \"config_url=http://${net_default_server}:8090/c.yaml\"\n"),
            "{c}"
        );
        // A word GRUB would hand on changed is refused, not changed.
        sp.cmdline = "a=\"b c\" quiet".into();
        let c = grub(&Decision::Boot(sp), http);
        assert!(!c.contains("linux") && c.contains("not booted"), "{c}");
        assert_eq!(kernel_words(" a=\"b c\"  d "), ["a=\"b c\"", "d"]);
    }
}
