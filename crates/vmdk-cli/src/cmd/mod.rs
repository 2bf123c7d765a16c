//! One module per subcommand. Each `run` returns the process exit status, or an error that
//! `main` prints as `vmdk: <message>` with status 1.

pub mod amend;
pub mod bench;
pub mod check;
pub mod commit;
pub mod compact;
pub mod compare;
pub mod convert;
pub mod create;
pub mod dd;
pub mod docs;
pub mod info;
pub mod inspect;
pub mod io;
pub mod map;
pub mod measure;
pub mod mount;
pub mod ova;
pub mod rebase;
pub mod resize;
pub mod serve;
pub mod snapshot;
