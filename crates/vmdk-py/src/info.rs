//! The library's reports ([`vmdk::report`]: the trees `vmdk info`, `check` and `map` print)
//! as Python values, so `Image.info()` and the CLI's JSON can never drift apart.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use vmdk::report::Node;
use vmdk::CheckReport;

/// A trait so report trees convert with a method call, like other PyO3 values.
pub trait ToPy {
    /// The Python value: dicts (in the report's key order), lists, str, int, bool.
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>>;
}

impl ToPy for Node {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            Node::Str(s) => s.into_pyobject(py)?.into_any(),
            Node::Int(n) => n.into_pyobject(py)?.into_any(),
            Node::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
            Node::Null => py.None().into_bound(py),
            Node::List(v) => {
                let l = PyList::empty(py);
                for n in v {
                    l.append(n.to_py(py)?)?;
                }
                l.into_any()
            }
            Node::Dict(v) => {
                let d = PyDict::new(py);
                for (k, n) in v {
                    d.set_item(k, n.to_py(py)?)?;
                }
                d.into_any()
            }
        })
    }
}

/// `vmdk check --output=json` for image `name`, plus what the CLI prints on stderr, under
/// keys of their own: `messages` (the descriptions of corruptions, leaks, warnings and
/// check errors), `clean` and `exit-code` (qemu-img check's exit status).
pub fn check_report(r: &CheckReport, name: &str) -> Node {
    let mut n = vmdk::report::check::check_json(r, name);
    let strs = |v: &[String]| Node::List(v.iter().map(|s| Node::from(s.as_str())).collect());
    let mut m = Node::dict();
    m.put("corruptions", strs(&r.corruptions))
        .put("leaks", strs(&r.leaks))
        .put("warnings", strs(&r.warnings))
        .put("errors", strs(&r.errors));
    n.put("messages", m)
        .put("clean", r.is_clean())
        .put("exit-code", r.exit_code() as u64);
    n
}
