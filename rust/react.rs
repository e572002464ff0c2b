//! ReAct step parsing: model text -> thought, action, action input, final answer.
//!
//! Two forms are accepted, with case-insensitive labels at the start of a line:
//!
//! * the seed form: `Thought: ...` / `Action: tool {"n": 21}` / `Action: FINAL_ANSWER 42`;
//! * the LangChain form: `Action: tool` / `Action Input: {...}` / `Final Answer: ...`.
//!
//! Parsing is one pass over the lines plus one bracket-matching pass over the input, so it is
//! linear in the length of the text whatever the text holds.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};
use pyo3::{PyTraverseError, PyVisit};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::args;
use crate::errors::{catch_panics, CoreError, CoreResult};

/// The tool name that marks a final answer in the seed form (`Action: FINAL_ANSWER 42`).
pub const FINAL_ANSWER_TOOL: &str = "FINAL_ANSWER";

/// The input given to an action, decoded: JSON, or the raw text when it is not JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionInput {
    /// An object, array or string literal that decoded as JSON.
    Json(Value),
    /// Anything else, trimmed.
    Raw(String),
}

/// The input text of an action, located but not yet decoded (decoding is the caller's
/// choice: into `serde_json::Value` here, straight into Python objects in the binding).
/// Finding where the JSON ends is also left to decoding, so parsing never scans the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputText<'a> {
    /// The input, trimmed and with any code fence removed.
    text: &'a str,
}

impl<'a> InputText<'a> {
    /// The input of an action: `text` trimmed, without a surrounding code fence.
    pub fn new(text: &'a str) -> Self {
        Self {
            text: strip_fence(text.trim()),
        }
    }

    /// The leading JSON candidate (object, array or string; trailing chatter ignored), if
    /// the input starts with one.
    pub fn json(&self) -> Option<&'a str> {
        let bytes = self.text.as_bytes();
        let len = match bytes.first() {
            Some(b'{' | b'[') => matching_close(bytes),
            Some(b'"') => string_close(bytes),
            _ => None,
        }?;
        Some(&self.text[..len])
    }

    /// The input as raw text (surrounding double quotes removed).
    pub fn raw(&self) -> &'a str {
        self.text.trim_matches('"')
    }

    /// Decodes the input: JSON when the candidate is valid JSON, the raw text otherwise.
    ///
    /// A `Value` holds integers of at most 64 bits: a larger one is read as the nearest
    /// float (the binding decodes into Python instead, where it stays exact).
    pub fn decode(&self) -> ActionInput {
        self.json()
            .and_then(|json| serde_json::from_str::<Value>(json).ok())
            .map_or_else(
                || ActionInput::Raw(self.raw().to_owned()),
                ActionInput::Json,
            )
    }
}

/// The number literals of the JSON text `json` that serde_json reads as an f64, in order:
/// `None` for a float literal, `Some(literal)` for an integer literal that serde_json
/// cannot hold exactly (beyond `i64`/`u64`, or `-0`) but Python's `json` reads as an exact
/// int. `None` overall when there is no such integer (the usual case), or the text is not
/// well-formed enough to scan (decoding then fails on its own).
///
/// One pass over the text; string contents are skipped.
pub fn wide_integers(json: &str) -> Option<Vec<Option<&str>>> {
    let bytes = json.as_bytes();
    let mut literals = Vec::new();
    let mut wide = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => i = skip_string(bytes, i + 1)?,
            b'-' | b'0'..=b'9' => {
                let start = i;
                while matches!(
                    bytes.get(i),
                    Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                ) {
                    i += 1;
                }
                let literal = json.get(start..i)?;
                if literal.bytes().any(|c| matches!(c, b'.' | b'e' | b'E')) {
                    literals.push(None);
                } else if !fits_serde_integer(literal) {
                    literals.push(Some(literal));
                    wide = true;
                }
            }
            _ => i += 1,
        }
    }
    wide.then_some(literals)
}

/// Whether serde_json reads the integer literal `literal` as an integer (not as an f64):
/// a negative one must fit `i64` and not be `-0`, a non-negative one `u64`.
fn fits_serde_integer(literal: &str) -> bool {
    if literal.starts_with('-') {
        literal.parse::<i64>().is_ok_and(|v| v != 0)
    } else {
        literal.parse::<u64>().is_ok()
    }
}

/// One parsed ReAct step, borrowing from the parsed text.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<'a> {
    /// The model's reasoning (may be empty).
    pub thought: &'a str,
    /// The tool to call, unless this step is a final answer.
    pub action: Option<&'a str>,
    /// The tool's input; `None` for a final answer.
    pub action_input: Option<InputText<'a>>,
    /// The final answer, when the step ends the run.
    pub final_answer: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Thought,
    Action,
    ActionInput,
    FinalAnswer,
    Observation,
}

/// A labelled part of the text: `start..end` is the content after the label's colon.
#[derive(Debug, Clone, Copy)]
struct Section {
    label_pos: usize,
    start: usize,
    end: usize,
}

/// If `bytes[at..]` starts with `word` (ASCII, case-insensitive), returns the index after it.
fn eat_word(bytes: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    let end = at.checked_add(word.len())?;
    let candidate = bytes.get(at..end)?;
    candidate.eq_ignore_ascii_case(word).then_some(end)
}

fn skip_blanks(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t')) {
        at += 1;
    }
    at
}

/// Recognises a label at the start of a line; returns it with the index after its colon.
fn label_at(bytes: &[u8], line_start: usize) -> Option<(Label, usize, usize)> {
    let at = skip_blanks(bytes, line_start);
    let (label, after) = if let Some(i) = eat_word(bytes, at, b"thought") {
        (Label::Thought, i)
    } else if let Some(i) = eat_word(bytes, at, b"final answer") {
        (Label::FinalAnswer, i)
    } else if let Some(i) = eat_word(bytes, at, b"observation") {
        (Label::Observation, i)
    } else if let Some(i) = eat_word(bytes, at, b"action") {
        let j = skip_blanks(bytes, i);
        match eat_word(bytes, j, b"input") {
            Some(k) => (Label::ActionInput, k),
            None => (Label::Action, i),
        }
    } else {
        return None;
    };
    let colon = skip_blanks(bytes, after);
    (bytes.get(colon) == Some(&b':')).then_some((label, at, colon + 1))
}

/// The sections the parser uses: the first of each label, except the last `Final Answer`.
#[derive(Debug, Default)]
struct Sections {
    preamble_end: usize,
    thought: Option<Section>,
    action: Option<Section>,
    action_input: Option<Section>,
    final_answer: Option<Section>,
}

impl Sections {
    fn slot(&mut self, label: Label) -> Option<&mut Option<Section>> {
        match label {
            Label::Thought => Some(&mut self.thought),
            Label::Action => Some(&mut self.action),
            Label::ActionInput => Some(&mut self.action_input),
            Label::FinalAnswer => Some(&mut self.final_answer),
            Label::Observation => None,
        }
    }
}

/// Finds the labelled sections in one pass over the lines, without allocating.
fn sections(text: &str) -> Sections {
    let bytes = text.as_bytes();
    let mut found = Sections {
        preamble_end: text.len(),
        ..Sections::default()
    };
    // The label of the section being read, when that section is one `found` keeps.
    let mut open: Option<Label> = None;
    let mut seen_label = false;
    let mut line_start = 0;
    while line_start <= bytes.len() {
        if let Some((label, label_pos, start)) = label_at(bytes, line_start) {
            if !seen_label {
                found.preamble_end = line_start;
                seen_label = true;
            }
            if let Some(Some(section)) = open.and_then(|l| found.slot(l)) {
                section.end = line_start;
            }
            open = None;
            if let Some(slot) = found.slot(label) {
                if slot.is_none() || label == Label::FinalAnswer {
                    *slot = Some(Section {
                        label_pos,
                        start,
                        end: text.len(),
                    });
                    open = Some(label);
                }
            }
        }
        match memchr::memchr(b'\n', &bytes[line_start..]) {
            Some(offset) => line_start += offset + 1,
            None => break,
        }
    }
    found
}

/// Returns the index just past the `"` closing the string whose body starts at `from`.
fn skip_string(bytes: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let offset = memchr::memchr2(b'"', b'\\', bytes.get(from..)?)?;
        let at = from + offset;
        if bytes[at] == b'"' {
            return Some(at + 1);
        }
        // A backslash escapes the next byte, whatever it is.
        from = at + 2;
    }
}

/// Returns the end (exclusive) of the bracketed JSON value starting at `bytes[0]`
/// (`{` or `[`), honouring strings and escapes; `None` when it never closes.
fn matching_close(bytes: &[u8]) -> Option<usize> {
    let mut depth: usize = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'"' => i = skip_string(bytes, i)?,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Returns the end (exclusive) of the JSON string literal starting at `bytes[0]` (`"`).
fn string_close(bytes: &[u8]) -> Option<usize> {
    skip_string(bytes, 1)
}

/// Removes a surrounding Markdown code fence (```json ... ```), if there is one.
fn strip_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    // Skip the info string (e.g. `json`) up to the end of the fence line.
    let body = match rest.find('\n') {
        Some(nl) => &rest[nl + 1..],
        None => rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric()),
    };
    match body.find("```") {
        Some(close) => body[..close].trim(),
        None => body.trim(),
    }
}

/// Parses one ReAct step.
///
/// # Errors
/// [`CoreError::Parse`] when the text has neither an action nor a final answer, has both,
/// names no tool, or gives a tool no input.
pub fn parse(text: &str) -> CoreResult<Step<'_>> {
    let found = sections(text);
    let content = |s: Section| text[s.start..s.end].trim();

    let thought = match found.thought {
        Some(s) => content(s),
        None => text[..found.preamble_end].trim(),
    };
    let action = found.action;
    let final_answer = found.final_answer;

    let Some(action) = action else {
        return match final_answer {
            Some(s) => Ok(Step {
                thought,
                action: None,
                action_input: None,
                // Everything after the last `Final Answer:` is the answer.
                final_answer: Some(Cow::Borrowed(text[s.start..].trim())),
            }),
            None => Err(CoreError::Parse {
                message: "expected a line starting with 'Action:' or 'Final Answer:'".into(),
                position: Some(text.len()),
            }),
        };
    };

    let input_section = found.action_input;
    let body = content(action);
    let (tool, inline_input) = if input_section.is_some() {
        // LangChain form: the whole Action line is the tool name.
        (body.lines().next().unwrap_or("").trim(), "")
    } else {
        let split = body
            .find(|c: char| c.is_whitespace() || c == '{' || c == '[')
            .unwrap_or(body.len());
        (&body[..split], body[split..].trim())
    };
    if tool.is_empty() {
        return Err(CoreError::Parse {
            message: "expected a tool name after 'Action:'".into(),
            position: Some(action.start),
        });
    }
    if tool.eq_ignore_ascii_case(FINAL_ANSWER_TOOL) {
        // `Action: FINAL_ANSWER 42`, or LangChain's `Action: FINAL_ANSWER` then
        // `Action Input: 42`; with neither, the answer is empty.
        let input = InputText::new(input_section.map_or(inline_input, content));
        let answer = match input.decode() {
            ActionInput::Json(Value::String(s)) => Cow::Owned(s),
            // An integer beyond 64 bits would come back rounded: keep the JSON as written.
            ActionInput::Json(_) if input.json().and_then(wide_integers).is_some() => {
                Cow::Borrowed(input.json().unwrap_or_default())
            }
            ActionInput::Json(other) => Cow::Owned(other.to_string()),
            ActionInput::Raw(_) => Cow::Borrowed(input.raw()),
        };
        return Ok(Step {
            thought,
            action: None,
            action_input: None,
            final_answer: Some(answer),
        });
    }
    if let Some(answer) = final_answer {
        return Err(CoreError::Parse {
            message: format!(
                "found both an action ('{tool}') and a final answer; expected only one"
            ),
            position: Some(answer.label_pos),
        });
    }
    let input_text = match input_section {
        Some(s) => content(s),
        None => inline_input,
    };
    if input_text.is_empty() {
        return Err(CoreError::Parse {
            message: format!(
                "expected the input of tool '{tool}': JSON after the tool name or an 'Action Input:' line"
            ),
            position: Some(input_section.map_or(action.end, |s| s.start)),
        });
    }
    Ok(Step {
        thought,
        action: Some(tool),
        action_input: Some(InputText::new(input_text)),
        final_answer: None,
    })
}

/// Builds Python objects straight from JSON text, with no intermediate `Value`.
///
/// serde_json reads an integer beyond 64 bits as an f64; `wide` (from [`wide_integers`])
/// lists the literals behind each f64 it reports, so that such an integer becomes an exact
/// Python int, as `json.loads` makes it.
#[derive(Clone, Copy)]
struct PyJson<'a, 'py> {
    py: Python<'py>,
    wide: Option<(&'a [Option<&'a str>], &'a Cell<usize>)>,
}

impl<'de, 'py> DeserializeSeed<'de> for PyJson<'_, 'py> {
    type Value = Bound<'py, PyAny>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, 'py> Visitor<'de> for PyJson<'_, 'py> {
    type Value = Bound<'py, PyAny>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.py.None().into_bound(self.py))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(PyBool::new(self.py, v).to_owned().into_any())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(PyInt::new(self.py, v).into_any())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(PyInt::new(self.py, v).into_any())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if let Some((literals, next)) = self.wide {
            let at = next.get();
            next.set(at + 1);
            if let Some(Some(literal)) = literals.get(at) {
                // Python's int() reads the literal exactly (`-0` is 0, as in `json.loads`).
                return self
                    .py
                    .get_type::<PyInt>()
                    .call1((*literal,))
                    .map_err(de::Error::custom);
            }
        }
        Ok(PyFloat::new(self.py, v).into_any())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.py, v).into_any())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let list = PyList::empty(self.py);
        while let Some(item) = seq.next_element_seed(self)? {
            list.append(item).map_err(de::Error::custom)?;
        }
        Ok(list.into_any())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let dict = PyDict::new(self.py);
        while let Some(key) = map.next_key_seed(self)? {
            let value = map.next_value_seed(self)?;
            dict.set_item(key, value).map_err(de::Error::custom)?;
        }
        Ok(dict.into_any())
    }
}

/// Decodes an action input into Python: JSON objects, arrays and strings become dict, list
/// and str; anything else (including invalid JSON) stays the raw text.
fn input_to_py<'py>(py: Python<'py>, input: &InputText<'_>) -> Bound<'py, PyAny> {
    if let Some(json) = input.json() {
        let literals = wide_integers(json);
        let next = Cell::new(0);
        let seed = PyJson {
            py,
            wide: literals.as_deref().map(|literals| (literals, &next)),
        };
        let mut deserializer = serde_json::Deserializer::from_str(json);
        if let Ok(value) = seed.deserialize(&mut deserializer) {
            return value;
        }
    }
    PyString::new(py, input.raw()).into_any()
}

/// Byte range of a part of the parsed text.
type Span = (usize, usize);

/// Where `part` (a subslice of `text`) lies in `text`.
fn span_of(text: &str, part: &str) -> Span {
    let start = (part.as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
    (start, start + part.len())
}

/// A final answer: usually a slice of the text, decoded text for `FINAL_ANSWER "..."`.
enum Answer {
    Span(Span),
    Owned(String),
}

/// One step of a ReAct trace: the model's thought, then either an action with its input or
/// a final answer.
///
/// The step keeps a reference to the parsed text and the byte ranges of its parts, so
/// parsing copies nothing; each attribute is built on access. `action_input` is the decoded
/// JSON (dict, list or str) when the input was a JSON object, array or string, and the raw
/// trimmed text otherwise; it is decoded on first access and then cached.
#[pyclass(module = "llm_agent_runtime", name = "ReActStep", frozen)]
pub struct PyReActStep {
    source: Py<PyString>,
    thought: Span,
    action: Option<Span>,
    final_answer: Option<Answer>,
    /// Where the input (trimmed, unfenced) lies in the source.
    input: Option<Span>,
    /// Set once, with the GIL held; read by `__traverse__`, which has no GIL token.
    decoded_input: OnceLock<Py<PyAny>>,
}

impl PyReActStep {
    fn slice<'py>(&self, py: Python<'py>, (start, end): Span) -> PyResult<Bound<'py, PyString>> {
        let source = self.source.bind(py).to_str()?;
        let part = source.get(start..end).ok_or_else(|| {
            PyErr::from(CoreError::Runtime(format!(
                "span {start}..{end} outside the parsed text"
            )))
        })?;
        Ok(PyString::new(py, part))
    }
}

#[pymethods]
impl PyReActStep {
    /// The model's reasoning (may be empty).
    #[getter]
    fn thought<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
        self.slice(py, self.thought)
    }

    /// The tool to call, or None for a final answer.
    #[getter]
    fn action<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyString>>> {
        self.action.map(|span| self.slice(py, span)).transpose()
    }

    /// The final answer, or None when the step calls a tool.
    #[getter]
    fn final_answer<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyString>>> {
        match &self.final_answer {
            None => Ok(None),
            Some(Answer::Span(span)) => self.slice(py, *span).map(Some),
            Some(Answer::Owned(text)) => Ok(Some(PyString::new(py, text))),
        }
    }

    /// The action's input: decoded JSON, or the raw text; None for a final answer.
    #[getter]
    fn action_input(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if let Some(value) = this.decoded_input.get() {
            return Ok(value.clone_ref(py));
        }
        let value = match this.input {
            None => py.None(),
            Some((start, end)) => {
                let source = this.source.bind(py).to_str()?;
                let text = source.get(start..end).unwrap_or_default();
                input_to_py(py, &InputText { text }).unbind()
            }
        };
        // Had another thread set it meanwhile (decoding may run Python code), its value wins.
        let value = this.decoded_input.get_or_init(|| value);
        track_if_it_holds_a_container(slf, value.bind(py));
        Ok(value.clone_ref(py))
    }

    /// Lets the cycle collector see the decoded input, which a user may make refer back
    /// to the step.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(value) = self.decoded_input.get() {
            visit.call(value)?;
        }
        Ok(())
    }

    /// Whether this step ends the run with a final answer.
    #[getter]
    fn is_final(&self) -> bool {
        self.final_answer.is_some()
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        let this = slf.get();
        let repr = |value: Bound<'_, PyAny>| -> PyResult<String> { Ok(value.repr()?.to_string()) };
        Ok(format!(
            "ReActStep(thought={}, action={}, action_input={}, final_answer={})",
            repr(this.thought(py)?.into_any())?,
            repr(this.action(py)?.into_pyobject(py)?)?,
            repr(Self::action_input(slf)?.into_bound(py))?,
            repr(this.final_answer(py)?.into_pyobject(py)?)?,
        ))
    }

    fn __eq__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = slf.py();
        let Ok(other) = other.cast::<PyReActStep>() else {
            return Ok(false);
        };
        let (this, that) = (slf.get(), other.get());
        Ok(this.thought(py)?.as_any().eq(that.thought(py)?)?
            && this.action(py)?.into_pyobject(py)?.eq(that.action(py)?)?
            && this
                .final_answer(py)?
                .into_pyobject(py)?
                .eq(that.final_answer(py)?)?
            && Self::action_input(slf)?
                .bind(py)
                .eq(Self::action_input(other)?)?)
    }
}

/// Parses one ReAct step from model output.
///
/// Accepts `Thought: ...` followed by `Action: tool {"json": 1}`, `Action: FINAL_ANSWER 42`,
/// `Action: tool` + `Action Input: ...`, or `Final Answer: ...`. Labels are case-insensitive;
/// JSON input may sit in a ```json fence and be followed by other text.
///
/// Args:
///     text: the model's output for one step.
///
/// Returns:
///     ReActStep: the parsed step.
///
/// Raises:
///     ParseError: the text is not a ReAct step; the message says what was expected, and
///         ``position`` the byte offset where. Also when the text is not valid Unicode (it
///         holds a lone surrogate, as a stream cut inside an emoji's escape leaves).
#[pyfunction]
pub fn parse_react_step<'py>(text: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyReActStep>> {
    let source = args::text_of(text, |message| CoreError::Parse {
        message,
        position: None,
    })?;
    // Parsing slices the text by offsets it found: a bug there must not escape as a panic.
    let step = catch_panics(|| Ok(parse(source)?))?;
    let span = |part: &str| span_of(source, part);
    let step = Bound::new(
        text.py(),
        PyReActStep {
            source: text.clone().unbind(),
            thought: span(step.thought),
            action: step.action.map(span),
            final_answer: step.final_answer.map(|answer| match answer {
                Cow::Borrowed(part) => Answer::Span(span(part)),
                Cow::Owned(text) => Answer::Owned(text),
            }),
            input: step.action_input.map(|input| span(input.text)),
            decoded_input: OnceLock::new(),
        },
    )?;
    // A new step holds only a string, so it cannot be part of a reference cycle: like CPython
    // with its tuples of atomic values, keep it out of the cycle collector, which would
    // otherwise visit each of the (often many, long-kept) parsed steps at every collection.
    // It is tracked again if its decoded input turns out to be a dict or list.
    #[allow(unsafe_code)]
    // SAFETY: `step` is a live, GC-capable object (every #[pyclass] is) held by this thread
    // with the GIL; untracking a tracked object is always allowed.
    unsafe {
        ffi::PyObject_GC_UnTrack(step.as_ptr().cast());
    }
    Ok(step)
}

/// Puts `step` back under the cycle collector once it holds `value`, when `value` is a dict
/// or a list: a user may put the step inside its own input.
fn track_if_it_holds_a_container(step: &Bound<'_, PyReActStep>, value: &Bound<'_, PyAny>) {
    if !(value.is_instance_of::<PyDict>() || value.is_instance_of::<PyList>()) {
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: `step` is alive and the GIL is held; `PyObject_GC_Track` is only called on an
    // untracked object, as it requires.
    unsafe {
        if ffi::PyObject_GC_IsTracked(step.as_ptr()) == 0 {
            ffi::PyObject_GC_Track(step.as_ptr().cast());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn action(text: &str) -> (String, ActionInput) {
        let step = parse(text).unwrap();
        (
            step.action.unwrap().to_owned(),
            step.action_input.unwrap().decode(),
        )
    }

    #[test]
    fn seed_form_with_json() {
        let step = parse("Thought: need math\nAction: calc {\"n\": 21}").unwrap();
        assert_eq!(step.thought, "need math");
        assert_eq!(step.action, Some("calc"));
        assert_eq!(
            step.action_input.map(|i| i.decode()),
            Some(ActionInput::Json(json!({"n": 21})))
        );
        assert_eq!(step.final_answer, None);
    }

    #[test]
    fn seed_final_answer() {
        let step = parse("Thought: done\nAction: FINAL_ANSWER 42").unwrap();
        assert_eq!(step.final_answer.as_deref(), Some("42"));
        assert_eq!(step.action, None);
        let quoted = parse("Action: final_answer \"the end\"").unwrap();
        assert_eq!(quoted.final_answer.as_deref(), Some("the end"));
        let langchain = parse("Thought: done\nAction: FINAL_ANSWER\nAction Input: 42").unwrap();
        assert_eq!(langchain.final_answer.as_deref(), Some("42"));
        assert_eq!(langchain.action, None);
        let bare = parse("Thought: done\nAction: FINAL_ANSWER").unwrap();
        assert_eq!(bare.final_answer.as_deref(), Some(""));
    }

    #[test]
    fn langchain_form() {
        let (tool, input) = action("Thought: x\nAction: search\nAction Input: rust pyo3");
        assert_eq!(tool, "search");
        assert_eq!(input, ActionInput::Raw("rust pyo3".into()));
        let step = parse("Thought: ok\nFinal Answer: Paris\nis the capital").unwrap();
        assert_eq!(step.final_answer.as_deref(), Some("Paris\nis the capital"));
    }

    #[test]
    fn nested_braces_strings_fences_and_chatter() {
        let (_, input) = action("action: t {\"a\": {\"b\": \"}{\"}, \"c\": [1, 2]} and then more");
        assert_eq!(
            input,
            ActionInput::Json(json!({"a": {"b": "}{"}, "c": [1, 2]}))
        );
        let (_, fenced) = action("Action: t\nAction Input: ```json\n{\"q\": 1}\n```\nbye");
        assert_eq!(fenced, ActionInput::Json(json!({"q": 1})));
        let (_, escaped) = action("Action: t {\"s\": \"a\\\"}b\"}");
        assert_eq!(escaped, ActionInput::Json(json!({"s": "a\"}b"})));
    }

    #[test]
    fn multi_line_thought_and_preamble() {
        let step = parse("  THOUGHT :  line one\nline two\n ACTION: t [1]").unwrap();
        assert_eq!(step.thought, "line one\nline two");
        let pre = parse("I should look.\nAction: t {}").unwrap();
        assert_eq!(pre.thought, "I should look.");
    }

    #[test]
    fn errors_say_what_and_where() {
        let err = parse("just chatting").unwrap_err();
        assert!(matches!(
            err,
            CoreError::Parse {
                position: Some(13),
                ..
            }
        ));
        assert!(parse("Action:   \n").is_err());
        assert!(parse("Action: tool").is_err());
        assert!(parse("Action: t {}\nFinal Answer: 1").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn wide_integers_lists_the_f64_literals_only_when_one_is_an_exact_int() {
        assert_eq!(
            wide_integers(r#"{"a": 1, "b": 2.5, "c": -3e4, "d": "99999999999999999999"}"#),
            None
        );
        let big = "123456789012345678901234567890";
        let text = format!(
            r#"{{"x": 1.5, "y": {big}, "z": [-0, 7, -9223372036854775808, 18446744073709551616e0]}}"#
        );
        assert_eq!(
            wide_integers(&text),
            Some(vec![None, Some(big), Some("-0"), None])
        );
        assert_eq!(
            wide_integers("[18446744073709551615, -9223372036854775809]"),
            Some(vec![Some("-9223372036854775809")])
        );
        assert_eq!(wide_integers(r#"{"unterminated: 1"#), None);
    }

    #[test]
    fn final_answer_json_with_a_wide_integer_is_kept_as_written() {
        let step = parse(r#"Action: FINAL_ANSWER {"n": 123456789012345678901234567890}"#).unwrap();
        assert_eq!(
            step.final_answer.as_deref(),
            Some(r#"{"n": 123456789012345678901234567890}"#)
        );
    }

    #[test]
    fn unbalanced_json_is_kept_raw() {
        let (_, input) = action("Action: t {\"a\": 1");
        assert_eq!(input, ActionInput::Raw("{\"a\": 1".into()));
    }

    #[test]
    fn long_inputs_stay_linear() {
        let deep = "[".repeat(100_000);
        let (_, input) = action(&format!("Action: t {deep}"));
        assert!(matches!(input, ActionInput::Raw(_)));
        let many_lines = "Thought: a\n".repeat(50_000) + "Action: t {}";
        assert!(parse(&many_lines).is_ok());
    }
}
