//! ReAct step parsing: model text -> thought, action, action input, final answer.
//!
//! Two forms are accepted, with case-insensitive labels at the start of a line:
//!
//! * the seed form: `Thought: ...` / `Action: tool {"n": 21}` / `Action: FINAL_ANSWER 42`;
//! * the LangChain form: `Action: tool` / `Action Input: {...}` / `Final Answer: ...`.
//!
//! Parsing is one pass over the lines plus one bracket-matching pass over the input, so it is
//! linear in the length of the text whatever the text holds.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde_json::Value;

use crate::errors::{CoreError, CoreResult};

/// The tool name that marks a final answer in the seed form (`Action: FINAL_ANSWER 42`).
pub const FINAL_ANSWER_TOOL: &str = "FINAL_ANSWER";

/// The input given to an action: decoded JSON, or the raw text when it is not JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionInput {
    /// An object, array or string literal that decoded as JSON.
    Json(Value),
    /// Anything else, trimmed.
    Raw(String),
}

/// One parsed ReAct step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The model's reasoning (may be empty).
    pub thought: String,
    /// The tool to call, unless this step is a final answer.
    pub action: Option<String>,
    /// The tool's input; `None` for a final answer.
    pub action_input: Option<ActionInput>,
    /// The final answer, when the step ends the run.
    pub final_answer: Option<String>,
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
    label: Label,
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

/// Splits the text into the preamble end and its labelled sections, in order.
fn sections(text: &str) -> (usize, Vec<Section>) {
    let bytes = text.as_bytes();
    let mut found: Vec<Section> = Vec::new();
    let mut preamble_end = text.len();
    let mut line_start = 0;
    while line_start <= bytes.len() {
        if let Some((label, label_pos, start)) = label_at(bytes, line_start) {
            if let Some(last) = found.last_mut() {
                last.end = line_start;
            } else {
                preamble_end = line_start;
            }
            found.push(Section {
                label,
                label_pos,
                start,
                end: text.len(),
            });
        }
        match memchr_newline(&bytes[line_start..]) {
            Some(offset) => line_start += offset + 1,
            None => break,
        }
    }
    (preamble_end, found)
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Returns the end (exclusive) of the bracketed JSON value starting at `bytes[0]`
/// (`{` or `[`), honouring strings and escapes; `None` when it never closes.
fn matching_close(bytes: &[u8]) -> Option<usize> {
    let mut depth: usize = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// Returns the end (exclusive) of the JSON string literal starting at `bytes[0]` (`"`).
fn string_close(bytes: &[u8]) -> Option<usize> {
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            return Some(i + 1);
        }
    }
    None
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

/// Decodes an action input: a JSON object, array or string (trailing chatter ignored), or
/// the raw trimmed text otherwise.
pub fn parse_input(text: &str) -> ActionInput {
    let text = strip_fence(text.trim());
    let bytes = text.as_bytes();
    let end = match bytes.first() {
        Some(b'{' | b'[') => matching_close(bytes),
        Some(b'"') => string_close(bytes),
        _ => None,
    };
    if let Some(end) = end {
        if let Ok(value) = serde_json::from_str::<Value>(&text[..end]) {
            return ActionInput::Json(value);
        }
    }
    ActionInput::Raw(text.trim_matches('"').to_owned())
}

/// Parses one ReAct step.
///
/// # Errors
/// [`CoreError::Parse`] when the text has neither an action nor a final answer, has both,
/// names no tool, or gives a tool no input.
pub fn parse(text: &str) -> CoreResult<Step> {
    let (preamble_end, found) = sections(text);
    let first = |label: Label| found.iter().find(|s| s.label == label);
    let content = |s: &Section| text[s.start..s.end].trim();

    let thought = match first(Label::Thought) {
        Some(s) => content(s).to_owned(),
        None => text[..preamble_end].trim().to_owned(),
    };
    let action = first(Label::Action);
    let final_answer = found.iter().rev().find(|s| s.label == Label::FinalAnswer);

    let Some(action) = action else {
        return match final_answer {
            Some(s) => Ok(Step {
                thought,
                action: None,
                action_input: None,
                // Everything after the last `Final Answer:` is the answer.
                final_answer: Some(text[s.start..].trim().to_owned()),
            }),
            None => Err(CoreError::Parse {
                message: "expected a line starting with 'Action:' or 'Final Answer:'".into(),
                position: Some(text.len()),
            }),
        };
    };

    let input_section = first(Label::ActionInput);
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
        let answer = match parse_input(inline_input) {
            ActionInput::Json(Value::String(s)) => s,
            ActionInput::Json(other) => other.to_string(),
            ActionInput::Raw(raw) => raw,
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
        action: Some(tool.to_owned()),
        action_input: Some(parse_input(input_text)),
        final_answer: None,
    })
}

/// Converts a JSON value into the equivalent Python object.
pub fn json_to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64()
                    .ok_or_else(|| PyTypeError::new_err("unrepresentable JSON number"))?
                    .into_pyobject(py)?
                    .into_any()
            }
        }
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, json_to_py(py, v)?)?;
            }
            dict.into_any()
        }
    })
}

/// One step of a ReAct trace: the model's thought, then either an action with its input or
/// a final answer.
///
/// `action_input` is the decoded JSON (dict, list or str) when the input was a JSON object,
/// array or string, and the raw trimmed text otherwise.
#[pyclass(module = "llm_agent_runtime", name = "ReActStep", frozen)]
pub struct PyReActStep {
    #[pyo3(get)]
    thought: String,
    #[pyo3(get)]
    action: Option<String>,
    #[pyo3(get)]
    action_input: Py<PyAny>,
    #[pyo3(get)]
    final_answer: Option<String>,
}

#[pymethods]
impl PyReActStep {
    /// Whether this step ends the run with a final answer.
    #[getter]
    fn is_final(&self) -> bool {
        self.final_answer.is_some()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let repr = |value: Bound<'_, PyAny>| -> PyResult<String> { Ok(value.repr()?.to_string()) };
        Ok(format!(
            "ReActStep(thought={}, action={}, action_input={}, final_answer={})",
            repr(self.thought.as_str().into_pyobject(py)?.into_any())?,
            repr(self.action.as_deref().into_pyobject(py)?)?,
            repr(self.action_input.bind(py).clone())?,
            repr(self.final_answer.as_deref().into_pyobject(py)?)?,
        ))
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(other) = other.cast::<PyReActStep>() else {
            return Ok(false);
        };
        let other = other.get();
        Ok(self.thought == other.thought
            && self.action == other.action
            && self.final_answer == other.final_answer
            && self.action_input.bind(py).eq(other.action_input.bind(py))?)
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
///         ``position`` the byte offset where.
#[pyfunction]
pub fn parse_react_step(py: Python<'_>, text: &str) -> PyResult<PyReActStep> {
    let step = parse(text)?;
    let action_input = match &step.action_input {
        None => py.None(),
        Some(ActionInput::Json(value)) => json_to_py(py, value)?.unbind(),
        Some(ActionInput::Raw(raw)) => raw.into_pyobject(py)?.into_any().unbind(),
    };
    Ok(PyReActStep {
        thought: step.thought,
        action: step.action,
        action_input,
        final_answer: step.final_answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn action(text: &str) -> (String, ActionInput) {
        let step = parse(text).unwrap();
        (step.action.unwrap(), step.action_input.unwrap())
    }

    #[test]
    fn seed_form_with_json() {
        let step = parse("Thought: need math\nAction: calc {\"n\": 21}").unwrap();
        assert_eq!(step.thought, "need math");
        assert_eq!(step.action.as_deref(), Some("calc"));
        assert_eq!(step.action_input, Some(ActionInput::Json(json!({"n": 21}))));
        assert_eq!(step.final_answer, None);
    }

    #[test]
    fn seed_final_answer() {
        let step = parse("Thought: done\nAction: FINAL_ANSWER 42").unwrap();
        assert_eq!(step.final_answer.as_deref(), Some("42"));
        assert_eq!(step.action, None);
        let quoted = parse("Action: final_answer \"the end\"").unwrap();
        assert_eq!(quoted.final_answer.as_deref(), Some("the end"));
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
