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

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=1023 => format!("{bytes} B"),
        1024..=1_048_575 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.1} MiB", b / 1_048_576.0),
        _ => format!("{:.2} GiB", b / 1_073_741_824.0),
    }
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
        let frac = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let width = 30;
        let filled = ((frac * width as f64) as usize).min(width);
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r{} [{}{}] {:>3.0}% {} / {} {}/s   ",
            self.label,
            "#".repeat(filled),
            " ".repeat(width - filled),
            frac * 100.0,
            human(done),
            human(self.total),
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
