//! `-p` progress of convert and compare on stderr: a bar when stderr is a terminal, and
//! otherwise qemu-img's plain records, `    (12.34/100%)` each ended by a carriage return,
//! one per whole percent and a newline at the end, so logs and pipes see progress too
//! (a bar would draw nothing there). qemu-img prints these records to stdout; ours go to
//! stderr, keeping stdout for results such as compare's verdict.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Smallest step, in percent, between two plain records (qemu-img convert's).
const STEP: f64 = 1.0;

/// Progress reporting for one operation; every method is a no-op when disabled.
pub struct Progress {
    /// The furthest position reported: workers report out of order, and progress never
    /// goes back.
    done: AtomicU64,
    out: Output,
}

enum Output {
    Off,
    Bar(indicatif::ProgressBar),
    /// The percentage last printed, if any.
    Plain(Mutex<Option<f64>>),
}

impl Progress {
    /// Progress on stderr if `enabled`.
    pub fn new(enabled: bool) -> Progress {
        let out = if !enabled {
            Output::Off
        } else if std::io::stderr().is_terminal() {
            let pb = indicatif::ProgressBar::with_draw_target(
                Some(0),
                indicatif::ProgressDrawTarget::stderr(),
            );
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {percent:>3}% {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                )
                .expect("valid template"),
            );
            Output::Bar(pb)
        } else {
            Output::Plain(Mutex::new(None))
        };
        Progress {
            done: AtomicU64::new(0),
            out,
        }
    }

    /// `done` of `total` bytes are finished (callable from any thread).
    pub fn update(&self, done: u64, total: u64) {
        if matches!(self.out, Output::Off) {
            return;
        }
        let done = self.done.fetch_max(done, Ordering::Relaxed).max(done);
        match &self.out {
            Output::Off => {}
            Output::Bar(pb) => {
                pb.set_length(total);
                pb.set_position(done.min(total));
            }
            Output::Plain(last) => {
                let pct = percent(done, total);
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                let due = match *last {
                    None => true,
                    Some(l) => pct - l >= STEP || (pct >= 100.0 && l < 100.0),
                };
                if due {
                    print_record(pct);
                    *last = Some(pct);
                }
            }
        }
    }

    /// The operation succeeded: show 100% and end the line.
    pub fn finish(&self) {
        match &self.out {
            Output::Off => {}
            Output::Bar(pb) => pb.finish(),
            Output::Plain(last) => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if *last != Some(100.0) {
                    print_record(100.0);
                    *last = Some(100.0);
                }
                end_line();
            }
        }
    }

    /// The operation ended: [`Progress::finish`] if it succeeded, else
    /// [`Progress::abandon`].
    pub fn end(&self, succeeded: bool) {
        if succeeded {
            self.finish()
        } else {
            self.abandon()
        }
    }

    /// The operation failed: leave the progress where it stopped and end the line, so the
    /// error message starts on a line of its own.
    pub fn abandon(&self) {
        match &self.out {
            Output::Off => {}
            Output::Bar(pb) => pb.abandon(),
            Output::Plain(last) => {
                if last.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    end_line();
                }
            }
        }
    }
}

/// `done` of `total` in percent (an empty operation is complete).
fn percent(done: u64, total: u64) -> f64 {
    if total == 0 {
        100.0
    } else {
        (done.min(total) as f64 * 100.0 / total as f64).min(100.0)
    }
}

/// qemu's `    (%3.2f/100%)\r`. Progress is best effort: a stderr that cannot be written
/// must not fail the operation.
fn print_record(pct: f64) {
    let mut e = std::io::stderr().lock();
    let _ = write!(e, "    ({pct:.2}/100%)\r");
    let _ = e.flush();
}

fn end_line() {
    let _ = writeln!(std::io::stderr().lock());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages() {
        assert_eq!(percent(0, 0), 100.0);
        assert_eq!(percent(0, 10), 0.0);
        assert_eq!(percent(5, 10), 50.0);
        assert_eq!(percent(11, 10), 100.0);
        assert_eq!(format!("{:.2}", percent(1234, 10000)), "12.34");
    }
}
