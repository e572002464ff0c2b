//! The `llm_agent_runtime._core` extension: the Rust hot paths of llm-agent-runtime.
//!
//! This file only lists what the module exports; each capability lives in its own module.

pub mod args;
pub mod embed;
pub mod errors;
pub mod events;
pub mod graph;
pub mod memory;
pub mod metrics;
pub mod react;
pub mod sync;
pub mod vector;
pub mod walk;

use pyo3::prelude::*;

/// mimalloc keeps freed pages for reuse: building and dropping large graphs, indexes and
/// stores does not map fresh (page-faulting) memory from the kernel each time, and small
/// allocations are cheaper than glibc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The compiled core of `llm_agent_runtime`; import the package, not this module.
#[pymodule(gil_used = false)]
mod _core {
    #[pymodule_export]
    use crate::embed::PyHashingEmbedder;
    #[pymodule_export]
    use crate::errors::raise_panic;
    #[pymodule_export]
    use crate::events::{py_tuple_of, PyEventFanout};
    #[pymodule_export]
    use crate::graph::PyGraphStore;
    #[pymodule_export]
    use crate::memory::{
        PyDecayPolicy, PyEpisode, PyEpisodicStore, PyRecallPolicy, PyWorkingMemory,
    };
    #[pymodule_export]
    use crate::metrics::{PyMetricsSnapshot, PyRuntimeMetrics};
    #[pymodule_export]
    use crate::react::{parse_react_step, PyReActStep};
    #[pymodule_export]
    use crate::vector::PyVectorIndex;
    #[pymodule_export]
    use crate::walk::{dicts_with_keys_made_text, nested_deeper_than, shown_part};

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        crate::metrics::add_record_step(m.py())?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
