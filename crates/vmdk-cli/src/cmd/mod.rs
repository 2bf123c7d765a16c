//! One module per subcommand. Each `run` returns the process exit status, or an error that
//! `main` prints as `vmdk: <message>` with status 1.

pub mod amend;
pub mod bench;
pub mod check;
pub mod commit;
pub mod compare;
pub mod convert;
pub mod create;
pub mod dd;
pub mod info;
pub mod io;
pub mod map;
pub mod measure;
pub mod rebase;
pub mod serve;
pub mod snapshot;

/// A progress bar on stderr for `-p`, or nothing.
pub fn progress_bar(enabled: bool) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let pb =
        indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {percent:>3}% {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .expect("valid template"),
    );
    Some(pb)
}
