//! Reports in qemu-img's shapes (`info`, `check`, `map`, `inspect`, and `ova info`), built once here so that the `vmdk`
//! command, the Python module and anything else print or return the same fields: the CLI
//! only chooses between JSON and human text.

pub mod check;
pub mod info;
pub mod inspect;
pub mod map;
pub mod names;
mod node;
pub mod ova;
pub mod qcow2_info;
// Escaping lives below every layer (errors use it); kept reachable here, where it was.
pub use crate::text;

pub use node::Node;
