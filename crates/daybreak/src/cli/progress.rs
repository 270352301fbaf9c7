//! Progress for long copies: a redrawn bar on a terminal, a line at start and end otherwise
//! (logs and CI output stay readable).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    total: u64,
    started: Instant,
    last_draw: Option<Instant>,
    tty: bool,
}

pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=1023 => format!("{bytes} B"),
        1024..=1_048_575 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.1} MiB", b / 1_048_576.0),
        _ => format!("{:.2} GiB", b / 1_073_741_824.0),
    }
}

/// `[#####     ]  50% 1.0 MiB / 2.0 MiB`
fn bar(done: u64, total: u64) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let width = 30;
    let filled = (frac * width as f64) as usize;
    format!(
        "[{}{}] {:>3.0}% {} / {}",
        "#".repeat(filled),
        " ".repeat(width - filled),
        frac * 100.0,
        human(done),
        human(total)
    )
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Progress {
        let tty = std::io::stderr().is_terminal();
        if !tty {
            eprintln!("{label}: {} ...", human(total));
        }
        Progress {
            label: label.to_string(),
            total,
            started: Instant::now(),
            last_draw: None,
            tty,
        }
    }

    pub fn update(&mut self, done: u64) {
        if !self.tty
            || self
                .last_draw
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last_draw = Some(Instant::now());
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r{} {} {}/s   ",
            self.label,
            bar(done, self.total),
            human(rate as u64)
        );
        let _ = std::io::stderr().flush();
    }

    pub fn finish(self) {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = self.total as f64 / secs.max(1e-3);
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        eprintln!(
            "{}: {} in {:.2}s ({}/s)",
            self.label,
            human(self.total),
            secs,
            human(rate as u64)
        );
    }
}

/// Progress of an image pull and build, as [`artifacts::Report`]: one bar per layer
/// while pulling and one for the build on a terminal; otherwise a line when each starts and ends.
pub struct ImageProgress {
    tty: bool,
    state: std::sync::Mutex<BarsState>,
    /// A download's bar (an ISO).
    download: std::sync::Mutex<Option<Progress>>,
}

#[derive(Default)]
struct BarsState {
    bars: Vec<(String, u64, u64, bool)>,
    drawn: usize,
    last: Option<Instant>,
    build_started: Option<Instant>,
    /// Index of the build's bar, drawn below the layers' (which may still be downloading).
    build_bar: Option<usize>,
}

fn short(digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    hex.get(..12).unwrap_or(hex).to_string()
}

impl Default for ImageProgress {
    fn default() -> Self {
        ImageProgress {
            tty: std::io::stderr().is_terminal(),
            state: Default::default(),
            download: Default::default(),
        }
    }
}

impl BarsState {
    fn draw(&mut self, force: bool) {
        if !force
            && self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let mut out = String::new();
        if self.drawn > 0 {
            out.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for (label, total, done, finished) in &self.bars {
            out.push_str(&format!(
                "\r\x1b[2K{label:<18} {}{}\n",
                bar(*done, *total),
                if *finished { "  done" } else { "" }
            ));
        }
        self.drawn = self.bars.len();
        eprint!("{out}");
        let _ = std::io::stderr().flush();
    }
}

/// What the command line tells while it opens a source: progress bars and notes on stderr,
/// or, with JSON logs, log lines (nothing else may go to stderr then).
pub fn reporter() -> Box<dyn crate::sources::Report> {
    match super::json_logs() {
        true => Box::new(crate::sources::Logged),
        false => Box::new(ImageProgress::default()),
    }
}

impl crate::sources::Report for ImageProgress {
    /// A download's progress bar and notes.
    fn fetch(&self, source: &str, f: artifacts::Fetch) {
        use artifacts::Fetch;
        let mut bar = self.download.lock().unwrap_or_else(|p| p.into_inner());
        match f {
            Fetch::Waiting { url } => {
                eprintln!("another Daybreak process is downloading {url}; waiting for it")
            }
            Fetch::Progress { done, total } => bar
                .get_or_insert_with(|| Progress::new("download", total.unwrap_or(0)))
                .update(done),
            Fetch::Cached { path } => eprintln!("using cached {}", path.display()),
            Fetch::Done { verified } => {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                if !verified {
                    eprintln!(
                        "note: {source} has no published .sha256; the download is not verified"
                    );
                }
            }
        }
    }
}

impl artifacts::Report for ImageProgress {
    fn event(&self, e: artifacts::Event) {
        use artifacts::Event;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            Event::Resolved { image, digest } => eprintln!("{image}: {digest}"),
            Event::Offline { image, digest, why } => eprintln!(
                "warning: {why}\nwarning: using {digest}, what {image} resolved to last time"
            ),
            Event::Cached { dir } => eprintln!("artifacts already built: {}", dir.display()),
            Event::Pulling { layers } => {
                let todo = layers.iter().filter(|l| !l.2).count();
                eprintln!(
                    "pulling {todo} of {} layers ({} to download)",
                    layers.len(),
                    human(layers.iter().filter(|l| !l.2).map(|l| l.1).sum())
                );
                s.bars = layers
                    .iter()
                    .map(|(d, size, cached)| {
                        (
                            format!("layer {}", short(d)),
                            *size,
                            if *cached { *size } else { 0 },
                            *cached,
                        )
                    })
                    .collect();
                if self.tty {
                    s.draw(true);
                }
            }
            Event::PullProgress { layer, done } => {
                if let Some(b) = s.bars.get_mut(layer) {
                    b.2 = done;
                }
                if self.tty {
                    s.draw(false);
                }
            }
            Event::PullDone { layer } => {
                if let Some(b) = s.bars.get_mut(layer) {
                    b.2 = b.1;
                    b.3 = true;
                    if !self.tty {
                        eprintln!("{}: {} done", b.0, human(b.1));
                    }
                }
                if self.tty {
                    s.draw(true);
                }
            }
            Event::Building { total } => {
                s.build_started = Some(Instant::now());
                if self.tty && total > 0 {
                    s.bars.push(("building squashfs".into(), total, 0, false));
                    s.build_bar = Some(s.bars.len() - 1);
                    s.draw(true);
                } else {
                    eprintln!("building kernel, initrd and squashfs ...");
                }
            }
            Event::BuildProgress { done } => {
                if let Some(b) = s.build_bar.and_then(|i| s.bars.get_mut(i)) {
                    b.2 = done;
                }
                if self.tty {
                    s.draw(false);
                }
            }
            Event::Built { dir } => {
                if let Some(b) = s.build_bar.and_then(|i| s.bars.get_mut(i)) {
                    b.2 = b.1;
                    b.3 = true;
                }
                if self.tty && s.build_bar.is_some() {
                    s.draw(true);
                }
                let secs = s.build_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
                eprintln!("built in {secs:.1}s: {}", dir.display());
            }
            Event::Warning(w) => eprintln!("warning: {w}"),
            Event::Waiting(w) => eprintln!("{w}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human(512), "512 B");
        assert_eq!(super::human(2048), "2.0 KiB");
        assert_eq!(super::human(3 << 20), "3.0 MiB");
        assert_eq!(super::human(5 << 30), "5.00 GiB");
    }
}
