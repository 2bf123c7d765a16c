//! One module per subcommand. Each `run` returns the process exit status, or an error that
//! `main` prints as `vmdk: <message>` with status 1.

pub mod check;
pub mod compare;
pub mod convert;
pub mod create;
pub mod info;
pub mod io;
pub mod map;
pub mod serve;
