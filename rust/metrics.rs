//! Lock-free runtime counters with consistent snapshots and Prometheus exposition.
//!
//! Global counters are plain atomics. Per-tool and per-agent counters live behind a read-mostly
//! map of `Arc`ed atomics: after a name's first use an increment takes only a shared read lock
//! and one atomic add, so concurrent increments are exact and never block each other.
//!
//! The map's lock is only ever held briefly and never across a release of the GIL: a snapshot
//! copies a map's entries (two pointers each) under it, then reads their counters with the
//! GIL released. So a thread recording a new name never waits long for it, and a `fork()`
//! (which the forking thread makes holding the GIL) never copies it held into the child.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use pyo3::prelude::*;
use serde::{Deserialize, Serialize};

use pyo3::pybacked::PyBackedStr;
use pyo3::types::PyInt;

use crate::args::{self, extract_unsigned, not_bool};
use crate::errors::CoreError;

/// Call and failure counts of one tool or one agent.
#[derive(Debug, Default)]
struct CallCounters {
    calls: AtomicU64,
    failures: AtomicU64,
}

/// One name's counters, as a snapshot copies them out of the map.
type Entry = (Arc<str>, Arc<CallCounters>);

/// The name the calls of names past a limit are counted under (see
/// [`Metrics::with_agent_limit`]).
pub const OTHER_NAMES: &str = "(other)";

/// Named call counters (per tool or per agent).
#[derive(Debug, Default)]
struct NamedCounters {
    by_name: RwLock<HashMap<Arc<str>, Arc<CallCounters>>>,
    /// Most names counted apart; the calls of later names go to [`OTHER_NAMES`].
    limit: Option<usize>,
}

impl NamedCounters {
    fn get_or_insert(&self, name: &str) -> Arc<CallCounters> {
        if let Some(c) = self.by_name.read().get(name) {
            return Arc::clone(c);
        }
        let mut map = self.by_name.write();
        if let Some(c) = map.get(name) {
            return Arc::clone(c); // added by another thread meanwhile
        }
        // The shared name is no agent's place: an agent called "(other)" (an end user's
        // choice of id) counts with the others, and takes none of the limit's places.
        let places = map.len() - usize::from(map.contains_key(OTHER_NAMES));
        let full = self.limit.is_some_and(|limit| places >= limit);
        let name = if full { OTHER_NAMES } else { name };
        Arc::clone(map.entry(Arc::from(name)).or_default())
    }

    // Release adds and Acquire loads (`counts`): a snapshot reads the counters in the
    // reverse of the order a call records them (an agent's failures, its calls, a tool's
    // failures, its calls), so that a count it reads implies those recorded before it; with
    // Relaxed, a weakly ordered CPU (ARM) could show more failures than calls. Free on x86.

    fn add_call(&self, name: &str) {
        // Fast path: the name is known, a shared lock and one atomic add.
        if let Some(c) = self.by_name.read().get(name) {
            c.calls.fetch_add(1, Ordering::Release);
            return;
        }
        self.get_or_insert(name)
            .calls
            .fetch_add(1, Ordering::Release);
    }

    fn add_failure(&self, name: &str) {
        if let Some(c) = self.by_name.read().get(name) {
            c.failures.fetch_add(1, Ordering::Release);
            return;
        }
        self.get_or_insert(name)
            .failures
            .fetch_add(1, Ordering::Release);
    }

    /// The names and their counters, copied under the lock (no counter is read here).
    fn entries(&self) -> Vec<Entry> {
        let map = self.by_name.read();
        map.iter()
            .map(|(name, counters)| (Arc::clone(name), Arc::clone(counters)))
            .collect()
    }
}

/// A copy of the named counters' entries (see [`Metrics::agent_entries`]).
pub struct Entries(Vec<Entry>);

/// The agents' counts, the first half of a snapshot (see [`Metrics::read_agents`]).
pub struct AgentCounts {
    failures: BTreeMap<String, u64>,
    calls: BTreeMap<String, u64>,
}

/// Loads one counter of each entry.
fn counts(entries: &[Entry], counter: fn(&CallCounters) -> &AtomicU64) -> BTreeMap<String, u64> {
    entries
        .iter()
        .map(|(name, counters)| (name.to_string(), counter(counters).load(Ordering::Acquire)))
        .collect()
}

/// The sum of `counts`, saturating at `u64::MAX`.
fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().fold(0, |sum, &n| sum.saturating_add(n))
}

/// The live counters of a runtime (pure Rust; see [`PyRuntimeMetrics`] for the binding).
#[derive(Debug, Default)]
pub struct Metrics {
    active_sessions: AtomicU64,
    total_sessions: AtomicU64,
    total_steps: AtomicU64,
    backpressure_shed_count: AtomicU64,
    memory_recall_count: AtomicU64,
    checkpoint_errors: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    tools: NamedCounters,
    agents: NamedCounters,
}

/// Counts one event: a plain atomic add (2**64 single events cannot happen, so it never wraps).
fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds an amount the caller chose, saturating at `u64::MAX` instead of wrapping around.
fn add_saturating(counter: &AtomicU64, by: u64) {
    // The closure always returns Some, so the update always succeeds.
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        Some(n.saturating_add(by))
    });
}

impl Metrics {
    /// Metrics that count at most `limit` agents apart: the calls of agents first seen past
    /// it are counted under [`OTHER_NAMES`] (so the per-agent map stays bounded when agent
    /// ids come from end users), as are an agent of that name's, which takes no place.
    pub fn with_agent_limit(limit: Option<usize>) -> Self {
        Self {
            agents: NamedCounters {
                limit,
                ..NamedCounters::default()
            },
            ..Self::default()
        }
    }

    /// Counts a session's run starting (active and total): a `run_agent` call, a turn of a
    /// multi-turn session and a resumed run each count once.
    pub fn session_started(&self) {
        // The total first, and the active count released after it: a snapshot, which reads
        // the active count first (acquiring it), never sees more sessions active than begun.
        bump(&self.total_sessions);
        self.active_sessions.fetch_add(1, Ordering::Release);
    }

    /// Counts a session end; the active count never goes below zero.
    pub fn session_finished(&self) {
        let _ = self
            .active_sessions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Counts one loop step.
    pub fn record_step(&self) {
        bump(&self.total_steps);
    }

    /// Counts a tool call, per tool and (when given) per agent. (The total is the sum of
    /// the tools' counts: a snapshot adds them up, so it always agrees with them.)
    pub fn record_tool_call(&self, tool: &str, agent_id: Option<&str>) {
        self.tools.add_call(tool);
        if let Some(agent) = agent_id {
            self.agents.add_call(agent);
        }
    }

    /// Counts a failed tool call, per tool and (when given) per agent.
    pub fn record_tool_failure(&self, tool: &str, agent_id: Option<&str>) {
        self.tools.add_failure(tool);
        if let Some(agent) = agent_id {
            self.agents.add_failure(agent);
        }
    }

    /// Counts a request shed by backpressure.
    pub fn record_backpressure_shed(&self) {
        bump(&self.backpressure_shed_count);
    }

    /// Counts memories recalled into a prompt (saturating at `u64::MAX`).
    pub fn record_memory_recall(&self, count: u64) {
        add_saturating(&self.memory_recall_count, count);
    }

    /// Counts a failed checkpoint write.
    pub fn record_checkpoint_error(&self) {
        bump(&self.checkpoint_errors);
    }

    /// Adds model token usage (each total saturating at `u64::MAX`).
    pub fn record_tokens(&self, input_tokens: u64, output_tokens: u64) {
        add_saturating(&self.input_tokens, input_tokens);
        add_saturating(&self.output_tokens, output_tokens);
    }

    /// A snapshot is read in four steps, in the order that keeps it one the counters could
    /// have been in, though threads record meanwhile: the agents' names, their counts, the
    /// tools' names, their counts. A call is counted per tool, then per agent, so no agent
    /// count holds a call the tools' miss: neither their counts (read after) nor their names
    /// (copied after: a call under a tool's first name is in the copy). Within each half,
    /// failures are read before calls (a failure is counted after its call), so no name has
    /// more failures than calls. Copying names is brief, and done holding the GIL (see the
    /// module docs); reading counts is done with it released, in the binding.
    ///
    /// This copies the agents' names: step one.
    pub fn agent_entries(&self) -> Entries {
        Entries(self.agents.entries())
    }

    /// Reads the agents' counts (`agents`: [`Metrics::agent_entries`]'s): step two.
    pub fn read_agents(agents: &Entries) -> AgentCounts {
        let failures = counts(&agents.0, |c| &c.failures);
        let calls = counts(&agents.0, |c| &c.calls);
        AgentCounts { failures, calls }
    }

    /// Copies the tools' names: step three.
    pub fn tool_entries(&self) -> Entries {
        Entries(self.tools.entries())
    }

    /// Reads the tools' and the global counters into a snapshot with `agents`: step four.
    /// The totals are the tools' sums.
    pub fn read(&self, agents: AgentCounts, tools: &Entries) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let tool_failures = counts(&tools.0, |c| &c.failures);
        let tool_calls = counts(&tools.0, |c| &c.calls);
        let AgentCounts {
            failures: agent_failures,
            calls: agent_calls,
        } = agents;
        // Read before the total it follows (see `session_started`).
        let active_sessions = self.active_sessions.load(Ordering::Acquire);
        Snapshot {
            active_sessions,
            total_sessions: load(&self.total_sessions),
            total_steps: load(&self.total_steps),
            total_tool_calls: total(&tool_calls),
            failed_tool_calls: total(&tool_failures),
            backpressure_shed_count: load(&self.backpressure_shed_count),
            memory_recall_count: load(&self.memory_recall_count),
            checkpoint_errors: load(&self.checkpoint_errors),
            input_tokens: load(&self.input_tokens),
            output_tokens: load(&self.output_tokens),
            tool_calls,
            tool_failures,
            agent_calls,
            agent_failures,
        }
    }

    /// Reads every counter into a plain snapshot (the four steps of
    /// [`Metrics::agent_entries`] in a row).
    pub fn snapshot(&self) -> Snapshot {
        let agents = Self::read_agents(&self.agent_entries());
        self.read(agents, &self.tool_entries())
    }
}

/// A point-in-time copy of the counters: plain integers, safe to log or serialize.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Sessions running at snapshot time (one per run in progress).
    pub active_sessions: u64,
    /// Session runs ever started (a turn or a resumed run counts once).
    pub total_sessions: u64,
    /// Loop steps taken.
    pub total_steps: u64,
    /// Tool calls made.
    pub total_tool_calls: u64,
    /// Tool calls that failed.
    pub failed_tool_calls: u64,
    /// Requests shed by backpressure.
    pub backpressure_shed_count: u64,
    /// Memories recalled into prompts.
    pub memory_recall_count: u64,
    /// Failed checkpoint writes.
    pub checkpoint_errors: u64,
    /// Model input tokens.
    pub input_tokens: u64,
    /// Model output tokens.
    pub output_tokens: u64,
    /// Calls per tool.
    pub tool_calls: BTreeMap<String, u64>,
    /// Failures per tool.
    pub tool_failures: BTreeMap<String, u64>,
    /// Calls per agent.
    pub agent_calls: BTreeMap<String, u64>,
    /// Failures per agent.
    pub agent_failures: BTreeMap<String, u64>,
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// The share of `calls` that failed, from 0.0 to 1.0. A delta window (see `delta`) may hold
/// more failures than calls (a call is counted as it starts, its failure as it ends): then,
/// and with failures but no calls, every call of the window failed.
fn failure_ratio(failed: u64, calls: u64) -> f64 {
    if failed >= calls {
        if failed == 0 {
            0.0
        } else {
            1.0
        }
    } else {
        failed as f64 / calls as f64
    }
}

/// The key with the highest count; ties go to the smallest name, so the answer is stable.
fn argmax(counts: &BTreeMap<String, u64>) -> Option<String> {
    counts
        .iter()
        .filter(|(_, &n)| n > 0)
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(k, _)| k.clone())
}

fn map_delta(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, &v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .collect()
}

/// Escapes a Prometheus label value (backslash, double quote, newline).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Snapshot {
    /// Total calls of `name`.
    pub fn tool_call_count(&self, name: &str) -> u64 {
        self.tool_calls.get(name).copied().unwrap_or(0)
    }

    /// Total failures of `name`.
    pub fn tool_failure_count(&self, name: &str) -> u64 {
        self.tool_failures.get(name).copied().unwrap_or(0)
    }

    /// Failed calls over all calls (0.0 with no calls), from 0.0 to 1.0 (see
    /// [`failure_ratio`]).
    pub fn failure_rate(&self) -> f64 {
        failure_ratio(self.failed_tool_calls, self.total_tool_calls)
    }

    /// Successful calls over all calls (1.0 with no calls: nothing has failed).
    pub fn success_rate(&self) -> f64 {
        1.0 - self.failure_rate()
    }

    /// Counters that happened between `before` and `self` (saturating at zero); the active
    /// sessions, a gauge, as `self` has them.
    pub fn delta(&self, before: &Snapshot) -> Snapshot {
        // The totals are the sums of the tools' deltas, as a snapshot's are of its counts
        // (two snapshots of one runtime give the same; others keep the rule too).
        let tool_calls = map_delta(&self.tool_calls, &before.tool_calls);
        let tool_failures = map_delta(&self.tool_failures, &before.tool_failures);
        Snapshot {
            active_sessions: self.active_sessions,
            total_sessions: self.total_sessions.saturating_sub(before.total_sessions),
            total_steps: self.total_steps.saturating_sub(before.total_steps),
            total_tool_calls: total(&tool_calls),
            failed_tool_calls: total(&tool_failures),
            backpressure_shed_count: self
                .backpressure_shed_count
                .saturating_sub(before.backpressure_shed_count),
            memory_recall_count: self
                .memory_recall_count
                .saturating_sub(before.memory_recall_count),
            checkpoint_errors: self
                .checkpoint_errors
                .saturating_sub(before.checkpoint_errors),
            input_tokens: self.input_tokens.saturating_sub(before.input_tokens),
            output_tokens: self.output_tokens.saturating_sub(before.output_tokens),
            tool_calls,
            tool_failures,
            agent_calls: map_delta(&self.agent_calls, &before.agent_calls),
            agent_failures: map_delta(&self.agent_failures, &before.agent_failures),
        }
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let scalars: [(&str, &str, &str, u64); 10] = [
            (
                "sessions_active",
                "gauge",
                "Sessions running now.",
                self.active_sessions,
            ),
            (
                "sessions_total",
                "counter",
                "Session runs started (a turn or a resumed run counts once).",
                self.total_sessions,
            ),
            (
                "steps_total",
                "counter",
                "Agent loop steps taken.",
                self.total_steps,
            ),
            (
                "tool_calls_total",
                "counter",
                "Tool calls made.",
                self.total_tool_calls,
            ),
            (
                "tool_failures_total",
                "counter",
                "Tool calls that failed.",
                self.failed_tool_calls,
            ),
            (
                "backpressure_sheds_total",
                "counter",
                "Requests shed by backpressure.",
                self.backpressure_shed_count,
            ),
            (
                "memory_recalls_total",
                "counter",
                "Memories recalled into prompts.",
                self.memory_recall_count,
            ),
            (
                "checkpoint_errors_total",
                "counter",
                "Failed checkpoint writes.",
                self.checkpoint_errors,
            ),
            (
                "input_tokens_total",
                "counter",
                "Model input tokens.",
                self.input_tokens,
            ),
            (
                "output_tokens_total",
                "counter",
                "Model output tokens.",
                self.output_tokens,
            ),
        ];
        for (name, kind, help, value) in scalars {
            let _ = writeln!(out, "# HELP llm_agent_runtime_{name} {help}");
            let _ = writeln!(out, "# TYPE llm_agent_runtime_{name} {kind}");
            let _ = writeln!(out, "llm_agent_runtime_{name} {value}");
        }
        let labelled = [
            (
                "tool_calls_by_tool_total",
                "Tool calls per tool.",
                "tool",
                &self.tool_calls,
            ),
            (
                "tool_failures_by_tool_total",
                "Tool failures per tool.",
                "tool",
                &self.tool_failures,
            ),
            (
                "tool_calls_by_agent_total",
                "Tool calls per agent.",
                "agent",
                &self.agent_calls,
            ),
            (
                "tool_failures_by_agent_total",
                "Tool failures per agent.",
                "agent",
                &self.agent_failures,
            ),
        ];
        for (name, help, label, counts) in labelled {
            let _ = writeln!(out, "# HELP llm_agent_runtime_{name} {help}");
            let _ = writeln!(out, "# TYPE llm_agent_runtime_{name} counter");
            for (key, value) in counts {
                let _ = writeln!(
                    out,
                    "llm_agent_runtime_{name}{{{label}=\"{}\"}} {value}",
                    escape_label(key)
                );
            }
        }
        out
    }
}

/// Lock-free counters of an agent runtime: sessions, steps, tool calls and failures (per tool
/// and per agent), backpressure sheds, memory recalls, checkpoint errors and tokens.
///
/// Safe to share between threads; every increment is exact under contention.
#[pyclass(module = "llm_agent_runtime", name = "RuntimeMetrics", frozen)]
#[derive(Default)]
pub struct PyRuntimeMetrics {
    inner: Metrics,
}

impl PyRuntimeMetrics {
    /// A snapshot: each half's names copied out with the GIL held (briefly: their map's lock
    /// is never held across a release of the GIL), then its counters read without it (as
    /// many as names seen), the agents' before the tools' (see [`Metrics::agent_entries`]).
    fn read(&self, py: Python<'_>) -> Snapshot {
        let agents = self.inner.agent_entries();
        let agents = py.detach(|| Metrics::read_agents(&agents));
        let tools = self.inner.tool_entries();
        py.detach(|| self.inner.read(agents, &tools))
    }
}

/// `RuntimeMetrics.record_step`: counts one loop step. A bare C method (`METH_NOARGS`) that
/// [`add_record_step`] sets on the class: a step's count is a run's most frequent call, and
/// PyO3's wrapper of a method (the attach count, the deferred decrefs, the type lookup)
/// would take about a fifth of its time.
///
/// # Safety
/// Called by CPython only, through the method descriptor [`add_record_step`] makes: with the
/// GIL held, and `slf` an instance of `RuntimeMetrics` (the descriptor checks it; the class
/// has no subclasses).
unsafe extern "C" fn record_step(
    slf: *mut pyo3::ffi::PyObject,
    _no_args: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    // SAFETY: the GIL is held and `slf` is a `RuntimeMetrics` (see above). The class is
    // frozen, so reading it takes no borrow; an atomic add cannot panic.
    unsafe {
        let py = Python::assume_attached();
        let slf = Borrowed::from_ptr(py, slf).cast_unchecked::<PyRuntimeMetrics>();
        slf.get().inner.record_step();
        pyo3::ffi::Py_NewRef(pyo3::ffi::Py_None())
    }
}

/// Sets `record_step` (the C method above) on the `RuntimeMetrics` class.
pub(crate) fn add_record_step(py: Python<'_>) -> PyResult<()> {
    use pyo3::types::PyTypeMethods;

    let class = py.get_type::<PyRuntimeMetrics>();
    // The descriptor keeps a pointer to its definition for as long as the class lives: one
    // definition per interpreter that imports the module, never freed.
    let definition = Box::leak(Box::new(pyo3::ffi::PyMethodDef {
        ml_name: c"record_step".as_ptr(),
        ml_meth: pyo3::ffi::PyMethodDefPointer {
            PyCFunction: record_step,
        },
        ml_flags: pyo3::ffi::METH_NOARGS,
        ml_doc: c"record_step($self, /)\n--\n\nCounts one loop step.".as_ptr(),
    }));
    // SAFETY: the GIL is held, the class is a ready type and the definition is 'static.
    let method = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyDescr_NewMethod(class.as_type_ptr(), definition),
        )?
    };
    class.setattr("record_step", method)
}

/// An amount added to a counter: an int from 0 to 2**64 - 1; others raise `AgentRuntimeError`
/// (metrics have no narrower exception class) rather than the built-in `OverflowError`; a
/// value that is no int is a `TypeError` naming the argument `name`.
fn amount_arg(value: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    // A bool (Python's or numpy's) is no count: True would be counted as 1.
    not_bool(value, |flag| {
        CoreError::Runtime(format!(
            "counts must be integers between 0 and 2**64 - 1, got a bool ({})",
            if flag { "True" } else { "False" }
        ))
    })?;
    extract_unsigned(value, name, |v| {
        CoreError::Runtime(format!(
            "counts must be integers between 0 and 2**64 - 1, got {v}"
        ))
    })
}

// One `from_py_with` function per argument: each names its argument in a wrong type's
// `TypeError` (see `args`); a lone surrogate in a name is an `AgentRuntimeError` (or, where
// the name is looked up, absent).

fn count_arg(value: &Bound<'_, PyAny>) -> PyResult<u64> {
    amount_arg(value, "count")
}

fn input_tokens_arg(value: &Bound<'_, PyAny>) -> PyResult<u64> {
    amount_arg(value, "input_tokens")
}

fn output_tokens_arg(value: &Bound<'_, PyAny>) -> PyResult<u64> {
    amount_arg(value, "output_tokens")
}

fn max_agents_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    if value.is_none() {
        return Ok(None);
    }
    let refused = |shown: String| {
        CoreError::Runtime(format!(
            "max_agents must be an int of 1 or more, or None, got {shown}"
        ))
    };
    not_bool(value, |flag| {
        refused(if flag { "True" } else { "False" }.to_owned())
    })?;
    if let Ok(huge) = value.cast::<PyInt>() {
        if huge.gt(u64::MAX)? {
            return Ok(None); // beyond any count of agents: all of them
        }
    }
    let limit: u64 = extract_unsigned(value, "max_agents", refused)?;
    if limit == 0 {
        return Err(refused("0".to_owned()).into());
    }
    Ok(Some(usize::try_from(limit).unwrap_or(usize::MAX)))
}

fn tool_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "tool", CoreError::Runtime)
}

fn optional_agent_id_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<PyBackedStr>> {
    args::optional_text(value, "agent_id", CoreError::Runtime)
}

fn lookup_name_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<PyBackedStr>> {
    args::lookup_text(value, "name")
}

fn text_arg(value: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    args::text(value, "text", CoreError::Runtime)
}

#[pymethods]
impl PyRuntimeMetrics {
    /// Raises:
    ///     AgentRuntimeError: `max_agents` is below 1 (or a bool).
    ///     TypeError: `max_agents` is no int (nor None).
    #[new]
    #[pyo3(signature = (*, max_agents=None))]
    fn new(#[pyo3(from_py_with = max_agents_arg)] max_agents: Option<usize>) -> Self {
        Self {
            inner: Metrics::with_agent_limit(max_agents),
        }
    }

    /// Counts a session start.
    fn session_started(&self) {
        self.inner.session_started();
    }

    /// Counts a session end (the active count never goes below zero).
    fn session_finished(&self) {
        self.inner.session_finished();
    }

    /// Counts a call of `tool`, also per agent when `agent_id` is given.
    ///
    /// Raises:
    ///     AgentRuntimeError: a name is not valid Unicode (a lone surrogate).
    #[pyo3(signature = (tool, agent_id=None))]
    fn record_tool_call(
        &self,
        #[pyo3(from_py_with = tool_arg)] tool: PyBackedStr,
        #[pyo3(from_py_with = optional_agent_id_arg)] agent_id: Option<PyBackedStr>,
    ) {
        self.inner.record_tool_call(&tool, agent_id.as_deref());
    }

    /// Counts a failed call of `tool`, also per agent when `agent_id` is given.
    ///
    /// Raises:
    ///     AgentRuntimeError: a name is not valid Unicode (a lone surrogate).
    #[pyo3(signature = (tool, agent_id=None))]
    fn record_tool_failure(
        &self,
        #[pyo3(from_py_with = tool_arg)] tool: PyBackedStr,
        #[pyo3(from_py_with = optional_agent_id_arg)] agent_id: Option<PyBackedStr>,
    ) {
        self.inner.record_tool_failure(&tool, agent_id.as_deref());
    }

    /// Counts a request shed by backpressure.
    fn record_backpressure_shed(&self) {
        self.inner.record_backpressure_shed();
    }

    /// Counts `count` memories recalled into a prompt (the total saturates at 2**64 - 1).
    ///
    /// Raises:
    ///     AgentRuntimeError: `count` is negative or not below 2**64.
    #[pyo3(signature = (count=1))]
    fn record_memory_recall(&self, #[pyo3(from_py_with = count_arg)] count: u64) {
        self.inner.record_memory_recall(count);
    }

    /// Counts a failed checkpoint write.
    fn record_checkpoint_error(&self) {
        self.inner.record_checkpoint_error();
    }

    /// Adds model token usage (each total saturates at 2**64 - 1).
    ///
    /// Raises:
    ///     AgentRuntimeError: a count is negative or not below 2**64.
    fn record_tokens(
        &self,
        #[pyo3(from_py_with = input_tokens_arg)] input_tokens: u64,
        #[pyo3(from_py_with = output_tokens_arg)] output_tokens: u64,
    ) {
        self.inner.record_tokens(input_tokens, output_tokens);
    }

    /// Returns a point-in-time copy of every counter.
    ///
    /// Taken while other threads record, it is one the counters could have been in: no
    /// name has more failures than calls, no agent count holds a call the tools' miss, and
    /// the totals are the sums of the tools' counts.
    fn snapshot(&self, py: Python<'_>) -> PyMetricsSnapshot {
        PyMetricsSnapshot {
            inner: self.read(py),
        }
    }

    /// Returns the counters in Prometheus text exposition format (of a `snapshot`).
    fn to_prometheus(&self, py: Python<'_>) -> String {
        let snapshot = self.read(py);
        py.detach(|| snapshot.to_prometheus())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let s = self.read(py);
        format!(
            "RuntimeMetrics(sessions={}, active={}, steps={}, tool_calls={}, failures={})",
            s.total_sessions,
            s.active_sessions,
            s.total_steps,
            s.total_tool_calls,
            s.failed_tool_calls
        )
    }
}

/// A point-in-time copy of `RuntimeMetrics`: plain integers and per-name counts.
#[pyclass(module = "llm_agent_runtime", name = "MetricsSnapshot", frozen, eq)]
#[derive(PartialEq)]
pub struct PyMetricsSnapshot {
    inner: Snapshot,
}

#[pymethods]
impl PyMetricsSnapshot {
    /// Sessions running at snapshot time (one per run in progress).
    #[getter]
    fn active_sessions(&self) -> u64 {
        self.inner.active_sessions
    }
    /// Session runs ever started: a `run_agent` call, a turn of a multi-turn session and a
    /// resumed run each count once (so a chat of 3 turns counts 3).
    #[getter]
    fn total_sessions(&self) -> u64 {
        self.inner.total_sessions
    }
    /// Loop steps taken.
    #[getter]
    fn total_steps(&self) -> u64 {
        self.inner.total_steps
    }
    /// Tool calls made.
    #[getter]
    fn total_tool_calls(&self) -> u64 {
        self.inner.total_tool_calls
    }
    /// Tool calls that failed.
    #[getter]
    fn failed_tool_calls(&self) -> u64 {
        self.inner.failed_tool_calls
    }
    /// Requests shed by backpressure.
    #[getter]
    fn backpressure_shed_count(&self) -> u64 {
        self.inner.backpressure_shed_count
    }
    /// Memories recalled into prompts.
    #[getter]
    fn memory_recall_count(&self) -> u64 {
        self.inner.memory_recall_count
    }
    /// Failed checkpoint writes.
    #[getter]
    fn checkpoint_errors(&self) -> u64 {
        self.inner.checkpoint_errors
    }
    /// Model input tokens.
    #[getter]
    fn input_tokens(&self) -> u64 {
        self.inner.input_tokens
    }
    /// Model output tokens.
    #[getter]
    fn output_tokens(&self) -> u64 {
        self.inner.output_tokens
    }
    /// Calls per tool name.
    #[getter]
    fn tool_calls(&self) -> BTreeMap<String, u64> {
        self.inner.tool_calls.clone()
    }
    /// Failures per tool name.
    #[getter]
    fn tool_failures(&self) -> BTreeMap<String, u64> {
        self.inner.tool_failures.clone()
    }
    /// Calls per agent id.
    #[getter]
    fn agent_calls(&self) -> BTreeMap<String, u64> {
        self.inner.agent_calls.clone()
    }
    /// Failures per agent id.
    #[getter]
    fn agent_failures(&self) -> BTreeMap<String, u64> {
        self.inner.agent_failures.clone()
    }

    /// Total calls of the tool `name` (0 if never called, as for a name that is not valid
    /// Unicode: none can be recorded).
    fn tool_call_count(
        &self,
        #[pyo3(from_py_with = lookup_name_arg)] name: Option<PyBackedStr>,
    ) -> u64 {
        name.map_or(0, |name| self.inner.tool_call_count(&name))
    }

    /// Total failures of the tool `name` (0 if none, or `name` is not valid Unicode).
    fn tool_failure_count(
        &self,
        #[pyo3(from_py_with = lookup_name_arg)] name: Option<PyBackedStr>,
    ) -> u64 {
        name.map_or(0, |name| self.inner.tool_failure_count(&name))
    }

    /// Calls of `name` that did not fail (0 for a name that is not valid Unicode).
    fn tool_success_count(
        &self,
        #[pyo3(from_py_with = lookup_name_arg)] name: Option<PyBackedStr>,
    ) -> u64 {
        name.map_or(0, |name| {
            self.inner
                .tool_call_count(&name)
                .saturating_sub(self.inner.tool_failure_count(&name))
        })
    }

    /// Sorted names of the tools with recorded calls.
    fn tool_names(&self) -> Vec<String> {
        self.inner
            .tool_calls
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Failed tool calls over all tool calls (0.0 with no calls), from 0.0 to 1.0: a
    /// `delta` window with more failures than calls (calls counted as they start, their
    /// failures as they end) or failures alone is 1.0.
    fn failure_rate(&self) -> f64 {
        self.inner.failure_rate()
    }

    /// Successful tool calls over all tool calls (1.0 with no calls): 1 - `failure_rate`.
    fn success_rate(&self) -> f64 {
        self.inner.success_rate()
    }

    /// Failure rate of one tool (0.0 if never called, or `name` is not valid Unicode), from
    /// 0.0 to 1.0 as `failure_rate`.
    fn failed_tool_ratio_for(
        &self,
        #[pyo3(from_py_with = lookup_name_arg)] name: Option<PyBackedStr>,
    ) -> f64 {
        name.map_or(0.0, |name| {
            failure_ratio(
                self.inner.tool_failure_count(&name),
                self.inner.tool_call_count(&name),
            )
        })
    }

    /// The most called tool (ties: the smallest name), or None.
    fn most_called_tool(&self) -> Option<String> {
        argmax(&self.inner.tool_calls)
    }

    /// Sorted names of the tools with at least one failure.
    fn tool_names_with_failures(&self) -> Vec<String> {
        self.inner
            .tool_failures
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Failed tool calls per completed session run (0.0 when none completed).
    fn avg_failures_per_session(&self) -> f64 {
        let completed = self
            .inner
            .total_sessions
            .saturating_sub(self.inner.active_sessions);
        ratio(self.inner.failed_tool_calls, completed)
    }

    /// Steps per tool call (0.0 with no calls).
    fn steps_per_tool_call(&self) -> f64 {
        ratio(self.inner.total_steps, self.inner.total_tool_calls)
    }

    /// Number of distinct tools called.
    fn tool_diversity(&self) -> usize {
        self.inner.tool_calls.values().filter(|&&n| n > 0).count()
    }

    /// Number of distinct agents with recorded calls.
    fn total_agent_count(&self) -> usize {
        self.inner.agent_calls.values().filter(|&&n| n > 0).count()
    }

    /// The agent with the most tool calls (ties: the smallest id), or None.
    fn agent_with_most_calls(&self) -> Option<String> {
        argmax(&self.inner.agent_calls)
    }

    /// Shed requests per tool call (0.0 with no calls).
    fn backpressure_shed_rate(&self) -> f64 {
        ratio(
            self.inner.backpressure_shed_count,
            self.inner.total_tool_calls,
        )
    }

    /// What happened between `before` and `after`, counter by counter (saturating at zero);
    /// `active_sessions`, a gauge, is `after`'s (so a delta's `avg_failures_per_session`
    /// divides its failures by the sessions begun in it less those active at its end).
    ///
    /// Raises:
    ///     TypeError: `after` or `before` is not a MetricsSnapshot.
    #[staticmethod]
    fn delta<'py>(
        py: Python<'py>,
        #[pyo3(from_py_with = after_arg)] after: Bound<'py, PyMetricsSnapshot>,
        #[pyo3(from_py_with = before_arg)] before: Bound<'py, PyMetricsSnapshot>,
    ) -> PyMetricsSnapshot {
        let (after, before) = (&after.get().inner, &before.get().inner);
        PyMetricsSnapshot {
            inner: py.detach(|| after.delta(before)),
        }
    }

    /// The snapshot as a JSON object (text).
    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| serde_json::to_string(&self.inner))
            .map_err(|e| CoreError::Runtime(format!("cannot serialize snapshot: {e}")).into())
    }

    /// Rebuilds a snapshot from `to_json()` output.
    ///
    /// Raises:
    ///     AgentRuntimeError: the text is not a snapshot (or not valid Unicode), or its
    ///         totals are not the sums of its tools' counts, as every snapshot's are.
    #[staticmethod]
    fn from_json(
        py: Python<'_>,
        #[pyo3(from_py_with = text_arg)] text: PyBackedStr,
    ) -> PyResult<PyMetricsSnapshot> {
        let inner: Snapshot = py
            .detach(|| serde_json::from_str(&text))
            .map_err(|e| CoreError::Runtime(format!("not a metrics snapshot: {e}")))?;
        for (field, stated, counts) in [
            (
                "total_tool_calls",
                inner.total_tool_calls,
                &inner.tool_calls,
            ),
            (
                "failed_tool_calls",
                inner.failed_tool_calls,
                &inner.tool_failures,
            ),
        ] {
            let sum = total(counts);
            if stated != sum {
                return Err(CoreError::Runtime(format!(
                    "not a metrics snapshot: {field} is {stated}, but its tools' counts add up \
                     to {sum}"
                ))
                .into());
            }
        }
        Ok(PyMetricsSnapshot { inner })
    }

    /// The snapshot in Prometheus text exposition format.
    fn to_prometheus(&self, py: Python<'_>) -> String {
        py.detach(|| self.inner.to_prometheus())
    }

    /// Pickles as `MetricsSnapshot.from_json(self.to_json())`: a snapshot is a plain value,
    /// which a process pool returns and `copy.deepcopy` copies (without this, both raised
    /// `TypeError: cannot pickle`).
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, (String,))> {
        let json = slf.get().to_json(slf.py())?;
        Ok((slf.get_type().getattr("from_json")?, (json,)))
    }

    /// Itself: it never changes.
    fn __copy__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Itself: it never changes.
    fn __deepcopy__(slf: Py<Self>, _memo: &Bound<'_, PyAny>) -> Py<Self> {
        slf
    }

    fn __repr__(&self) -> String {
        format!(
            "MetricsSnapshot(sessions={}, steps={}, tool_calls={}, failures={})",
            self.inner.total_sessions,
            self.inner.total_steps,
            self.inner.total_tool_calls,
            self.inner.failed_tool_calls
        )
    }
}

/// The `after` argument of `MetricsSnapshot.delta` (see [`snapshot_arg`]).
fn after_arg<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyMetricsSnapshot>> {
    snapshot_arg(value, "after")
}

/// The `before` argument of `MetricsSnapshot.delta` (see [`snapshot_arg`]).
fn before_arg<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyMetricsSnapshot>> {
    snapshot_arg(value, "before")
}

/// A `MetricsSnapshot` argument `name`; anything else (a `RuntimeMetrics` whose `snapshot()`
/// was not taken, say) is a `TypeError` naming it, not PyO3's generic wording.
fn snapshot_arg<'py>(
    value: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<Bound<'py, PyMetricsSnapshot>> {
    match value.cast::<PyMetricsSnapshot>() {
        Ok(snapshot) => Ok(snapshot.clone()),
        Err(_) => Err(not_a_snapshot(value, name)),
    }
}

/// The error of [`snapshot_arg`]; a `RuntimeMetrics` comes with the advice to take its
/// snapshot.
#[cold]
#[inline(never)]
fn not_a_snapshot(value: &Bound<'_, PyAny>, name: &str) -> PyErr {
    let advice = if value.is_instance_of::<PyRuntimeMetrics>() {
        ": take one with metrics.snapshot()"
    } else {
        ""
    };
    pyo3::exceptions::PyTypeError::new_err(format!(
        "{name} must be a MetricsSnapshot, got {}{advice}",
        args::describe_value(value)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn exact_under_contention() {
        let metrics = Arc::new(Metrics::default());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let m = Arc::clone(&metrics);
                thread::spawn(move || {
                    for i in 0..10_000 {
                        m.record_step();
                        m.record_tool_call(
                            if i % 2 == 0 { "a" } else { "b" },
                            Some(&format!("agent{t}")),
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = metrics.snapshot();
        assert_eq!(s.total_steps, 80_000);
        assert_eq!(s.tool_call_count("a"), 40_000);
        assert_eq!(s.tool_call_count("b"), 40_000);
        assert_eq!(s.agent_calls.len(), 8);
        assert!(s.agent_calls.values().all(|&n| n == 10_000));
    }

    #[test]
    fn delta_saturates_and_active_never_negative() {
        let m = Metrics::default();
        m.session_finished();
        assert_eq!(m.snapshot().active_sessions, 0);
        m.record_tool_call("x", None);
        let before = m.snapshot();
        m.record_tool_call("x", None);
        m.record_tool_failure("y", None);
        let after = m.snapshot();
        let d = after.delta(&before);
        assert_eq!(d.tool_call_count("x"), 1);
        assert_eq!(d.tool_failure_count("y"), 1);
        assert_eq!(before.delta(&after).total_tool_calls, 0);
    }

    #[test]
    fn amounts_saturate_instead_of_wrapping() {
        let m = Metrics::default();
        m.record_tokens(u64::MAX - 1, 7);
        m.record_tokens(5, 0);
        m.record_memory_recall(u64::MAX);
        m.record_memory_recall(1);
        let s = m.snapshot();
        assert_eq!(
            (s.input_tokens, s.output_tokens, s.memory_recall_count),
            (u64::MAX, 7, u64::MAX)
        );
    }

    #[test]
    fn prometheus_escapes_labels() {
        let m = Metrics::default();
        m.record_tool_call("we\"ird\\tool\n", None);
        let text = m.snapshot().to_prometheus();
        assert!(text.contains(r#"{tool="we\"ird\\tool\n"} 1"#));
        assert!(text.contains("# TYPE llm_agent_runtime_steps_total counter"));
    }
}
