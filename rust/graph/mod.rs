//! The knowledge graph: `GraphStore`, a directed multigraph of entities and typed, weighted
//! relationships with graph analytics in Rust.
//!
//! Mutations go to the [`store::Store`] under a write lock and drop the cached snapshot;
//! algorithms run on a [`Frozen`] copy (edge list, ids, and each CSR adjacency view built on
//! first use) made once per mutation generation and shared behind an `Arc`, with the GIL
//! released. `from_edge_list` makes the snapshot while it reads its input, and shares the
//! edge list with the store. Per-entity queries (`edges_from`, `neighbors_of`,
//! `relationship_count_between`, a walk or `neighborhood` of depth 1 at most, `subgraph` of
//! a few entities) read the store's own per-entity links instead, which additions keep up
//! to date: a write followed by such a query rebuilds no snapshot.

pub mod algo;
pub mod alloc;
pub mod betweenness;
pub mod community;
pub mod csr;
pub mod props;
pub mod store;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use compact_str::CompactString;
use numpy::ndarray::ArrayView2;
use numpy::PyReadonlyArray2;
use parking_lot::{Mutex, RwLock};
use pyo3::exceptions::PyMemoryError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt, PyList, PySet, PyString, PyTuple};
use serde_json::Value;

use crate::args::{self, entity_names, extract_unsigned, OutOfRange};
use crate::errors::{
    catch_panics, run_detached, run_interruptible, run_stoppable, CoreError, CoreResult,
};
use crate::sync;
use algo::DegreeMode;
use community::SplitMix;
use csr::{Adjacency, Snapshot, SnapshotBuilder};
use store::{check_weight, IdTable, Relationship, Store};

/// A traversal (`algo::bfs` or `algo::dfs`): adjacency, node count, start and depth limit
/// to the ids visited, in order.
type Traversal = fn(&Adjacency, usize, u32, Option<usize>) -> CoreResult<Vec<u32>>;

/// What the algorithms read: a consistent copy of one mutation generation.
struct Frozen {
    snapshot: Snapshot,
    ids: IdTable,
    /// The ids as Python strings, made once per generation for results that list many nodes.
    py_ids: OnceLock<Vec<Py<PyString>>>,
}

/// A result listing fewer than one node in this many makes its own Python strings rather
/// than the snapshot's cache of every id (a short answer from a big graph stays cheap).
const FEW_NODES: usize = 8;

impl Frozen {
    fn build(store: &Store) -> CoreResult<Frozen> {
        Frozen::of(store, Snapshot::build(store)?)
    }

    /// The frozen graph of `store`, whose snapshot is `snapshot`.
    ///
    /// # Errors
    /// [`CoreError::Graph`] when the copy of the ids does not fit in memory.
    fn of(store: &Store, snapshot: Snapshot) -> CoreResult<Frozen> {
        Ok(Frozen {
            snapshot,
            ids: IdTable::of(store)?,
            py_ids: OnceLock::new(),
        })
    }

    /// Every id as a Python string, made at the first call of this generation.
    ///
    /// # Errors
    /// `GraphError` "out of memory" when the list of them does not fit, `MemoryError`
    /// when a string does not: never an abort or a panic.
    fn py_ids(&self, py: Python<'_>) -> PyResult<&[Py<PyString>]> {
        if let Some(ids) = self.py_ids.get() {
            return Ok(ids);
        }
        // Made before the cell is touched: making strings may run the cycle collector, and
        // with it `__del__` code that lists nodes of this graph too (on this thread, or on
        // another one the GIL passes to). Initializing the cell inside that work would
        // deadlock them; setting it to a finished value cannot.
        let n = self.ids.entity_count();
        let mut built: Vec<Py<PyString>> = alloc::with_capacity(n, "the ids as strings")?;
        for v in 0..n as u32 {
            built.push(self.py_str(py, v)?.unbind());
        }
        Ok(self.py_ids.get_or_init(|| built))
    }

    /// Whether a result of `count` nodes makes its own strings: no cache of every id is made
    /// for a short answer from a big graph.
    fn few(&self, count: usize) -> bool {
        self.py_ids.get().is_none() && count.saturating_mul(FEW_NODES) < self.ids.entity_count()
    }

    /// The id of node `v` as a new Python string (a failed allocation is `MemoryError`).
    fn py_str<'py>(&self, py: Python<'py>, v: u32) -> PyResult<Bound<'py, PyString>> {
        self.ids
            .with_id(v, |id| graph_str(py, id))
            .ok_or_else(|| outside_snapshot(v as usize, self.ids.entity_count()))?
    }

    /// The ids of `nodes` as a Python list.
    fn py_list<'py>(&self, py: Python<'py>, nodes: &[u32]) -> PyResult<Bound<'py, PyList>> {
        if self.few(nodes.len()) {
            return graph_list(py, nodes.len(), |i| {
                Ok(self.py_str(py, nodes[i])?.into_any())
            });
        }
        let ids = self.py_ids(py)?;
        graph_list(py, nodes.len(), |i| {
            Ok(py_id(ids, nodes[i] as usize)?.bind(py).clone().into_any())
        })
    }

    /// Lists of ids (cycles, communities) as a Python list of lists.
    fn py_lists<'py>(&self, py: Python<'py>, lists: &[Vec<u32>]) -> PyResult<Bound<'py, PyList>> {
        // Many items list the snapshot's strings (one per entity), not a string per item.
        let items = lists
            .iter()
            .fold(0usize, |sum, c| sum.saturating_add(c.len()));
        if !self.few(items) {
            self.py_ids(py)?;
        }
        graph_list(py, lists.len(), |i| {
            Ok(self.py_list(py, &lists[i])?.into_any())
        })
    }

    /// The ids of `nodes` (distinct) as a Python set.
    fn py_set<'py>(&self, py: Python<'py>, nodes: &[u32]) -> PyResult<Bound<'py, PySet>> {
        PySet::new(py, self.py_list(py, nodes)?).map_err(|e| graph_memory(py, e))
    }

    /// `{id: value}` for the given `(node, value)` pairs.
    fn py_dict<'py>(
        &self,
        py: Python<'py>,
        values: impl ExactSizeIterator<Item = (usize, f64)>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let dict = graph_dict(py)?;
        if self.few(values.len()) {
            for (v, x) in values {
                let node =
                    u32::try_from(v).map_err(|_| outside_snapshot(v, self.ids.entity_count()))?;
                graph_set_item(&dict, self.py_str(py, node)?.as_any(), &graph_float(py, x)?)?;
            }
            return Ok(dict);
        }
        let ids = self.py_ids(py)?;
        for (v, x) in values {
            graph_set_item(&dict, py_id(ids, v)?.bind(py), &graph_float(py, x)?)?;
        }
        Ok(dict)
    }

    fn node(&self, id: &str) -> CoreResult<u32> {
        self.ids
            .get(id)
            .ok_or_else(|| CoreError::Graph(format!("unknown entity {id:?}")))
    }

    /// The id of node `v`; an index out of range is an internal error, not a panic.
    fn name(&self, v: u32) -> CoreResult<String> {
        self.ids.with_id(v, str::to_owned).ok_or_else(|| {
            CoreError::Runtime(format!(
                "internal error: node {v} is outside the graph snapshot ({} nodes)",
                self.ids.entity_count()
            ))
        })
    }

    fn names(&self, nodes: &[u32]) -> CoreResult<Vec<String>> {
        nodes.iter().map(|&v| self.name(v)).collect()
    }

    /// The nodes of `ids`, in order, each marked in `seen` (one slot per node of the
    /// snapshot; calls sharing `seen` refuse a node named by any earlier one too).
    ///
    /// # Errors
    /// [`CoreError::Graph`] on an unknown id, or on an id whose node is marked already:
    /// "entity {id:?} is {twice}" (e.g. `twice` = "in two communities").
    fn distinct_nodes(
        &self,
        ids: &[PyBackedStr],
        seen: &mut [bool],
        twice: &str,
    ) -> CoreResult<Vec<u32>> {
        let mut nodes = alloc::with_capacity(ids.len(), "the entity list")?;
        for id in ids {
            let v = self.node(id)?;
            if std::mem::replace(&mut seen[v as usize], true) {
                return Err(CoreError::Graph(format!("entity {:?} is {twice}", &**id)));
            }
            nodes.push(v);
        }
        Ok(nodes)
    }

    fn refuse_negative(&self, what: &str) -> CoreResult<()> {
        if self.snapshot.has_negative_weight {
            Err(CoreError::Graph(format!(
                "{what} needs non-negative weights; the graph has a negative one"
            )))
        } else {
            Ok(())
        }
    }
}

/// `text` as a Python string; an allocation that fails is the graph's "out of memory"
/// `GraphError` (pyo3's `PyString::new` panics there).
fn graph_str<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyString>> {
    let out_of_memory = || CoreError::Graph("out of memory: the ids as Python strings".into());
    // A str's length fits an isize (no allocation is larger).
    let len = ffi::Py_ssize_t::try_from(text.len()).map_err(|_| out_of_memory())?;
    #[allow(unsafe_code)]
    // SAFETY: the GIL is held and `text` is `len` bytes of UTF-8; the call returns a new
    // reference, or NULL with the exception set.
    let made = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyUnicode_FromStringAndSize(text.as_ptr().cast(), len),
        )
    };
    match made {
        Ok(string) => Ok(string.cast_into::<PyString>()?),
        Err(e) if e.is_instance_of::<PyMemoryError>(py) => Err(out_of_memory().into()),
        Err(e) => Err(e),
    }
}

/// Python's `MemoryError` (an allocation that failed) as the graph's "out of memory"
/// `GraphError`; any other error as it is.
fn graph_memory(py: Python<'_>, error: PyErr) -> PyErr {
    if error.is_instance_of::<PyMemoryError>(py) {
        CoreError::Graph("out of memory: the result's Python objects".into()).into()
    } else {
        error
    }
}

/// A list of `len` items, `item(i)` the i-th: an allocation that fails is the graph's "out
/// of memory" (pyo3's `PyList::new` panics there, a `BaseException`).
///
/// Appended one by one, so the list never holds an empty slot: making an item may run the
/// cycle collector, whose callbacks and finalizers can reach the list (`gc.get_objects`).
fn graph_list<'py>(
    py: Python<'py>,
    len: usize,
    mut item: impl FnMut(usize) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    #[allow(unsafe_code)]
    // SAFETY: the GIL is held; the call returns a new empty list, or NULL with the
    // exception set.
    let list = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyList_New(0)) }
        .map_err(|e| graph_memory(py, e))?
        .cast_into::<PyList>()?;
    for i in 0..len {
        list.append(item(i)?).map_err(|e| graph_memory(py, e))?;
    }
    Ok(list)
}

/// An empty dict, an allocation that fails being the graph's "out of memory".
fn graph_dict(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    #[allow(unsafe_code)]
    // SAFETY: the GIL is held; the call returns a new dict, or NULL with the exception set.
    let dict = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyDict_New()) }
        .map_err(|e| graph_memory(py, e))?;
    Ok(dict.cast_into::<PyDict>()?)
}

/// `x` as a Python float, an allocation that fails being the graph's "out of memory".
fn graph_float(py: Python<'_>, x: f64) -> PyResult<Bound<'_, PyAny>> {
    #[allow(unsafe_code)]
    // SAFETY: the GIL is held; the call returns a new float, or NULL with the exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyFloat_FromDouble(x)) }
        .map_err(|e| graph_memory(py, e))
}

/// `dict[key] = value`, a dict that cannot grow being the graph's "out of memory".
fn graph_set_item(
    dict: &Bound<'_, PyDict>,
    key: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    dict.set_item(key, value)
        .map_err(|e| graph_memory(dict.py(), e))
}

/// The Python id of node `v`; an index out of range is an internal error, not a panic.
fn py_id(ids: &[Py<PyString>], v: usize) -> PyResult<&Py<PyString>> {
    ids.get(v).ok_or_else(|| outside_snapshot(v, ids.len()))
}

/// A relationship index past the store's relationships: an internal error, not a panic.
#[cold]
fn outside_store(i: u32, count: usize) -> CoreError {
    CoreError::Runtime(format!(
        "internal error: relationship {i} is outside the graph ({count} relationships)"
    ))
}

#[cold]
fn outside_snapshot(v: usize, n: usize) -> PyErr {
    CoreError::Runtime(format!(
        "internal error: node {v} is outside the graph snapshot ({n} nodes)"
    ))
    .into()
}

/// `from_edge_list`'s work: entities "0".."n-1" (implied, not stored: see [`Store`]), the
/// relationships of `edges`, and the snapshot of the result, gathered while the edges are
/// read (so the first query builds no more than the adjacency view it reads).
fn build_numbered(n: u32, edges: &Bound<'_, PyAny>, kind: &str) -> PyResult<PyGraphStore> {
    let snapshot = edge_list(n, edges)?.finish();
    let mut store = Store::default();
    let kind = store.intern(kind);
    store.add_numbered_entities(n)?;
    store.add_plain_relationships(kind, snapshot.shared_edges());
    let frozen = Frozen::of(&store, snapshot)?;
    Ok(PyGraphStore {
        store: RwLock::new(store),
        frozen: Mutex::new(Some(Arc::new(frozen))),
    })
}

/// The snapshot of a 2-D numpy array of edges of a native integer dtype, read in place: no
/// Python object per edge (a row by row read makes three). None for any other array (a
/// float or byte-swapped one, say), which goes row by row and gets its errors there.
fn edge_array(n: u32, edges: &Bound<'_, PyAny>) -> PyResult<Option<SnapshotBuilder>> {
    args::load_numpy(edges.py())?;
    macro_rules! read_as {
        ($($dtype:ty),*) => {$(
            if let Ok(array) = edges.extract::<PyReadonlyArray2<'_, $dtype>>() {
                return array_edges(n, array.as_array()).map(Some);
            }
        )*};
    }
    read_as!(i64, i32, u64, u32, i16, u16, i8, u8);
    Ok(None)
}

/// Refuses, describing it as given, a numpy array of edges whose rows the row by row read
/// would refuse: one of 3 or more dimensions, or a 2-D one of a dtype other than integers,
/// that has a row (an empty one holds no edge, and builds a graph without relationships).
/// Called once, for an array that [`edge_array`] did not read in place.
///
/// # Errors
/// `GraphError` for such an array.
#[cold]
#[inline(never)]
fn not_an_edge_array(edges: &Bound<'_, PyAny>) -> PyResult<()> {
    let ndim: usize = edges.getattr("ndim")?.extract()?;
    if ndim < 2 || edges.len()? == 0 {
        return Ok(());
    }
    let dtype = edges.getattr("dtype")?;
    let kind = dtype.getattr("kind")?.extract::<PyBackedStr>()?;
    if ndim == 2 && matches!(kind.as_ref(), "i" | "u") {
        return Ok(());
    }
    Err(CoreError::Graph(format!(
        "edges is a numpy array of shape {} and dtype {}: a numpy array of edges must be an \
         (m, 2) or (m, 3) integer array; pass weighted edges as tuples (u, v, weight)",
        edges.getattr("shape")?.str()?,
        dtype.str()?,
    ))
    .into())
}

/// The snapshot of an `(m, 2)` or `(m, 3)` integer array's rows `(u, v[, weight])`, with
/// the errors of the row by row read.
fn array_edges<T: Copy + Into<i128>>(n: u32, rows: ArrayView2<'_, T>) -> PyResult<SnapshotBuilder> {
    let width = rows.ncols();
    if !(2..=3).contains(&width) {
        return Err(CoreError::Graph(format!("an edge has 2 or 3 items, got {width}")).into());
    }
    let index = |value: T| -> PyResult<u32> {
        let value: i128 = value.into();
        u32::try_from(value).map_err(|_| {
            CoreError::Graph(format!(
                "edge index {value} is out of range for {n} entities"
            ))
            .into()
        })
    };
    let mut snapshot = SnapshotBuilder::new(n as usize, rows.nrows())?;
    for row in rows.rows() {
        let (from, to) = (index(row[0])?, index(row[1])?);
        if from >= n || to >= n {
            return Err(CoreError::Graph(format!(
                "edge ({from}, {to}) is out of range for {n} entities"
            ))
            .into());
        }
        // An integer weight is finite: no check needed.
        let weight = if width == 3 {
            row[2].into() as f64
        } else {
            1.0
        };
        snapshot.push(from, to, weight);
    }
    Ok(snapshot)
}

/// One edge of `from_edge_list`'s `edges` as a tuple: a tuple as it is, a list or a row of
/// a numpy array as a tuple of its items.
fn edge_tuple<'py>(item: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    // An exact tuple is told by its type pointer, without a call into Python.
    if let Ok(tuple) = item.cast_exact::<PyTuple>() {
        return Ok(tuple.clone());
    }
    if let Ok(tuple) = item.cast::<PyTuple>() {
        return Ok(tuple.clone());
    }
    let shape_error = || {
        let kind = item.get_type().name().map(|name| name.to_string());
        PyErr::from(CoreError::Graph(format!(
            "each edge must be a tuple, a list or a numpy array row (u, v[, weight]), got {}",
            kind.as_deref().unwrap_or("another object")
        )))
    };
    if args::is_array(item) {
        // A row of a float array (a weighted (m, 3) one, say) holds float indices; a row of a
        // 3-D array holds arrays.
        let dtype = item.getattr("dtype")?;
        let ndim: usize = item.getattr("ndim")?.extract()?;
        let kind = dtype.getattr("kind")?.extract::<PyBackedStr>()?;
        if ndim != 1 || !matches!(kind.as_ref(), "i" | "u") {
            return Err(CoreError::Graph(format!(
                "a numpy array of edges must be an (m, 2) or (m, 3) integer array, got a row \
                 of {ndim} dimension(s) of dtype {}: pass weighted edges as tuples (u, v, \
                 weight)",
                dtype.str()?
            ))
            .into());
        }
    } else if !item.is_instance_of::<PyList>() {
        return Err(shape_error());
    }
    match item.len()? {
        2..=3 => PyTuple::new(item.py(), item.try_iter()?.collect::<PyResult<Vec<_>>>()?),
        len => Err(CoreError::Graph(format!("an edge has 2 or 3 items, got {len}")).into()),
    }
}

/// The edge `item` holds when it is the usual one: an exact tuple of two exact ints that fit
/// in `u32` and, optionally, an exact finite float or int weight. None for anything else,
/// which the full read then checks and explains. Told by type pointers alone: a list of such
/// tuples is read at the cost of touching each object once.
#[inline]
fn plain_edge(item: &Bound<'_, PyAny>) -> Option<(u32, u32, f64)> {
    let tuple = item.cast_exact::<PyTuple>().ok()?;
    let len = tuple.len();
    if !(2..=3).contains(&len) {
        return None;
    }
    let index = |i: usize| -> Option<u32> {
        let value = tuple.get_borrowed_item(i).ok()?;
        let value = value.cast_exact::<PyInt>().ok()?;
        value.extract::<u32>().ok()
    };
    let (from, to) = (index(0)?, index(1)?);
    if len == 2 {
        return Some((from, to, 1.0));
    }
    let weight = tuple.get_borrowed_item(2).ok()?;
    let weight = if let Ok(float) = weight.cast_exact::<PyFloat>() {
        float.value()
    } else {
        weight.cast_exact::<PyInt>().ok()?.extract::<f64>().ok()?
    };
    weight.is_finite().then_some((from, to, weight))
}

/// A `GraphError` for an edge index that is no int (a float, a string), instead of the
/// conversion's bare `TypeError`; any other error as it is.
#[cold]
fn not_an_index(item: &Bound<'_, PyAny>, error: PyErr) -> PyErr {
    if !error.is_instance_of::<pyo3::exceptions::PyTypeError>(item.py()) {
        return error;
    }
    CoreError::Graph(format!(
        "an edge index must be an int, got {}",
        args::short_repr(item)
    ))
    .into()
}

/// The snapshot of `from_edge_list`'s `edges` (see [`edge_tuple`]).
fn edge_list(n: u32, edges: &Bound<'_, PyAny>) -> PyResult<SnapshotBuilder> {
    // A numpy masked array: refused when it masks a value (its rows would give the values
    // under the mask), read as its data when it masks nothing.
    if args::is_array_subclass(edges) {
        args::not_masked(edges, "edges", CoreError::Graph)?;
        if let Some(data) = args::unmasked_data(edges)? {
            return edge_list(n, &data);
        }
    }
    if args::is_array(edges) {
        if let Some(snapshot) = edge_array(n, edges)? {
            return Ok(snapshot);
        }
        not_an_edge_array(edges)?;
    } else if edges.is_instance_of::<PyString>() || edges.is_instance_of::<PyBytes>() {
        // Read item by item, text gives characters (or ints), which no edge message explains.
        return Err(CoreError::Graph(format!(
            "from_edge_list takes a list of edges (u, v[, weight]), got {}",
            args::describe(edges)
        ))
        .into());
    }
    let count = edges.len().unwrap_or(0);
    let mut snapshot = SnapshotBuilder::new(n as usize, count)?;
    let mut add = |item: &Bound<'_, PyAny>| -> PyResult<()> {
        if let Some((from, to, weight)) = plain_edge(item) {
            if from < n && to < n {
                snapshot.push(from, to, weight);
                return Ok(());
            }
        }
        let tuple = edge_tuple(item)?;
        let len = tuple.len();
        if !(2..=3).contains(&len) {
            return Err(CoreError::Graph(format!("an edge has 2 or 3 items, got {len}")).into());
        }
        let index = |i: usize| -> PyResult<u32> {
            let item = tuple.get_borrowed_item(i)?;
            not_bool(&item, "an edge index")?;
            extract_unsigned(&item, "an edge index", |v| {
                CoreError::Graph(format!("edge index {v} is out of range for {n} entities"))
            })
            .map_err(|error| not_an_index(&item, error))
        };
        let (from, to) = (index(0)?, index(1)?);
        let weight: f64 = if len == 3 {
            weight_arg(&*tuple.get_borrowed_item(2)?)?
        } else {
            1.0
        };
        if from >= n || to >= n {
            return Err(CoreError::Graph(format!(
                "edge ({from}, {to}) is out of range for {n} entities"
            ))
            .into());
        }
        check_weight(weight)?;
        snapshot.push(from, to, weight);
        Ok(())
    };
    // A list is walked by index (no iterator protocol per edge).
    if let Ok(list) = edges.cast::<PyList>() {
        for item in list.iter() {
            add(&item)?;
        }
    } else {
        let py = edges.py();
        let items = match edges.try_iter() {
            Ok(items) => items,
            Err(error) if error.is_instance_of::<pyo3::exceptions::PyTypeError>(py) => {
                return Err(CoreError::Graph(format!(
                    "from_edge_list takes a list of edges (u, v[, weight]), got {}",
                    args::describe(edges)
                ))
                .into())
            }
            Err(error) => return Err(error),
        };
        for (at, item) in items.enumerate() {
            // An iterator may be endless (`itertools.repeat`): Ctrl-C still stops it.
            args::check_signals_at(py, at)?;
            add(&item?)?;
        }
    }
    Ok(snapshot)
}

/// A directed multigraph of entities and typed, weighted relationships, with traversal,
/// shortest paths, centrality, community and cycle algorithms in Rust.
///
/// Entity ids are strings. Relationships are directed; algorithms taking `directed=False`
/// treat each one as an undirected edge. Parallel relationships count once (at their smallest
/// weight) for paths and betweenness, and add up for communities. Thread-safe: reads and
/// mutations from several threads never wait for the store with the GIL held, and results
/// are built from a copy taken under the lock.
///
/// A depth, hop count, round count or cycle cap beyond 64 bits means no limit.
///
/// Threads share a graph (its calls lock it, with the GIL released while they work). A
/// ``fork()`` taken while another thread is inside such a call copies its lock held into
/// the child, where no thread will release it: the child's first call on the graph then
/// waits for good. Fork before starting such threads, or use the "spawn" or "forkserver"
/// start method.
///
/// Raises:
///     GraphError: On unknown entities, duplicate ids, non-finite weights (or beyond the
///         float range), negative weights given to Dijkstra, a non-positive cycle cap, a
///         negative depth, hop count, round count or seed, a negative or non-finite
///         resolution (or a bool), an empty source list (or one naming an entity twice) for
///         `betweenness_from`, or a text argument (id, label, kind) that is not valid
///         Unicode (a lone surrogate; `in` and `has_entity` answer False for such an id);
///         and "out of memory" when a graph (or the buffers an algorithm needs, a few slots
///         per entity) does not fit in memory: the process goes on, and the graph is left
///         as it was.
#[pyclass(module = "llm_agent_runtime", name = "GraphStore", frozen)]
pub struct PyGraphStore {
    store: RwLock<Store>,
    frozen: Mutex<Option<Arc<Frozen>>>,
}

impl PyGraphStore {
    fn from_store(store: Store) -> PyGraphStore {
        PyGraphStore {
            store: RwLock::new(store),
            frozen: Mutex::new(None),
        }
    }

    /// Runs a mutation (store write-locked, see [`sync`]) and invalidates the snapshot, with
    /// the GIL released (see [`sync::write_detached`]): for a mutation whose work grows with
    /// the graph (a bulk add, an entity's removal, a scan of every relationship).
    fn mutate_detached<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Store) -> CoreResult<T> + Send,
    ) -> PyResult<T> {
        self.mutate_with(py, true, f)
    }

    /// Runs a mutation (store write-locked, see [`sync`]) and invalidates the snapshot; with
    /// the GIL released when `detached` (its work grows with the graph), else held unless
    /// the lock is contended (O(1) work, where a GIL round trip would cost more).
    fn mutate_with<T: Send>(
        &self,
        py: Python<'_>,
        detached: bool,
        f: impl FnOnce(&mut Store) -> CoreResult<T> + Send,
    ) -> PyResult<T> {
        let change = |store: &mut Store| {
            let result = f(store);
            // Even a failed mutation may have changed something (a bulk add stopped half
            // way): the snapshot goes either way.
            (result, self.frozen.lock().take())
        };
        let (result, stale) = if detached {
            sync::write_detached(py, &self.store, change)?
        } else {
            sync::write(py, &self.store, change)?
        };
        // The old snapshot holds Python strings: released after the lock, with the GIL.
        drop(stale);
        Ok(result?)
    }

    /// Runs `f` on the store, read-locked (see [`sync`]): `f` copies out Rust values, and
    /// Python objects are built from them after the lock is released.
    fn read<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&Store) -> R + Send) -> PyResult<R> {
        sync::read(py, &self.store, f)
    }

    /// [`Self::read`] for a read whose work grows with the graph (a pass over every
    /// relationship): with the GIL released (see [`sync::read_detached`]).
    fn scan<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&Store) -> R + Send) -> PyResult<R> {
        sync::read_detached(py, &self.store, f)
    }

    /// The snapshot of the current generation, built on first use after a mutation (with
    /// the GIL released: it is O(n + m)).
    fn frozen(&self, py: Python<'_>) -> PyResult<Arc<Frozen>> {
        // The usual case, a snapshot already there, costs no GIL round trip. A snapshot being
        // built (its slot locked) is waited for below, with the GIL released.
        let cached = self.read(py, |_| self.frozen.try_lock().and_then(|slot| slot.clone()))?;
        if let Some(frozen) = cached {
            return Ok(frozen);
        }
        run_detached(py, || self.frozen_of(&self.store.read()))
    }

    /// The snapshot of `store`, which the caller holds read-locked: as every mutation drops
    /// the snapshot under the write lock, a snapshot found here is of this very generation.
    /// Locks are taken in the same order as `mutate` (store, then snapshot).
    fn frozen_of(&self, store: &Store) -> CoreResult<Arc<Frozen>> {
        let mut slot = self.frozen.lock();
        if let Some(frozen) = slot.as_ref() {
            return Ok(frozen.clone());
        }
        let built = Arc::new(Frozen::build(store)?);
        *slot = Some(built.clone());
        Ok(built)
    }

    /// Whether an entity has the id `id` (false for a lone surrogate: every stored id is
    /// valid Unicode).
    fn contains(&self, py: Python<'_>, id: &Bound<'_, PyString>) -> PyResult<bool> {
        match id.to_str() {
            Ok(id) => self.read(py, |s| s.contains(id)),
            Err(_) => Ok(false),
        }
    }

    /// Runs a traversal (`algo::bfs` or `algo::dfs`) and lists the ids it visits.
    fn traverse<'py>(
        &self,
        py: Python<'py>,
        walk: Traversal,
        start: &str,
        max_depth: Option<usize>,
        directed: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        if max_depth.is_some_and(|depth| depth <= 1) {
            // Breadth- and depth-first alike: `start`, then its neighbours in the order of
            // their first relationship with it (the view's order), read from the store.
            let ids = self.per_entity(py, |store| {
                let s = store.index_of(start)?;
                let order = match max_depth {
                    Some(1) => store.first_hop(s, directed)?,
                    _ => vec![s],
                };
                Ok(order
                    .into_iter()
                    .map(|v| store.id_at(v).into_owned())
                    .collect::<Vec<String>>())
            })?;
            return PyList::new(py, ids);
        }
        let frozen = self.frozen(py)?;
        let inner = frozen.clone();
        let order = run_detached(py, move || {
            let s = inner.node(start)?;
            walk(
                inner.snapshot.view(directed)?,
                inner.snapshot.n,
                s,
                max_depth,
            )
        })?;
        frozen.py_list(py, &order)
    }

    /// Runs a per-entity query `f` on the store, read-locked with the GIL released: it reads
    /// the entity's own relationships ([`Store::out_links`], built on first use and kept up
    /// to date by additions), so it costs no snapshot however often the graph changes.
    fn per_entity<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Store) -> CoreResult<T> + Send,
    ) -> PyResult<T> {
        run_detached(py, || f(&self.store.read()))
    }

    /// Runs `f` on the frozen graph with the GIL released.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Frozen) -> CoreResult<T> + Send,
    ) -> PyResult<T> {
        let frozen = self.frozen(py)?;
        run_detached(py, move || f(&frozen))
    }
}

/// Runs `f`, a computation from many sources (betweenness, the transitive closure), with
/// the GIL released: one that is `long` (see [`betweenness::worth_stopping`]) stops on
/// Ctrl-C ([`run_stoppable`]); a short one runs straight, with a stop flag nothing sets.
fn run_sources<T: Send>(
    py: Python<'_>,
    long: bool,
    f: impl Fn(&AtomicBool) -> CoreResult<T> + Send + Sync,
) -> PyResult<T> {
    if long {
        run_stoppable(py, f)
    } else {
        run_detached(py, || f(&AtomicBool::new(false)))
    }
}

/// The error of `add_relationships` given `value`, which cannot be iterated (`e`): a
/// `GraphError` naming the argument and what it takes (as `from_edge_list` refuses a value
/// that is no list of edges), not Python's "'int' object is not iterable"; any other error
/// as it is.
#[cold]
#[inline(never)]
fn not_relationships(value: &Bound<'_, PyAny>, e: PyErr) -> PyErr {
    if !e.is_instance_of::<pyo3::exceptions::PyTypeError>(value.py()) {
        return e;
    }
    CoreError::Graph(format!(
        "relationships must be an iterable of relationship tuples, got {}",
        args::describe_value(value)
    ))
    .into()
}

/// Refuses a `bool` as the int argument `what` (a `GraphError`), as the other modules do.
fn not_bool(value: &Bound<'_, PyAny>, what: &str) -> PyResult<()> {
    Ok(args::not_bool(value, |_| {
        CoreError::Graph(format!("{what} must be an int, got bool"))
    })?)
}

/// A `seed` argument: any int from 0 to 2**64 - 1 (a negative one is a `GraphError`).
fn seed_arg(value: &Bound<'_, PyAny>) -> PyResult<u64> {
    not_bool(value, "seed")?;
    extract_unsigned(value, "seed", |v| {
        CoreError::Graph(format!("seed must be between 0 and 2**64 - 1, got {v}"))
    })
}

/// A non-negative limit argument named `what`: an int beyond 64 bits means no limit.
fn graph_limit(value: &Bound<'_, PyAny>, what: &str) -> PyResult<usize> {
    not_bool(value, what)?;
    args::limit(value, what, 0, |v| {
        CoreError::Graph(format!("{what} must be >= 0, got {v}"))
    })
}

/// A `max_depth` argument: None or an int >= 0 (beyond 64 bits: no limit, as None).
fn max_depth_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    if value.is_none() {
        return Ok(None);
    }
    graph_limit(value, "max_depth").map(Some)
}

/// A `hops` argument: an int >= 0 (beyond 64 bits: no limit).
fn hops_arg(value: &Bound<'_, PyAny>) -> PyResult<usize> {
    graph_limit(value, "hops")
}

/// A `max_rounds` argument: an int >= 0 (beyond 64 bits: no limit).
fn max_rounds_arg(value: &Bound<'_, PyAny>) -> PyResult<usize> {
    graph_limit(value, "max_rounds")
}

/// A cycle `cap`: an int >= 1 (beyond 64 bits: no limit).
fn cap_arg(value: &Bound<'_, PyAny>) -> PyResult<usize> {
    not_bool(value, "cycle cap")?;
    args::limit(value, "cycle cap", 1, |v| {
        CoreError::Graph(format!("cycle cap must be positive, got {v}"))
    })
}

/// `from_edge_list`'s `n`: an int from 0 to 2**32 - 1.
fn entity_count_arg(value: &Bound<'_, PyAny>) -> PyResult<u32> {
    not_bool(value, "n")?;
    extract_unsigned(value, "n", |v| {
        CoreError::Graph(format!("n must be between 0 and {}, got {v}", u32::MAX))
    })
}

/// A relationship weight: a real number; one beyond the float range (an int such as
/// `10**400`) is a `GraphError`, as a non-finite float is, not the built-in `OverflowError`;
/// so are a bool (Python's or numpy's: no weight, though a float conversion takes it) and
/// anything not a number, as `from_networkx` refuses them. (Whether it is finite is checked
/// where it is stored.)
fn weight_arg(value: &Bound<'_, PyAny>) -> PyResult<f64> {
    let not_a_weight = || -> PyErr {
        CoreError::Graph(format!(
            "relationship weight must be a real number, got {}",
            args::short_repr(value)
        ))
        .into()
    };
    if args::is_bool(value) {
        return Err(not_a_weight());
    }
    args::real(value, "relationship weight", |v| {
        CoreError::Graph(format!("relationship weight must be finite, got {v}"))
    })
    .map_err(|e| {
        if e.is_instance_of::<pyo3::exceptions::PyTypeError>(value.py()) {
            not_a_weight()
        } else {
            e
        }
    })
}

/// An optional weight (None keeps the current one): see [`weight_arg`].
fn optional_weight_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
    if value.is_none() {
        Ok(None)
    } else {
        weight_arg(value).map(Some)
    }
}

/// A modularity `resolution`: a finite number >= 0 (networkx's `resolution`; NaN, inf or a
/// negative value would make every modularity meaningless). A bool (Python's or numpy's) is
/// refused, as a weight refuses it: a float conversion would take True for 1.0.
fn resolution_arg(value: &Bound<'_, PyAny>) -> PyResult<f64> {
    let refuse =
        |v: String| CoreError::Graph(format!("resolution must be a finite number >= 0, got {v}"));
    if args::is_bool(value) {
        return Err(refuse(format!("a bool ({value})")).into());
    }
    let resolution = args::real(value, "resolution", refuse)?;
    if resolution.is_finite() && resolution >= 0.0 {
        Ok(resolution)
    } else {
        Err(refuse(resolution.to_string()).into())
    }
}

/// The communities of `modularity` (a sequence of sequences of ids), each id read as by
/// [`args::text`].
fn communities_arg(value: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<PyBackedStr>>> {
    let communities = args::sequence_of(
        value,
        CoreError::Graph,
        "the communities",
        |at, community| {
            args::names(
                &community,
                &|| {
                    format!(
                        "modularity takes each community as a list of entity names: community {at}"
                    )
                },
                CoreError::Graph,
            )
        },
    )?;
    communities.ok_or_else(|| {
        pyo3::exceptions::PyTypeError::new_err(args::not_a_list(value, &|| {
            "modularity takes a list of communities, each a list of entity names".to_owned()
        }))
    })
}

/// `add_entities`'s `ids`: a list of entity names.
fn add_entities_ids_arg(value: &Bound<'_, PyAny>) -> PyResult<Vec<PyBackedStr>> {
    entity_names(value, "add_entities")
}

/// `remove_entities`'s `ids`: a list of entity names.
fn remove_entities_ids_arg(value: &Bound<'_, PyAny>) -> PyResult<Vec<PyBackedStr>> {
    entity_names(value, "remove_entities")
}

/// `subgraph`'s `ids`: a list of entity names.
fn subgraph_ids_arg(value: &Bound<'_, PyAny>) -> PyResult<Vec<PyBackedStr>> {
    entity_names(value, "subgraph")
}

/// `betweenness_from`'s `sources`: a list of entity names.
fn sources_arg(value: &Bound<'_, PyAny>) -> PyResult<Vec<PyBackedStr>> {
    entity_names(value, "betweenness_from")
}

/// One relationship as `relationships()` lists it, copied out of the store so that the
/// Python dict is built after the lock is released.
struct RelationshipRow {
    from: CompactString,
    to: CompactString,
    kind: CompactString,
    weight: f64,
    properties: Value,
}

impl RelationshipRow {
    fn of(store: &Store, r: &Relationship) -> Self {
        Self {
            from: store.id_at(r.from).into(),
            to: store.id_at(r.to).into(),
            kind: store.kind_name(r.kind).into(),
            weight: r.weight,
            properties: r.properties.value().clone(),
        }
    }
}

// One `from_py_with` function per argument: each names its argument in a wrong type's
// `TypeError` (see `args`); a lone surrogate in a `str` is a `GraphError`.

fn from_id_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "from_id", CoreError::Graph)
}

/// `has_entity`'s `id`, as the `str` it is (read without a copy).
fn id_string_arg<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyString>> {
    match value.cast::<PyString>() {
        Ok(id) => Ok(id.clone()),
        Err(_) => Err(args::wrong_type(value, "id", args::STR)),
    }
}

fn id_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "id", CoreError::Graph)
}

fn kind_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "kind", CoreError::Graph)
}

fn source_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "source", CoreError::Graph)
}

fn start_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "start", CoreError::Graph)
}

fn target_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "target", CoreError::Graph)
}

fn text_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "text", CoreError::Graph)
}

fn to_id_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "to_id", CoreError::Graph)
}

fn optional_kind_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<PyBackedStr>> {
    args::optional_text(value, "kind", CoreError::Graph)
}

fn optional_label_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<PyBackedStr>> {
    args::optional_text(value, "label", CoreError::Graph)
}

fn create_missing_arg(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    args::flag(value, "create_missing")
}

fn directed_arg(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    args::flag(value, "directed")
}

fn normalized_arg(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    args::flag(value, "normalized")
}

fn weighted_arg(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    args::flag(value, "weighted")
}

/// A degree `mode` argument: "in", "out" or "total". An unknown name is returned as the
/// error, which the method raises itself (PyO3 notes the argument on errors raised while
/// extracting it, and this one had no such note).
fn degree_mode_arg(value: &Bound<'_, PyAny>) -> PyResult<CoreResult<DegreeMode>> {
    Ok(degree_mode(&args::text(value, "mode", CoreError::Graph)?))
}

fn degree_mode(mode: &str) -> CoreResult<DegreeMode> {
    match mode {
        "in" => Ok(DegreeMode::In),
        "out" => Ok(DegreeMode::Out),
        "total" => Ok(DegreeMode::Total),
        other => Err(CoreError::Graph(format!(
            "degree mode must be 'in', 'out' or 'total', got {other:?}"
        ))),
    }
}

#[pymethods]
impl PyGraphStore {
    #[new]
    fn new() -> Self {
        PyGraphStore::from_store(Store::default())
    }

    // ------------------------------------------------------------------ entities
    /// Adds an entity.
    ///
    /// Args:
    ///     id: Unique id.
    ///     label: Type label, e.g. "person".
    ///     properties: A JSON-compatible dict (or None): str keys; values None, bool (or
    ///         numpy's bool), str, int from -2**63 to 2**64 - 1 (or an integer type with
    ///         `__index__`, such as numpy's), finite float (or an inexact `numbers.Real`,
    ///         such as `numpy.float32`, stored as a float; not a `Fraction`, which a float
    ///         would round), and lists, tuples and dicts of them, at most 64 levels deep
    ///         (a dict naming each key's text once).
    ///
    /// Raises:
    ///     GraphError: When the id exists, `properties` is not a dict, a property is not
    ///         JSON-compatible, or `id` or `label` is not valid Unicode (a lone surrogate).
    #[pyo3(
        signature = (id, label = None, properties = None),
        text_signature = "($self, id, label='', properties=None)"
    )]
    fn add_entity(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = id_arg)] id: PyBackedStr,
        #[pyo3(from_py_with = optional_label_arg)] label: Option<PyBackedStr>,
        properties: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let properties = props::properties(properties)?;
        let label = label.as_deref().unwrap_or("");
        // The first entity change after `from_edge_list` stores every entity: O(n).
        let detached = self.read(py, Store::has_implied_entities)?;
        self.mutate_with(py, detached, |s| {
            s.add_entity(&*id, label, properties).map(|_| ())
        })
    }

    /// Replaces an entity's label and/or properties (None keeps the current one).
    ///
    /// Raises:
    ///     GraphError: On an unknown entity, `properties` that are not a dict, or a property
    ///         that is not JSON-compatible.
    #[pyo3(signature = (id, label = None, properties = None))]
    fn update_entity(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = id_arg)] id: PyBackedStr,
        #[pyo3(from_py_with = optional_label_arg)] label: Option<PyBackedStr>,
        properties: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let properties = match properties {
            None => None,
            some => Some(props::properties(some)?),
        };
        let label = label.as_deref().map(str::to_owned);
        // As in `add_entity`: the first change after `from_edge_list` is O(n).
        let detached = self.read(py, Store::has_implied_entities)?;
        self.mutate_with(py, detached, |s| s.update_entity(&id, label, properties))
    }

    /// Removes an entity and every relationship touching it. O(entities + relationships):
    /// to remove many, `remove_entities` takes one pass for all.
    fn remove_entity(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = id_arg)] id: PyBackedStr,
    ) -> PyResult<()> {
        self.mutate_detached(py, |s| s.remove_entity(&id))
    }

    /// Removes entities by id, and every relationship touching them, in one pass over the
    /// relationships; all or nothing. The graph is the one `remove_entity` of each in turn
    /// leaves (entity order included).
    ///
    /// Raises:
    ///     GraphError: When an id is unknown or named twice, or is not valid Unicode (a lone
    ///         surrogate); nothing is removed then.
    fn remove_entities(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = remove_entities_ids_arg)] ids: Vec<PyBackedStr>,
    ) -> PyResult<()> {
        self.mutate_detached(py, |s| s.remove_entities(&ids))
    }

    /// Whether `id` is an entity (False for a `str` that is not valid Unicode, which no
    /// entity id is).
    fn has_entity(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = id_string_arg)] id: Bound<'_, PyString>,
    ) -> PyResult<bool> {
        self.contains(py, &id)
    }

    /// `id in graph`: `has_entity`, and False for anything not a `str` (as in a dict).
    fn __contains__(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        match id.cast::<PyString>() {
            Ok(id) => self.contains(py, id),
            Err(_) => Ok(false),
        }
    }

    /// The entity as a dict `{"id", "label", "properties"}`.
    fn entity<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = id_arg)] id: PyBackedStr,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (id, label, properties) = self.read(py, |s| {
            let e = s.entity(s.index_of(&id)?);
            Ok::<_, CoreError>((e.id.clone(), e.label.clone(), e.properties.value().clone()))
        })??;
        // Built with the lock released: allocating may run the cycle collector.
        catch_panics(|| {
            let dict = PyDict::new(py);
            dict.set_item("id", id.as_str())?;
            dict.set_item("label", label.as_str())?;
            dict.set_item("properties", props::properties_to_python(py, &properties)?)?;
            Ok(dict)
        })
    }

    /// Entity ids, in insertion order (removals move the last entity into the gap).
    fn entity_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // Copied out in one buffer (the strings are made with the lock released), every
        // allocation fallible: a graph of many implied entities is cheap to make, and
        // listing its ids must fail as "out of memory", not abort.
        let (text, ends) = self.scan(py, |s| -> CoreResult<(String, Vec<usize>)> {
            let n = s.entity_count() as u32;
            let mut text = String::new();
            let mut ends = alloc::with_capacity(n as usize, "the entity ids")?;
            for i in 0..n {
                let id = s.id_at(i);
                text.try_reserve(id.len()).map_err(|_| {
                    CoreError::Graph("out of memory: the entity ids cannot be copied".into())
                })?;
                text.push_str(&id);
                ends.push(text.len());
            }
            Ok((text, ends))
        })??;
        graph_list(py, ends.len(), |i| {
            let start = i.checked_sub(1).map_or(0, |before| ends[before]);
            Ok(graph_str(py, text.get(start..ends[i]).unwrap_or_default())?.into_any())
        })
    }

    /// Number of entities.
    fn entity_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.read(py, Store::entity_count)
    }

    /// Number of relationships.
    fn relationship_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.read(py, Store::relationship_count)
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.entity_count(py)
    }

    // ------------------------------------------------------------------ relationships
    /// Adds a directed relationship between two existing entities (parallel ones allowed).
    /// A `kind` of None is the default, "related".
    ///
    /// Raises:
    ///     GraphError: On an unknown entity, a weight that is not finite (or beyond the float
    ///         range), `properties` that are not a dict, a property that is not
    ///         JSON-compatible, or an id or `kind` that is not valid Unicode (a lone surrogate).
    #[pyo3(
        signature = (from_id, to_id, kind = None, weight = 1.0, properties = None),
        text_signature = "($self, from_id, to_id, kind='related', weight=1.0, properties=None)"
    )]
    fn add_relationship(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = from_id_arg)] from_id: PyBackedStr,
        #[pyo3(from_py_with = to_id_arg)] to_id: PyBackedStr,
        #[pyo3(from_py_with = optional_kind_arg)] kind: Option<PyBackedStr>,
        #[pyo3(from_py_with = weight_arg)] weight: f64,
        properties: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let properties = props::properties(properties)?;
        let kind = kind.as_deref().unwrap_or("related");
        // The first addition after `from_edge_list` stores its plain edge list: O(m).
        let detached = self.read(py, |s| s.plain_edges().is_some())?;
        self.mutate_with(py, detached, |s| {
            s.add_relationship(&from_id, &to_id, kind, weight, properties)
        })
    }

    /// Adds many relationships at once: tuples `(from, to)`, `(from, to, kind)` or
    /// `(from, to, kind, weight)`. With `create_missing`, unknown endpoints become entities.
    ///
    /// Nothing is added when any tuple is invalid.
    ///
    /// Raises:
    ///     GraphError: `relationships` is not iterable, or a tuple is invalid (its shape, an
    ///         unknown entity without `create_missing`, a weight that is not finite).
    #[pyo3(signature = (relationships, create_missing = false))]
    fn add_relationships(
        &self,
        py: Python<'_>,
        relationships: &Bound<'_, PyAny>,
        #[pyo3(from_py_with = create_missing_arg)] create_missing: bool,
    ) -> PyResult<usize> {
        let shape_error = || {
            PyErr::from(CoreError::Graph(
                "each relationship must be a tuple (from, to[, kind[, weight]]) of str ids".into(),
            ))
        };
        // An iterator may be endless (`itertools.repeat`): Ctrl-C still stops it.
        let tuples: Vec<Bound<'_, PyTuple>> = relationships
            .try_iter()
            .map_err(|e| not_relationships(relationships, e))?
            .enumerate()
            .map(|(at, item)| {
                args::check_signals_at(py, at)?;
                item?.cast_into::<PyTuple>().map_err(|_| shape_error())
            })
            .collect::<PyResult<_>>()?;
        // Hold the Python strings and borrow their text: no copy unless an entity is new.
        type Row<'py> = (
            Bound<'py, PyString>,
            Bound<'py, PyString>,
            Option<Bound<'py, PyString>>,
            f64,
        );
        let mut rows: Vec<Row<'_>> = alloc::with_capacity(tuples.len(), "the relationships")?;
        for (at, tuple) in tuples.iter().enumerate() {
            args::check_signals_at(py, at)?;
            let len = tuple.len();
            if !(2..=4).contains(&len) {
                return Err(CoreError::Graph(format!(
                    "a relationship tuple has 2 to 4 items, got {len}"
                ))
                .into());
            }
            let text = |i: usize| -> PyResult<Bound<'_, PyString>> {
                tuple
                    .get_item(i)?
                    .cast_into::<PyString>()
                    .map_err(|_| shape_error())
            };
            let kind = if len >= 3 { Some(text(2)?) } else { None };
            let weight: f64 = if len == 4 {
                weight_arg(&tuple.get_item(3)?)?
            } else {
                1.0
            };
            check_weight(weight)?;
            rows.push((text(0)?, text(1)?, kind, weight));
        }
        let mut parsed: Vec<(&str, &str, &str, f64)> =
            alloc::with_capacity(rows.len(), "the relationships")?;
        let text = |s| args::text_of(s, CoreError::Graph);
        for (from, to, kind, weight) in &rows {
            let kind = match kind {
                Some(k) => text(k)?,
                None => "related",
            };
            parsed.push((text(from)?, text(to)?, kind, *weight));
        }
        let count = parsed.len();
        self.mutate_detached(py, |s| {
            if !create_missing {
                for (from, to, _, _) in &parsed {
                    s.index_of(from)?;
                    s.index_of(to)?;
                }
            }
            for (from, to, kind, weight) in parsed {
                let a = s.ensure_entity(from)?;
                let b = s.ensure_entity(to)?;
                let kind = s.intern(kind);
                s.push_relationship(a, b, kind, weight);
            }
            Ok(count)
        })
    }

    /// Builds a graph of `n` entities with ids "0" .. "n-1" from integer edges, the fast bulk
    /// path for graphs that come as index pairs (e.g. from numpy or another graph library).
    ///
    /// Args:
    ///     n: Number of entities (at most 2**32 - 1).
    ///     edges: Edges `(u, v)` or `(u, v, weight)` of entity indices (ints): an `(m, 2)`
    ///         or `(m, 3)` integer numpy array (the fastest: read in place, no Python object
    ///         per edge), tuples, lists, or numpy rows.
    ///     kind: Kind of every relationship.
    ///
    /// Raises:
    ///     GraphError: When `n` or an index is out of range, an index is not an int, or a
    ///         weight is not finite.
    #[staticmethod]
    #[pyo3(
        signature = (n, edges, kind = None),
        text_signature = "(n, edges, kind='related')"
    )]
    fn from_edge_list(
        #[pyo3(from_py_with = entity_count_arg)] n: u32,
        edges: &Bound<'_, PyAny>,
        #[pyo3(from_py_with = optional_kind_arg)] kind: Option<PyBackedStr>,
    ) -> PyResult<PyGraphStore> {
        let kind = kind.as_deref().unwrap_or("related");
        catch_panics(|| build_numbered(n, edges, kind))
    }

    /// Adds entities by id (empty label, no properties); all or nothing.
    ///
    /// Raises:
    ///     GraphError: When an id exists already or repeats, or is not valid Unicode (a lone
    ///         surrogate).
    fn add_entities(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = add_entities_ids_arg)] ids: Vec<PyBackedStr>,
    ) -> PyResult<()> {
        self.mutate_detached(py, |s| {
            let mut fresh = rustc_hash::FxHashSet::default();
            fresh.try_reserve(ids.len()).map_err(|_| {
                CoreError::Graph(
                    "out of memory: the check of the new ids cannot be allocated".into(),
                )
            })?;
            for id in &ids {
                let id: &str = id;
                if s.contains(id) || !fresh.insert(id) {
                    return Err(CoreError::Graph(format!("entity {id:?} already exists")));
                }
            }
            for id in &ids {
                s.add_entity(&**id, "", serde_json::Value::Null)?;
            }
            Ok(())
        })
    }

    /// Sets the weight and/or properties of every `from -> to` relationship of `kind`;
    /// returns how many were updated.
    ///
    /// Raises:
    ///     GraphError: On an unknown entity, a weight that is not finite (or beyond the float
    ///         range), `properties` that are not a dict, or a property that is not
    ///         JSON-compatible.
    #[pyo3(signature = (from_id, to_id, kind, weight = None, properties = None))]
    fn update_relationship(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = from_id_arg)] from_id: PyBackedStr,
        #[pyo3(from_py_with = to_id_arg)] to_id: PyBackedStr,
        #[pyo3(from_py_with = kind_arg)] kind: PyBackedStr,
        #[pyo3(from_py_with = optional_weight_arg)] weight: Option<f64>,
        properties: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let properties = match properties {
            None => None,
            some => Some(props::properties(some)?),
        };
        // A scan of every relationship: with the GIL released.
        self.mutate_detached(py, |s| {
            s.update_relationship(&from_id, &to_id, &kind, weight, properties)
        })
    }

    /// Removes the `from -> to` relationships (only those of `kind` when given); returns how
    /// many were removed.
    #[pyo3(signature = (from_id, to_id, kind = None))]
    fn remove_relationship(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = from_id_arg)] from_id: PyBackedStr,
        #[pyo3(from_py_with = to_id_arg)] to_id: PyBackedStr,
        #[pyo3(from_py_with = optional_kind_arg)] kind: Option<PyBackedStr>,
    ) -> PyResult<usize> {
        // A scan of every relationship: with the GIL released.
        self.mutate_detached(py, |s| {
            s.remove_relationship(&from_id, &to_id, kind.as_deref())
        })
    }

    /// Every relationship as a dict `{"from", "to", "kind", "weight", "properties"}`.
    fn relationships<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let rows = self.scan(py, |s| {
            alloc::collected(
                s.relationships().iter().map(|r| RelationshipRow::of(s, r)),
                "the relationships' rows",
            )
        })??;
        relationship_dicts(py, rows)
    }

    /// The relationships leaving `id`, as dicts in insertion order (the seed's `edges_from`).
    fn edges_from<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = id_arg)] id: PyBackedStr,
    ) -> PyResult<Bound<'py, PyList>> {
        let rows = self.per_entity(py, |store| {
            // The relationships of this entity, not a scan of every relationship, nor a new
            // snapshot after each mutation.
            // Each made alone from a plain edge list, not all of them for one entity's.
            let v = store.index_of(&id)?;
            store
                .out_links()?
                .of(v)
                .map(|i| match store.relationship_at(i) {
                    Some(r) => Ok(RelationshipRow::of(store, &r)),
                    None => Err(outside_store(i, store.relationship_count())),
                })
                .collect::<CoreResult<Vec<_>>>()
        })?;
        relationship_dicts(py, rows)
    }

    // ------------------------------------------------------------------ traversal
    /// Entities in breadth-first order from `start`, at most `max_depth` hops away.
    #[pyo3(signature = (start, max_depth = None, directed = true))]
    fn bfs<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = start_arg)] start: PyBackedStr,
        #[pyo3(from_py_with = max_depth_arg)] max_depth: Option<usize>,
        #[pyo3(from_py_with = directed_arg)] directed: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        self.traverse(py, algo::bfs, &start, max_depth, directed)
    }

    /// Entities in depth-first preorder from `start`, at most `max_depth` hops away.
    #[pyo3(signature = (start, max_depth = None, directed = true))]
    fn dfs<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = start_arg)] start: PyBackedStr,
        #[pyo3(from_py_with = max_depth_arg)] max_depth: Option<usize>,
        #[pyo3(from_py_with = directed_arg)] directed: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        self.traverse(py, algo::dfs, &start, max_depth, directed)
    }

    /// The cheapest path (Dijkstra) and its cost, or None when `target` is unreachable.
    ///
    /// Among equal-cost paths, the one networkx's `dijkstra_path` returns. Finite weights
    /// can sum past the float range: such a path is still found, at cost inf (as networkx).
    ///
    /// Raises:
    ///     GraphError: On an unknown entity or a negative weight.
    #[pyo3(signature = (source, target, directed = true))]
    fn shortest_path(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = source_arg)] source: PyBackedStr,
        #[pyo3(from_py_with = target_arg)] target: PyBackedStr,
        #[pyo3(from_py_with = directed_arg)] directed: bool,
    ) -> PyResult<Option<(Vec<String>, f64)>> {
        self.run(py, |f| {
            let (s, t) = (f.node(&source)?, f.node(&target)?);
            match algo::shortest_path(&f.snapshot, directed, s, t)? {
                Some((path, cost)) => Ok(Some((f.names(&path)?, cost))),
                None => Ok(None),
            }
        })
    }

    /// Cheapest distance from `source` to every reachable entity (itself at 0.0; inf where
    /// finite weights sum past the float range, as networkx).
    #[pyo3(signature = (source, directed = true))]
    fn distances<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = source_arg)] source: PyBackedStr,
        #[pyo3(from_py_with = directed_arg)] directed: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let frozen = self.frozen(py)?;
        let inner = frozen.clone();
        let source: &str = &source;
        let reached: Vec<(usize, f64)> = run_detached(py, move || {
            let s = inner.node(source)?;
            let (dist, pred) = algo::dijkstra(&inner.snapshot, directed, s, None)?;
            // Counted first: a few reached nodes of a big graph make their own strings.
            Ok(dist
                .into_iter()
                .zip(pred)
                .enumerate()
                .filter(|&(_, (_, p))| p != algo::UNREACHED)
                .map(|(v, (d, _))| (v, d))
                .collect())
        })?;
        frozen.py_dict(py, reached.into_iter())
    }

    /// Entities reachable from `source` in one or more hops: itself only on a cycle.
    ///
    /// With `directed`, a directed cycle (a self-loop counts); without, a cycle of the
    /// relationships taken as undirected edges: a self-loop, two relationships between
    /// `source` and one neighbour, or a path between two of its neighbours that avoids it
    /// (a single relationship walked there and back is no cycle). Every other entity is in
    /// the set exactly when it is in networkx's `descendants` (of the `MultiDiGraph`, or of
    /// the `MultiGraph` without `directed`).
    #[pyo3(signature = (source, directed = true))]
    fn reachable<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = source_arg)] source: PyBackedStr,
        #[pyo3(from_py_with = directed_arg)] directed: bool,
    ) -> PyResult<Bound<'py, PySet>> {
        let frozen = self.frozen(py)?;
        let inner = frozen.clone();
        let source: &str = &source;
        let found = run_detached(py, move || {
            let s = inner.node(source)?;
            algo::reachable(&inner.snapshot, directed, s)
        })?;
        frozen.py_set(py, &found)
    }

    /// For every entity, the sorted ids reachable from it in one or more hops (keys sorted
    /// too).
    ///
    /// Runs with the GIL released; a long run (a big graph) stops on Ctrl-C.
    fn transitive_closure<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let frozen = self.frozen(py)?;
        let inner = frozen.clone();
        let n = frozen.snapshot.n;
        let long = betweenness::worth_stopping(&frozen.snapshot, n);
        let (order, closure) = run_sources(py, long, move |stop| {
            // The ids sorted once, as strings: the keys' order and each list's (sorting every
            // list by its strings cost more than finding it).
            let mut order = alloc::collected(0..n as u32, "the ids' order")?;
            order.sort_unstable_by(|&a, &b| {
                inner
                    .ids
                    .with_id(a, |x| inner.ids.with_id(b, |y| x.cmp(y)))
                    .flatten()
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            let mut rank = alloc::filled(n, 0u32, "the ids' ranks")?;
            for (r, &v) in order.iter().enumerate() {
                rank[v as usize] = r as u32;
            }
            let closure = algo::transitive_closure(&inner.snapshot, &rank, stop)?;
            Ok((order, closure))
        })?;
        // Every list holds the snapshot's strings (one per entity), not a string per item.
        let ids = frozen.py_ids(py)?;
        let dict = graph_dict(py)?;
        for &v in &order {
            let row = closure
                .get(v as usize)
                .ok_or_else(|| outside_snapshot(v as usize, closure.len()))?;
            let key = py_id(ids, v as usize)?.bind(py);
            graph_set_item(&dict, key, frozen.py_list(py, row)?.as_any())?;
        }
        Ok(dict)
    }

    /// Entities within `hops` of `id` (both directions unless `directed`) as a new graph.
    ///
    /// The walk and the copy read one generation of the graph (a concurrent mutation comes
    /// wholly before or after), with the GIL released.
    #[pyo3(signature = (id, hops = 1, directed = false))]
    fn neighborhood(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = id_arg)] id: PyBackedStr,
        #[pyo3(from_py_with = hops_arg)] hops: usize,
        #[pyo3(from_py_with = directed_arg)] directed: bool,
    ) -> PyResult<PyGraphStore> {
        run_detached(py, || {
            // Node indices are only meaningful for the store they were found in: the walk
            // uses the snapshot of the generation held read-locked here, and so does the copy.
            let store = self.store.read();
            if hops <= 1 {
                // One hop reads the entity's own links (no snapshot after a write).
                let s = store.index_of(&id)?;
                let nodes = match hops {
                    0 => vec![s],
                    _ => store.first_hop(s, directed)?,
                };
                return Ok(PyGraphStore::from_store(store.induced(&nodes)?));
            }
            let frozen = self.frozen_of(&store)?;
            let s = frozen.node(&id)?;
            let nodes = algo::neighborhood(&frozen.snapshot, directed, s, hops)?;
            Ok(PyGraphStore::from_store(store.induced(&nodes)?))
        })
    }

    /// The entities `ids` and the relationships among them, as a new graph.
    fn subgraph(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = subgraph_ids_arg)] ids: Vec<PyBackedStr>,
    ) -> PyResult<PyGraphStore> {
        // Borrowed, not moved: the Python strings are released here, with the GIL.
        let ids = &ids;
        run_detached(py, || {
            let store = self.store.read();
            let mut seen = rustc_hash::FxHashSet::default();
            seen.try_reserve(ids.len()).map_err(|_| {
                CoreError::Graph("out of memory: the subgraph's ids cannot be allocated".into())
            })?;
            let mut nodes = alloc::with_capacity(ids.len(), "the subgraph's ids")?;
            for id in ids {
                let v = store.index_of(id)?;
                if seen.insert(v) {
                    nodes.push(v);
                }
            }
            Ok(PyGraphStore::from_store(store.induced(&nodes)?))
        })
    }

    // ------------------------------------------------------------------ centrality
    /// Degree centrality: `mode` "in", "out" or "total" (every relationship counts, a
    /// self-loop twice in total), divided by `n - 1` when `normalized` (networkx's).
    #[pyo3(
        signature = (mode = Ok(DegreeMode::Total), normalized = true),
        text_signature = "($self, mode=\"total\", normalized=True)"
    )]
    fn degree_centrality<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = degree_mode_arg)] mode: CoreResult<DegreeMode>,
        #[pyo3(from_py_with = normalized_arg)] normalized: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mode = mode?;
        let frozen = self.frozen(py)?;
        let inner = frozen.clone();
        let scores = run_detached(py, move || {
            algo::degree_centrality(
                inner.snapshot.n,
                inner.snapshot.edges().iter().map(|&(a, b, _)| (a, b)),
                mode,
                normalized,
            )
        })?;
        frozen.py_dict(py, scores.into_iter().enumerate())
    }

    /// Betweenness centrality (Brandes), as networkx's `betweenness_centrality`.
    ///
    /// Args:
    ///     normalized: Divide by `(n-1)(n-2)` as networkx does.
    ///     weighted: Use relationship weights as lengths (they must be positive).
    ///     directed: Follow relationship direction; False treats them as undirected edges.
    ///     k: Estimate from `k` sources sampled with `seed`, rescaled as networkx 3.6
    ///         does: a sampled source's score by (n-1)/(k-1), another's by (n-1)/k, before
    ///         the normalization (with `k=1`, the source's own score is undefined: NaN, as
    ///         there); None = exact.
    ///     seed: Seed of the sample.
    ///
    /// Raises:
    ///     GraphError: When `k` is out of range, or weights are not positive in a weighted run.
    #[pyo3(signature = (normalized = true, weighted = false, directed = true, k = None, seed = 0))]
    fn betweenness_centrality<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = normalized_arg)] normalized: bool,
        #[pyo3(from_py_with = weighted_arg)] weighted: bool,
        #[pyo3(from_py_with = directed_arg)] directed: bool,
        k: Option<&Bound<'py, PyAny>>,
        #[pyo3(from_py_with = seed_arg)] seed: u64,
    ) -> PyResult<Bound<'py, PyDict>> {
        // An int of any size; one outside 1..=n is refused below, once n is known.
        if let Some(k) = k {
            not_bool(k, "k")?;
        }
        let k: Option<Result<usize, OutOfRange>> = k.map(|k| args::to_usize(k, "k")).transpose()?;
        let frozen = self.frozen(py)?;
        let n = frozen.snapshot.n;
        let k = match k {
            None => None,
            Some(Ok(k)) if (1..=n).contains(&k) => Some(k),
            Some(other) => {
                let k = other.map_or_else(|e| e.text().to_owned(), |k| k.to_string());
                return Err(CoreError::Graph(format!(
                    "k must be between 1 and the entity count ({n}), got {k}"
                ))
                .into());
            }
        };
        let inner = frozen.clone();
        let long = betweenness::worth_stopping(&frozen.snapshot, k.unwrap_or(n));
        let scores = run_sources(py, long, move |stop| {
            let sample = match k {
                None => None,
                Some(k) => {
                    let mut all = alloc::collected(0..n as u32, "the betweenness sample")?;
                    SplitMix::new(seed).shuffle(&mut all);
                    all.truncate(k);
                    Some(all)
                }
            };
            betweenness::stoppable_betweenness(
                &inner.snapshot,
                directed,
                weighted,
                normalized,
                sample.as_deref(),
                stop,
            )
        })?;
        frozen.py_dict(py, scores.into_iter().enumerate())
    }

    /// Betweenness from an explicit list of source entities (for reproducing an estimate),
    /// rescaled as `betweenness_centrality`'s sampled estimate is (one source: its own score
    /// is NaN).
    ///
    /// Raises:
    ///     GraphError: When `sources` is empty, names an unknown entity or names an entity
    ///         twice, or weights are not positive in a weighted run.
    #[pyo3(signature = (sources, normalized = true, weighted = false, directed = true))]
    fn betweenness_from<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = sources_arg)] sources: Vec<PyBackedStr>,
        #[pyo3(from_py_with = normalized_arg)] normalized: bool,
        #[pyo3(from_py_with = weighted_arg)] weighted: bool,
        #[pyo3(from_py_with = directed_arg)] directed: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let frozen = self.frozen(py)?;
        let inner = frozen.clone();
        let long = betweenness::worth_stopping(&frozen.snapshot, sources.len());
        // Borrowed, not moved: the Python strings are released here, with the GIL.
        let sources = &sources;
        let scores = run_sources(py, long, move |stop| {
            // A repeated source would be counted twice but rescaled as distinct ones (wrong
            // scores): refused, as `modularity` refuses an entity listed twice.
            let mut seen = alloc::filled(inner.snapshot.n, false, "the sources' marks")?;
            let nodes = inner.distinct_nodes(sources, &mut seen, "listed twice in sources")?;
            drop(seen);
            betweenness::stoppable_betweenness(
                &inner.snapshot,
                directed,
                weighted,
                normalized,
                Some(&nodes),
                stop,
            )
        })?;
        frozen.py_dict(py, scores.into_iter().enumerate())
    }

    // ------------------------------------------------------------------ communities
    /// Louvain communities of the undirected view (parallel weights add up), seeded; graphs
    /// of up to 512 entities keep the best of 8 seeded node orders.
    ///
    /// Multiplying every weight by one constant changes neither the communities nor the
    /// modularity (sums are taken in units of the total weight). A level ends when a pass
    /// over its nodes improves modularity by less than 1e-7, and the run when a level does
    /// (networkx's `threshold`), after at most 1000 passes a level.
    ///
    /// Returns:
    ///     (communities, modularity): lists of ids, each in `entity_ids()` order (insertion
    ///     order until an entity is removed: a removal moves the last entity into its place),
    ///     listed in that order of their first ids; and the partition's modularity at
    ///     `resolution` (networkx's definition).
    ///
    /// Raises:
    ///     GraphError: When a weight is negative, or `resolution` is negative, NaN, inf or a
    ///         bool.
    #[pyo3(signature = (resolution = 1.0, seed = 0))]
    fn communities<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = resolution_arg)] resolution: f64,
        #[pyo3(from_py_with = seed_arg)] seed: u64,
    ) -> PyResult<(Bound<'py, PyList>, f64)> {
        let frozen = self.frozen(py)?;
        let inner = frozen.clone();
        let (communities, q) = run_interruptible(py, move |check| {
            inner.refuse_negative("community detection")?;
            let edges = inner.snapshot.edges();
            community::louvain(inner.snapshot.n, edges, resolution, seed, check)
        })?;
        Ok((frozen.py_lists(py, &communities)?, q))
    }

    /// Asynchronous label propagation (weighted, seeded) on the undirected view.
    #[pyo3(signature = (seed = 0, max_rounds = 100))]
    fn label_propagation<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = seed_arg)] seed: u64,
        #[pyo3(from_py_with = max_rounds_arg)] max_rounds: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let frozen = self.frozen(py)?;
        let inner = frozen.clone();
        let communities = run_interruptible(py, move |check| {
            inner.refuse_negative("label propagation")?;
            let edges = inner.snapshot.edges();
            community::label_propagation(inner.snapshot.n, edges, seed, max_rounds, check)
        })?;
        frozen.py_lists(py, &communities)
    }

    /// Modularity of a partition (lists of ids) on the undirected view.
    ///
    /// Raises:
    ///     GraphError: When a weight is negative (as for `communities`), the communities
    ///         name an unknown entity, overlap or miss one, or `resolution` is negative, NaN,
    ///         inf or a bool.
    #[pyo3(signature = (communities, resolution = 1.0))]
    fn modularity(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = communities_arg)] communities: Vec<Vec<PyBackedStr>>,
        #[pyo3(from_py_with = resolution_arg)] resolution: f64,
    ) -> PyResult<f64> {
        self.run(py, |f| {
            // Modularity is defined for non-negative weights: with a negative one the sums
            // came out as 0.0 (a total weight <= 0) or as networkx's, depending on the mix.
            f.refuse_negative("modularity")?;
            let mut parts = Vec::with_capacity(communities.len());
            let mut seen = alloc::filled(f.snapshot.n, false, "the partition's marks")?;
            for community in &communities {
                parts.push(f.distinct_nodes(community, &mut seen, "in two communities")?);
            }
            if seen.iter().any(|s| !s) {
                return Err(CoreError::Graph(
                    "the communities must cover every entity".into(),
                ));
            }
            community::modularity(f.snapshot.n, f.snapshot.edges(), &parts, resolution)
        })
    }

    // ------------------------------------------------------------------ cycles
    /// Whether the directed graph has a cycle (a self-loop counts).
    fn has_cycle(&self, py: Python<'_>) -> PyResult<bool> {
        self.run(py, |f| algo::has_cycle(&f.snapshot))
    }

    /// Elementary directed cycles, at most `cap` of them, each starting at its entity that
    /// comes first in `entity_ids()` order (insertion order until an entity is removed: a
    /// removal moves the last entity into its place).
    ///
    /// Runs with the GIL released, and stops on Ctrl-C: a graph may hold more cycles than
    /// any run can list, and a search for many may take minutes.
    ///
    /// Raises:
    ///     GraphError: When `cap` is not positive.
    #[pyo3(signature = (cap = 100))]
    fn cycles<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = cap_arg)] cap: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let frozen = self.frozen(py)?;
        let inner = frozen.clone();
        // The search costs O((n + m) (cycles + 1)) at most: a short one runs straight.
        let found = if betweenness::worth_stopping(&frozen.snapshot, cap) {
            run_interruptible(py, move |check| algo::cycles(&inner.snapshot, cap, check))?
        } else {
            run_detached(py, move || {
                algo::cycles(&inner.snapshot, cap, &mut || Ok(()))
            })?
        };
        frozen.py_lists(py, &found)
    }

    // ------------------------------------------------------------------ the seed's queries
    /// Distinct relationship kinds, sorted.
    fn relationship_kinds(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.read(py, |store| {
            let mut kinds: Vec<String> = store.kinds_in_use().map(str::to_owned).collect();
            kinds.sort_unstable();
            kinds
        })
    }

    /// Number of distinct relationship kinds.
    fn relationship_kind_count(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.relationship_kinds(py)?.len())
    }

    /// Number of relationships from `from_id` to `to_id`.
    fn relationship_count_between(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = from_id_arg)] from_id: PyBackedStr,
        #[pyo3(from_py_with = to_id_arg)] to_id: PyBackedStr,
    ) -> PyResult<usize> {
        self.per_entity(py, |store| {
            let (a, b) = (store.index_of(&from_id)?, store.index_of(&to_id)?);
            let leaving = store.out_links()?.of(a);
            Ok(leaving.filter(|&i| store.target_of(i) == Some(b)).count())
        })
    }

    /// Ids one hop away along outgoing relationships, sorted, without duplicates.
    fn neighbors_of(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = id_arg)] id: PyBackedStr,
    ) -> PyResult<Vec<String>> {
        self.per_entity(py, |store| {
            let v = store.index_of(&id)?;
            let mut targets = store
                .out_links()?
                .of(v)
                .map(|i| {
                    let target = store.target_of(i);
                    target.ok_or_else(|| outside_store(i, store.relationship_count()))
                })
                .collect::<CoreResult<Vec<u32>>>()?;
            // Each neighbour once, whatever the parallel relationships.
            targets.sort_unstable();
            targets.dedup();
            let mut names: Vec<String> = targets
                .into_iter()
                .map(|t| store.id_at(t).into_owned())
                .collect();
            names.sort_unstable();
            Ok(names)
        })
    }

    /// Ids of entities with a relationship to themselves, sorted.
    fn entities_with_self_loops(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.scan(py, |store| {
            let names: BTreeSet<Cow<'_, str>> = store
                .relationships()
                .iter()
                .filter(|r| r.from == r.to)
                .map(|r| store.id_at(r.from))
                .collect();
            names.into_iter().map(Cow::into_owned).collect()
        })
    }

    /// Number of unordered pairs of distinct entities linked in both directions.
    fn bidirectional_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.scan(py, |store| {
            let pairs: rustc_hash::FxHashSet<(u32, u32)> = store
                .relationships()
                .iter()
                .filter(|r| r.from != r.to)
                .map(|r| (r.from, r.to))
                .collect();
            pairs
                .iter()
                .filter(|&&(a, b)| a < b && pairs.contains(&(b, a)))
                .count()
        })
    }

    /// Number of entities with no relationship in or out.
    fn isolated_entity_count(&self, py: Python<'_>) -> PyResult<usize> {
        let count = self.scan(py, |store| {
            let mut touched = alloc::filled(store.entity_count(), false, "the entities' marks")?;
            for r in store.relationships() {
                touched[r.from as usize] = true;
                touched[r.to as usize] = true;
            }
            Ok::<_, CoreError>(touched.iter().filter(|t| !**t).count())
        })?;
        Ok(count?)
    }

    /// Sum of in-degrees (equals the relationship count).
    fn total_in_degree(&self, py: Python<'_>) -> PyResult<usize> {
        self.relationship_count(py)
    }

    /// Mean relationship weight (0.0 without relationships).
    fn avg_relationship_weight(&self, py: Python<'_>) -> PyResult<f64> {
        self.scan(py, |store| {
            let rels = store.relationships();
            if rels.is_empty() {
                return 0.0;
            }
            let n = rels.len() as f64;
            let sum = rels.iter().map(|r| r.weight).sum::<f64>();
            if sum.is_finite() {
                return sum / n;
            }
            // Finite weights whose sum is beyond the float range: summed in units of the
            // largest, whose mean is finite.
            let scale = rels.iter().fold(0.0_f64, |m, r| m.max(r.weight.abs()));
            rels.iter().map(|r| r.weight / scale).sum::<f64>() / n * scale
        })
    }

    /// Mean number of outgoing relationships per entity (0.0 without entities).
    fn avg_out_degree(&self, py: Python<'_>) -> PyResult<f64> {
        self.read(py, |store| match store.entity_count() {
            0 => 0.0,
            n => store.relationship_count() as f64 / n as f64,
        })
    }

    /// Mean number of incoming relationships per entity (0.0 without entities).
    fn avg_in_degree(&self, py: Python<'_>) -> PyResult<f64> {
        self.avg_out_degree(py)
    }

    // ------------------------------------------------------------------ export
    /// The graph as a versioned JSON document (round-trips through `from_json`).
    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        run_detached(py, || self.store.read().to_json())
    }

    /// Rebuilds a graph from `to_json` output.
    ///
    /// Raises:
    ///     GraphError: On a malformed, foreign or newer-version document (one whose
    ///         properties name a key twice in one object is malformed: a value would be
    ///         dropped).
    #[staticmethod]
    fn from_json(
        py: Python<'_>,
        #[pyo3(from_py_with = text_arg)] text: PyBackedStr,
    ) -> PyResult<PyGraphStore> {
        run_detached(py, || Store::from_json(&text).map(PyGraphStore::from_store))
    }

    /// An independent copy.
    fn copy(&self, py: Python<'_>) -> PyResult<PyGraphStore> {
        run_detached(py, || {
            Ok(PyGraphStore::from_store(self.store.read().copy()))
        })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let (entities, relationships) = self.read(py, |store| {
            (store.entity_count(), store.relationship_count())
        })?;
        Ok(format!(
            "GraphStore(entities={entities}, relationships={relationships})"
        ))
    }
}

/// The Python dicts of `rows` (built with no lock held).
fn relationship_dicts(py: Python<'_>, rows: Vec<RelationshipRow>) -> PyResult<Bound<'_, PyList>> {
    catch_panics(|| {
        let list = PyList::empty(py);
        for r in rows {
            let dict = PyDict::new(py);
            dict.set_item("from", r.from.as_str())?;
            dict.set_item("to", r.to.as_str())?;
            dict.set_item("kind", r.kind.as_str())?;
            dict.set_item("weight", r.weight)?;
            dict.set_item(
                "properties",
                props::properties_to_python(py, &r.properties)?,
            )?;
            list.append(dict)?;
        }
        Ok(list)
    })
}
