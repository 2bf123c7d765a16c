//! `vmdk completions SHELL` and `vmdk manpages DIR`: shell completion scripts and man pages
//! made from the command line's own definition (clap_complete, clap_mangen), so they list
//! exactly the commands, options and values the parser takes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// Arguments of `vmdk completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Arguments of `vmdk manpages`.
#[derive(Debug, clap::Args)]
pub struct ManpagesArgs {
    /// Where to write the pages (created if missing), e.g. ~/.local/share/man/man1.
    dir: PathBuf,
}

/// Print the completion script for `a.shell` to standard output.
pub fn completions(a: CompletionsArgs) -> Result<u8> {
    let mut cmd = crate::cli_command();
    // Made in memory first: clap_complete panics on a failed write, and a reader that goes
    // away (`vmdk completions bash | head`) must end the command as it ends the others.
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "vmdk", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(0)
}

/// Write `vmdk.1` and a `vmdk-COMMAND.1` for every command (`vmdk-ova-create.1` for the
/// commands under `ova`) into `a.dir`.
pub fn manpages(a: ManpagesArgs) -> Result<u8> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating '{}'", a.dir.display()))?;
    clap_mangen::generate_to(crate::cli_command(), &a.dir)
        .with_context(|| format!("writing man pages into '{}'", a.dir.display()))?;
    Ok(0)
}
