//! ReAct step parsing: model text -> thought, action, action input, final answer.
//!
//! Two forms are accepted, with case-insensitive labels at the start of a line (lines end at
//! `\n`, `\r\n` or a lone `\r`; a step number may stand before the colon: `Action 1:`,
//! `Action 1 Input:`):
//!
//! * the seed form: `Thought: ...` / `Action: tool {"n": 21}` / `Action: FINAL_ANSWER 42`;
//! * the LangChain form: `Action: tool` / `Action Input: {...}` / `Final Answer: ...`.
//!
//! The first `Action:` is the step's action (numbered plan lines such as `Action 1: search
//! for X` are labels too, so the first of them wins). When an `Action Input:` label follows
//! it, later on its line (written so, case included, as LangChain matches it, after a blank,
//! a Unicode space too; not inside a JSON string or bracketed value there) or as the next
//! such line before any other `Action:`, the tool is all the text of the action's line
//! before that label (trimmed, a trailing `:`, `=`, `,` or `;` dropped: `Search Tool`,
//! `github.search_issues`), as LangChain reads it, and the input is what follows the label;
//! unless the line is in the seed form: its tool is `FINAL_ANSWER`, or an input starts right
//! after the name (`{`, `[`, `(`, `"`, a code fence, `:` or `=`). Otherwise (the seed form)
//! the tool is the leading run of `[A-Za-z0-9_-]`, dots included between two such characters
//! (`github.search_issues`), and its input follows, after an optional `:`, `=`, `,` or `;`
//! (`Action: FINAL_ANSWER: 42`) or inside call parentheses (`Action: FINAL_ANSWER(42)`,
//! nothing after them on their line: chatter on later lines is ignored), or else is on the
//! `Action Input:` line. A bare `Action: FINAL_ANSWER` answers with a `Final Answer:`
//! section (up to the next label), or else a `Final Answer:` later on a line after it; with
//! neither, the text is not a step. The step ends at the first `Observation:` line after the
//! action, or the first `Thought:` or `Action:` line once the action has its input (a
//! `Final Answer:` section after the action counts as its input): the model
//! invented the observation, or went on to its next step before seeing one; what follows is
//! not read. With no action and no `Final Answer:` line, a `Final Answer:` (so written, as
//! LangChain looks for it) later on a line ends the thought and starts the answer.
//!
//! Other shapes models write are read on branches the common forms never take: the ReAct
//! paper's `Action: search[text]`, `Action: Final Answer` (the answer taken for a tool),
//! LangChain's JSON agent blob (`{"action": ..., "action_input": ...}`), an action that says
//! no tool is called (`Action: None`) before a `Final Answer:`, and a reasoning model's
//! `<think>...</think>` block, which is not read for labels (see [`parse`]). A full-width
//! colon (U+FF1A) ends a label as an ASCII one does. An input that is not JSON is decoded
//! when it is an object or array written as Python writes one, or with trailing commas (see
//! `relaxed_json`).
//!
//! Parsing is one pass over the lines plus one bracket-matching pass over the input, so it is
//! linear in the length of the text whatever the text holds.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::OnceLock;

use pyo3::exceptions::{PyRecursionError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};
use pyo3::{PyTraverseError, PyVisit};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::args;
use crate::errors::{catch_panics, CoreError, CoreResult};

/// What may stand between a seed-form tool name and its input (`FINAL_ANSWER: 42`,
/// `tool = {...}`, `tool, {...}`).
const SEPARATORS: [char; 4] = [':', '=', ',', ';'];

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
    /// Whether the text holds it: false for a bare action's, `{}` (no arguments).
    written: bool,
}

impl<'a> InputText<'a> {
    /// The input of an action: `text` trimmed, without a surrounding code fence.
    pub fn new(text: &'a str) -> Self {
        Self {
            text: strip_fence(text.trim()),
            written: true,
        }
    }

    /// The input of a bare action (`Action: tool`, nothing after it): no arguments, `{}`.
    pub fn no_arguments() -> Self {
        Self {
            text: "{}",
            written: false,
        }
    }

    /// The JSON candidate: a leading object or array (trailing chatter ignored), or a leading
    /// string literal with nothing but blanks after it on its line (chatter on later lines is
    /// ignored; `"New York" weather` is text that starts with a quoted phrase, not the string
    /// `New York`).
    pub fn json(&self) -> Option<&'a str> {
        let bytes = self.text.as_bytes();
        let len = match bytes.first() {
            Some(b'{' | b'[') => matching_close(bytes),
            Some(b'"') => {
                let close = string_close(bytes)?;
                let rest = bytes.get(close..)?;
                let line = line_break(rest).map_or(rest, |nl| &rest[..nl]);
                line.iter().all(u8::is_ascii_whitespace).then_some(close)
            }
            _ => None,
        }?;
        Some(&self.text[..len])
    }

    /// The input as raw text, without the pair of double quotes around it, if it has one:
    /// unless the first quote closes before the last (`"a" and "b"` keeps its quotes), but
    /// also when the last quote follows a backslash (`"C:\Users\"` is `C:\Users\`).
    pub fn raw(&self) -> &'a str {
        let bytes = self.text.as_bytes();
        let inner = self
            .text
            .strip_prefix('"')
            .and_then(|text| text.strip_suffix('"'));
        inner
            .filter(|_| string_close(bytes).is_none_or(|close| close == bytes.len()))
            .unwrap_or(self.text)
    }

    /// Decodes the input: JSON when the candidate is valid JSON, the raw text otherwise.
    ///
    /// A `Value` holds integers of at most 64 bits: a larger one is read as the nearest
    /// float (the binding decodes into Python instead, where it stays exact).
    pub fn decode(&self) -> ActionInput {
        self.json()
            .and_then(|json| serde_json::from_str::<Value>(json).ok())
            .or_else(|| serde_json::from_str::<Value>(&relaxed_json(self.text)?).ok())
            .map_or_else(
                || ActionInput::Raw(self.raw().to_owned()),
                ActionInput::Json,
            )
    }
}

/// The strict JSON text of the object or array that `text` starts with, when it is written
/// as Python writes one (`repr` of a dict or list: strings in single quotes, with Python's
/// escapes; `True`, `False`, `None`) or as JSON with trailing commas (`{"a": 1,}`), as
/// models write tool inputs (LlamaIndex and CrewAI read such text too). Text after the
/// value is ignored, as after a JSON value. `None` when `text` starts with no such value
/// (what the result holds is checked by decoding it as JSON). Only runs where `text` was not
/// JSON: never on the common path.
#[cold]
#[inline(never)]
fn relaxed_json(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if !matches!(bytes.first(), Some(b'{' | b'[')) {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut depth: usize = 0;
    let mut plain = 0; // the start of the text not copied yet
    let mut at = 0;
    loop {
        let byte = *bytes.get(at)?; // the value never closes: no JSON
        let replacement: Option<&str> = match byte {
            b'{' | b'[' => {
                depth += 1;
                None
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                out.push_str(text.get(plain..at)?);
                plain = at;
                // A comma after the last item (blanks before the bracket) is dropped; one with
                // no item before it (`[,]`) is no trailing comma.
                let kept = out.trim_end().len();
                if out[..kept].ends_with(',') {
                    out.truncate(kept - 1);
                    if out.trim_end().ends_with(['[', '{', ',']) {
                        return None;
                    }
                }
                if depth == 0 {
                    out.push(char::from(byte));
                    return Some(out);
                }
                None
            }
            b'"' | b'\'' => {
                let (value, end) = python_string(text, at)?;
                out.push_str(text.get(plain..at)?);
                out.push_str(&serde_json::to_string(&value).ok()?);
                plain = end;
                at = end;
                continue;
            }
            b'T' | b'F' | b'N' => [("True", "true"), ("False", "false"), ("None", "null")]
                .into_iter()
                .find(|(word, _)| {
                    eat_exact(bytes, at, word.as_bytes()).is_some_and(|end| {
                        !bytes
                            .get(end)
                            .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_')
                    })
                })
                .map(|(_, json)| json),
            _ => None,
        };
        match replacement {
            Some(json) => {
                out.push_str(text.get(plain..at)?);
                out.push_str(json);
                // The words are as long in bytes as the names they replace, plus one for False.
                at += if json == "false" { 5 } else { 4 };
                plain = at;
            }
            None => at += 1,
        }
    }
}

/// The string literal at `text[at]` (opened by `'` or `"`), read as Python reads it: its
/// value and the index after its closing quote. `None` when it does not close, or holds a
/// lone surrogate (no Rust string holds one).
fn python_string(text: &str, at: usize) -> Option<(String, usize)> {
    let bytes = text.as_bytes();
    let quote = *bytes.get(at)?;
    let mut value = String::new();
    let mut from = at + 1;
    loop {
        let offset = memchr::memchr2(quote, b'\\', bytes.get(from..)?)?;
        let stop = from + offset;
        value.push_str(text.get(from..stop)?);
        if bytes.get(stop) == Some(&quote) {
            return Some((value, stop + 1));
        }
        let escape = *bytes.get(stop + 1)?;
        if let b'\n' | b'\r' = escape {
            // A line continuation: the backslash and the line break make nothing.
            let crlf = escape == b'\r' && bytes.get(stop + 2) == Some(&b'\n');
            from = stop + if crlf { 3 } else { 2 };
            continue;
        }
        let hex = |len: usize| {
            let digits = text.get(stop + 2..stop + 2 + len)?;
            if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None; // from_str_radix takes a sign too
            }
            u32::from_str_radix(digits, 16)
                .ok()
                .map(|code| (code, 2 + len))
        };
        let (code, len) = match escape {
            b'n' => (0x0A, 2),
            b't' => (0x09, 2),
            b'r' => (0x0D, 2),
            b'b' => (0x08, 2),
            b'f' => (0x0C, 2),
            b'a' => (0x07, 2),
            b'v' => (0x0B, 2),
            // Up to three octal digits (`\0`, `\012`).
            b'0'..=b'7' => {
                let digits = bytes.get(stop + 1..)?.iter().take(3);
                let len = digits.take_while(|b| (b'0'..=b'7').contains(b)).count();
                let code = u32::from_str_radix(text.get(stop + 1..stop + 1 + len)?, 8).ok()?;
                (code, 1 + len)
            }
            b'x' => hex(2)?,
            b'u' => {
                let (high, len) = hex(4)?;
                // JSON's form of a character beyond the BMP: a surrogate pair.
                match (0xD800..0xDC00).contains(&high) {
                    true if bytes.get(stop + 6..stop + 8) == Some(b"\\u") => {
                        let digits = text.get(stop + 8..stop + 12)?;
                        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return None;
                        }
                        let low = u32::from_str_radix(digits, 16).ok()?;
                        if !(0xDC00..0xE000).contains(&low) {
                            return None; // a lone surrogate
                        }
                        ((high - 0xD800) * 0x400 + (low - 0xDC00) + 0x10000, 12)
                    }
                    _ => (high, len),
                }
            }
            b'U' => hex(8)?,
            // A character by its name (`\N{DEGREE SIGN}`): no table of names here, so the
            // literal is not read at all rather than read wrong (the input stays text).
            b'N' => return None,
            b'\\' | b'\'' | b'"' => (u32::from(escape), 2),
            // JSON's escape, in a JSON string; Python keeps it as written.
            b'/' if quote == b'"' => (u32::from(escape), 2),
            // Python keeps an unknown escape as it is written, backslash included.
            _ => (u32::from(b'\\'), 1),
        };
        value.push(char::from_u32(code)?);
        from = stop + len;
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
    /// Byte offset in the text where the step ends: the text's length, or, when an
    /// `Observation:` line follows the action, or a `Thought:` or `Action:` line follows the
    /// action's input (the model went on without the observation), the end of the text
    /// before that line, trailing whitespace excluded.
    pub end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Thought,
    Action,
    ActionInput,
    FinalAnswer,
    Observation,
}

/// A part of the text: its start and the index after it.
type Span = (usize, usize);

/// A labelled part of the text: `start..end` is the content after the label's colon.
#[derive(Debug, Clone, Copy)]
struct Section {
    label_pos: usize,
    start: usize,
    end: usize,
    /// The emphasis closing a label line wrapped whole (`**Final Answer: Paris**`).
    close: Option<Span>,
}

impl Section {
    /// The section's text up to `end`, without the closing emphasis of its wrapped label
    /// line when nothing but blanks follows it before `end`.
    fn upto(self, text: &str, end: usize) -> &str {
        let end = match self.close {
            Some((marker, after))
                if self.start <= marker
                    && text.get(after..end).is_some_and(|t| t.trim().is_empty()) =>
            {
                marker
            }
            _ => end,
        };
        text.get(self.start..end).unwrap_or_default()
    }

    /// The section's text (see [`Section::upto`]).
    fn text(self, text: &str) -> &str {
        self.upto(text, self.end)
    }

    /// A final answer's text up to `end`, without the closing emphasis of its wrapped label
    /// line, wherever the answer goes on after it.
    fn answer(self, text: &str, end: usize) -> Cow<'_, str> {
        match self.close {
            Some((marker, after)) if self.start <= marker && after <= end => {
                without(text, self.start, (marker, after), end)
            }
            _ => Cow::Borrowed(text.get(self.start..end).unwrap_or_default()),
        }
    }
}

/// `text[start..end]` without `cut` (within it): a slice when nothing but blanks follows it.
fn without(text: &str, start: usize, cut: Span, end: usize) -> Cow<'_, str> {
    let (Some(before), Some(rest)) = (text.get(start..cut.0), text.get(cut.1..end)) else {
        return Cow::Borrowed(text.get(start..end).unwrap_or_default());
    };
    if rest.trim().is_empty() {
        Cow::Borrowed(before)
    } else {
        Cow::Owned([before, rest].concat())
    }
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

/// Skips a step number (`Action 1:`, `Thought 2:`): blanks then digits. Returns the index
/// after the digits, or `at` when there are none.
fn skip_number(bytes: &[u8], at: usize) -> usize {
    let mut i = skip_blanks(bytes, at);
    if !bytes.get(i).is_some_and(u8::is_ascii_digit) {
        return at;
    }
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// If `bytes[at..]` is the rest of an `Action Input` label after its `Action` word (blanks,
/// `Input`, an optional number), returns the index after it.
fn input_word(bytes: &[u8], at: usize) -> Option<usize> {
    let i = eat_word(bytes, skip_blanks(bytes, at), b"input")?;
    Some(skip_number(bytes, i))
}

/// The full-width colon (U+FF1A) that models writing Chinese or Japanese put after a label.
const FULL_WIDTH_COLON: &[u8] = "\u{FF1A}".as_bytes();

/// The index after the colon at `at`, after blanks, if there is one: an ASCII colon or a
/// full-width one.
fn colon_after(bytes: &[u8], at: usize) -> Option<usize> {
    let colon = skip_blanks(bytes, at);
    match bytes.get(colon)? {
        b':' => Some(colon + 1),
        0xEF => eat_exact(bytes, colon, FULL_WIDTH_COLON),
        _ => None,
    }
}

/// The length of the space or invisible format character at `at` that is not a tab or an
/// ASCII space (0 when there is none): a no-break or other Unicode space, a byte order mark,
/// a zero-width space or joiner, a direction mark, embedding or isolate, or a word joiner.
/// A model's tokenizer, or right-to-left text, may put one before a label.
fn unicode_blank_len(bytes: &[u8], at: usize) -> usize {
    // U+00A0; U+061C (the Arabic letter mark).
    if let Some([0xC2, 0xA0] | [0xD8, 0x9C]) = bytes.get(at..at.saturating_add(2)) {
        return 2;
    }
    match bytes.get(at..at.saturating_add(3)) {
        // U+1680; U+2000..U+200F; U+202A..U+202F; U+205F, U+2060, U+2066..U+2069; U+3000;
        // U+FEFF.
        Some(
            [0xE1, 0x9A, 0x80]
            | [0xE2, 0x80, 0x80..=0x8F | 0xAA..=0xAF]
            | [0xE2, 0x81, 0x9F | 0xA0 | 0xA6..=0xA9]
            | [0xE3, 0x80, 0x80]
            | [0xEF, 0xBB, 0xBF],
        ) => 3,
        _ => 0,
    }
}

/// Skips blanks, Unicode spaces and invisible format characters (see `unicode_blank_len`).
fn skip_line_lead(bytes: &[u8], mut at: usize) -> usize {
    loop {
        let next = skip_blanks(bytes, at);
        let blank = unicode_blank_len(bytes, next);
        if blank == 0 {
            return next;
        }
        at = next + blank;
    }
}

/// The index after a Markdown list marker at `at` and the blanks after it (`at` when there is
/// none): a bullet (`-`, `*`, `+`, `•`) or a number of up to three digits closed by `.` or
/// `)`, then at least one blank. Models asked for a ReAct step often write it as a list
/// (`- Thought: ...` / `1. Action: ...`), which LangChain's parser reads too.
fn skip_list_marker(bytes: &[u8], at: usize) -> usize {
    let marker_end = match bytes.get(at) {
        Some(b'-' | b'*' | b'+') => at + 1,
        Some(0xE2) => match eat_exact(bytes, at, "\u{2022}".as_bytes()) {
            Some(end) => end,
            None => return at,
        },
        Some(b'0'..=b'9') => {
            let digits = bytes[at..]
                .iter()
                .take(4)
                .take_while(|b| b.is_ascii_digit())
                .count();
            match bytes.get(at + digits) {
                Some(b'.' | b')') if digits <= 3 => at + digits + 1,
                _ => return at,
            }
        }
        _ => return at,
    };
    match bytes.get(marker_end) {
        Some(b' ' | b'\t') => skip_blanks(bytes, marker_end),
        _ => at,
    }
}

/// The Markdown emphasis marker at `at` that may wrap a label (`**Thought:**`, `__Action__:`,
/// `*Final Answer:*`, `***Action:***`), or an empty one: chat models often write their labels
/// in bold.
fn emphasis_at(bytes: &[u8], at: usize) -> &'static [u8] {
    if !matches!(bytes.get(at), Some(b'*' | b'_')) {
        return b"";
    }
    [b"***" as &[u8], b"**", b"__", b"*", b"_"]
        .into_iter()
        .find(|marker| eat_exact(bytes, at, marker).is_some())
        .unwrap_or_default()
}

/// Recognises a label at the start of a line (after blanks, Unicode spaces, invisible format
/// characters and a list marker, in Markdown emphasis or not); returns it with its start,
/// the index after its colon (and after the emphasis closing there: `**Action:**`), and the
/// emphasis closing the line when it wraps the line whole (`**Final Answer: Paris**`).
fn label_at(bytes: &[u8], line_start: usize) -> Option<(Label, usize, usize, Option<Span>)> {
    label_on_line(bytes, line_start, true)
}

/// [`label_at`]; without `look_ahead`, a line wrapped whole is taken for a label whatever
/// line follows it (see [`wrapped_section_ends`]).
fn label_on_line(
    bytes: &[u8],
    line_start: usize,
    look_ahead: bool,
) -> Option<(Label, usize, usize, Option<Span>)> {
    let lead = skip_line_lead(bytes, line_start);
    let marked = skip_list_marker(bytes, lead);
    let emphasis = emphasis_at(bytes, marked);
    let at = marked + emphasis.len();
    // A step number may follow the label word, as LangChain's `Action\s*\d*\s*:` allows.
    // Each label word has its own first letter: most lines are told apart by it alone.
    let (label, after) = match bytes.get(at).map(u8::to_ascii_lowercase) {
        Some(b't') => (
            Label::Thought,
            skip_number(bytes, eat_word(bytes, at, b"thought")?),
        ),
        Some(b'f') => (Label::FinalAnswer, eat_word(bytes, at, b"final answer")?),
        Some(b'o') => (
            Label::Observation,
            skip_number(bytes, eat_word(bytes, at, b"observation")?),
        ),
        Some(b'a') => {
            let i = skip_number(bytes, eat_word(bytes, at, b"action")?);
            match input_word(bytes, i) {
                Some(k) => (Label::ActionInput, k),
                None => (Label::Action, i),
            }
        }
        _ => return None,
    };
    let (start, close) = if emphasis.is_empty() {
        (colon_after(bytes, after)?, None)
    } else {
        // The emphasis closes after the colon (`**Action:**`), before it (`**Action**:`), or
        // (in asterisks: `_` ends many a tool name) at the end of the line.
        match colon_after(bytes, after) {
            Some(colon) => match eat_exact(bytes, colon, emphasis) {
                Some(start) => (start, None),
                None if emphasis[0] == b'*' => {
                    let close = line_close(bytes, colon, emphasis)?;
                    // Only a final answer's text may lose a marker within it (it is made
                    // anew); a thought or an action is a slice of the text, so their wrapped
                    // line must be their whole section.
                    if look_ahead
                        && label != Label::FinalAnswer
                        && !wrapped_section_ends(bytes, close.1)
                    {
                        return None;
                    }
                    (colon, Some(close))
                }
                None => return None,
            },
            None => (
                colon_after(bytes, eat_exact(bytes, after, emphasis)?)?,
                None,
            ),
        }
    };
    Some((label, lead, start, close))
}

/// Whether the line after the one holding `at`, blank lines skipped, is a label line (or
/// there is none): a section whose label line is wrapped whole then ends with that line.
fn wrapped_section_ends(bytes: &[u8], at: usize) -> bool {
    let mut line_start = at;
    loop {
        let Some(offset) = line_break(bytes.get(line_start..).unwrap_or_default()) else {
            return true;
        };
        line_start += offset + 1;
        if !line_rest(bytes, line_start).trim_ascii().is_empty() {
            return label_on_line(bytes, line_start, false).is_some();
        }
    }
}

/// The closing `emphasis` ending the line from `at` (then blanks only), after some text that
/// does not end in a blank, as Markdown closes emphasis: its start and the index after it.
fn line_close(bytes: &[u8], at: usize, emphasis: &[u8]) -> Option<Span> {
    let line = line_rest(bytes, at);
    let written = line.trim_ascii_end();
    let inner = written.strip_suffix(emphasis)?;
    if inner.trim_ascii().is_empty() || inner.last().is_some_and(u8::is_ascii_whitespace) {
        return None;
    }
    let marker = at + inner.len();
    Some((marker, marker + emphasis.len()))
}

/// The sections the parser uses, all before `end`.
#[derive(Debug)]
struct Sections {
    preamble_end: usize,
    /// The first `Thought:`.
    thought: Option<Section>,
    /// The first `Action:`: the step's action.
    action: Option<Section>,
    /// The first `Action Input:` after the first `Action:` and before any other.
    action_input: Option<Section>,
    /// The last `Final Answer:`.
    final_answer: Option<Section>,
    /// Where the step ends: the start of the first `Observation:` line after the action, or
    /// of the first `Thought:` or `Action:` line after its input; else the text's length.
    /// What follows is not read.
    end: usize,
    /// A line starting with a closing reasoning tag whose opening tag is not in the text
    /// (see [`reasoning_close_at`]), when looked for: the tag's start and the index after it.
    reasoning_end: Option<(usize, usize)>,
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

/// Finds the labelled sections in one pass over the lines, without allocating; with
/// `lone_close`, stops at the first line a closing reasoning tag starts (looked for up to the
/// text's end, past the step's end too: a draft in the reasoning may end a step early).
fn sections(text: &str, lone_close: bool) -> Sections {
    let bytes = text.as_bytes();
    let mut found = Sections {
        preamble_end: text.len(),
        thought: None,
        action: None,
        action_input: None,
        final_answer: None,
        end: text.len(),
        reasoning_end: None,
    };
    // The label of the section being read, when that section is one `found` keeps.
    let mut open: Option<Label> = None;
    let mut seen_label = false;
    // Whether an `Action:` after the first was seen: an `Action Input:` after it is its own.
    let mut later_action = false;
    // Whether the action's own section holds its input: worked out when a label after the
    // action first needs it (that section has closed then), and only once, so that the
    // parse stays linear.
    let mut inline_input: Option<bool> = None;
    // Whether an `Action Input:` (or `Final Answer:`) line is still to come for a bare
    // action: looked for once (until that line, every thought before it has it ahead).
    let mut input_ahead: Option<bool> = None;
    // Whether the action is `FINAL_ANSWER` (worked out once, as `inline_input`).
    let mut final_action: Option<bool> = None;
    // A code fence (```) open in the action's input or in the final answer: its lines are
    // the section's text, a line that looks like a label too (a YAML `action:` key, a Python
    // `thought: str`). `fence_may_open`: whether a fence line opens one here, which is at
    // the start of an input (so a step wrapped whole in a fence keeps its closing line
    // for what it is) and anywhere in a final answer.
    // The backticks of the open fence, which a bare fence line of as many closes.
    let mut fenced: Option<usize> = None;
    let mut fence_may_open = false;
    // When the step is wrapped whole in a code fence (one left open before its first label):
    // the start of the last fence line, which closes it and ends the step when it is bare
    // and at least as long (fences in between are the step's own: an input's, an answer's).
    let mut wrapper_close: Option<usize> = None;
    let mut line_start = 0;
    while line_start <= bytes.len() {
        // Found once a line: each label line and the step to the next line use it.
        let line_break_at = line_break(&bytes[line_start..]).map(|offset| line_start + offset);
        let line_end = line_break_at.unwrap_or(bytes.len());
        if let Some(ticks) = fenced {
            if fence_closes(bytes, line_start, ticks) {
                fenced = None;
            }
        } else if let Some((label, label_pos, start, close)) = label_at(bytes, line_start) {
            if !seen_label {
                seen_label = true;
                // A wrapping fence's opening line is no thought.
                let opening = open_fence_between(bytes, 0, line_start);
                if let Some(open_at) = opening {
                    wrapper_close = closing_fence(bytes, open_at, line_start);
                }
                found.preamble_end = opening.unwrap_or(line_start);
            }
            let mut section_end = line_start;
            // `Thought: ...` then a fence opening the rest of the step (`Final Answer: 42`,
            // or the action, then the closing fence): the fence is the step's wrapper, as
            // one opened before the thought is.
            if open == Some(Label::Thought)
                && wrapper_close.is_none()
                && matches!(label, Label::Action | Label::FinalAnswer)
            {
                if let Some(open_at) = found
                    .thought
                    .and_then(|thought| fence_opened_in_thought(bytes, thought, line_start))
                {
                    section_end = open_at;
                    wrapper_close = closing_fence(bytes, open_at, line_start);
                }
            }
            if let Some(Some(section)) = open.and_then(|l| found.slot(l)) {
                section.end = section_end;
            }
            open = None;
            let action_has_input = matches!(label, Label::Thought | Label::Action)
                && found.action.is_some_and(|action| {
                    found.action_input.is_some()
                        // `Action: FINAL_ANSWER` then `Final Answer: ...`: that is its input.
                        || found
                            .final_answer
                            .is_some_and(|answer| answer.label_pos > action.label_pos)
                        || *inline_input.get_or_insert_with(|| has_inline_input(text, action))
                        // A bare tool action (`Action: tool`, its input `{}`) is whole: a
                        // next action ends it, and so does a thought, unless a line after it
                        // still gives the action its input. (A bare `FINAL_ANSWER` looks on
                        // for its answer.)
                        || ((label == Label::Action
                            || !*input_ahead
                                .get_or_insert_with(|| input_label_ahead(bytes, line_start)))
                            && !*final_action
                                .get_or_insert_with(|| names_final_answer(text, action)))
                });
            let keep = match label {
                // After the action, an observation (invented) ends the step; so does a next
                // thought or action once the action has its input (the model went on without
                // the observation).
                Label::Observation if found.action.is_some() => {
                    found.end = line_start;
                    break;
                }
                Label::Thought | Label::Action if action_has_input => {
                    found.end = line_start;
                    break;
                }
                Label::Thought => found.thought.is_none(),
                Label::Action => {
                    later_action |= found.action.is_some();
                    found.action.is_none()
                }
                Label::ActionInput => {
                    found.action.is_some() && !later_action && found.action_input.is_none()
                }
                Label::FinalAnswer => true,
                Label::Observation => false,
            };
            if let Some(slot) = found.slot(label).filter(|_| keep) {
                *slot = Some(Section {
                    label_pos,
                    start,
                    end: text.len(),
                    close,
                });
                open = Some(label);
            }
            // The label (and its colon) lies on this line: `start` is within it.
            let rest = bytes.get(start..line_end).unwrap_or_default();
            fence_may_open = match open {
                // An action's line holds the tool's name: its input may start on the next.
                Some(Label::FinalAnswer | Label::Action) => true,
                Some(Label::ActionInput) => rest.iter().all(u8::is_ascii_whitespace),
                _ => false,
            };
            // `Action Input: ```yaml` (or a final answer's text ending in one): a fence the
            // line leaves open.
            if matches!(open, Some(Label::ActionInput | Label::FinalAnswer))
                && memchr::memchr(b'`', rest).is_some()
                && memchr::memmem::find_iter(rest, b"```").count() % 2 == 1
            {
                fenced = Some(last_fence_ticks(rest));
            }
        } else {
            if wrapper_close == Some(line_start) {
                if let Some(Some(section)) = open.and_then(|l| found.slot(l)) {
                    section.end = line_start;
                }
                found.end = line_start;
                break;
            }
            // Looked at only where a fence may open: other lines pay nothing for fences.
            if fence_may_open && fence_at(bytes, line_start) {
                fenced = Some(fence_ticks(bytes, line_start));
            } else if fence_may_open
                && open != Some(Label::FinalAnswer)
                && !bytes[line_start..line_end]
                    .iter()
                    .all(u8::is_ascii_whitespace)
            {
                // Past the start of an input, a fence line closes the step's wrapping fence;
                // in `Action: FINAL_ANSWER ...`'s text, as in a final answer, one opens
                // anywhere.
                fence_may_open = open == Some(Label::Action)
                    && found.action.is_some_and(|action| {
                        *final_action.get_or_insert_with(|| names_final_answer(text, action))
                    });
            }
            if lone_close {
                if let Some(close) = reasoning_close_at(bytes, line_start) {
                    found.reasoning_end = Some(close);
                    return found;
                }
            }
        }
        match line_break_at {
            Some(at) => line_start = at + 1,
            None => break,
        }
    }
    if lone_close && found.end < text.len() {
        found.reasoning_end = reasoning_close_from(bytes, found.end);
    }
    found
}

/// A closing reasoning tag, `</think>` or `</thinking>` (ASCII case ignored), starting the
/// line at `line_start` (after blanks): its start and the index after it. Chat templates of
/// reasoning models (DeepSeek-R1's distills, QwQ) put the opening tag in the prompt, so the
/// reply opens with the reasoning and only closes it. A tag within a line is text (an answer
/// may be about tags).
fn reasoning_close_at(bytes: &[u8], line_start: usize) -> Option<(usize, usize)> {
    let lead = skip_line_lead(bytes, line_start);
    if bytes.get(lead) != Some(&b'<') {
        return None;
    }
    closing_tag_at(bytes, lead).map(|after| (lead, after))
}

/// The index after a closing reasoning tag at `at`, `</think>` or `</thinking>` (ASCII case
/// ignored: a model may open with one and close with the other).
fn closing_tag_at(bytes: &[u8], at: usize) -> Option<usize> {
    [b"</think>" as &[u8], b"</thinking>"]
        .into_iter()
        .find_map(|tag| eat_word(bytes, at, tag))
}

/// The first line from `line_start` on that a closing reasoning tag starts (see
/// [`reasoning_close_at`]).
#[cold]
#[inline(never)]
fn reasoning_close_from(bytes: &[u8], mut line_start: usize) -> Option<(usize, usize)> {
    loop {
        if let Some(close) = reasoning_close_at(bytes, line_start) {
            return Some(close);
        }
        line_start += line_break(bytes.get(line_start..)?)? + 1;
    }
}

/// The rest of the line from `at`, without its line break.
fn line_rest(bytes: &[u8], at: usize) -> &[u8] {
    let rest = bytes.get(at..).unwrap_or_default();
    &rest[..line_break(rest).unwrap_or(rest.len())]
}

/// The backticks opening the fence line at `line_start`.
fn fence_ticks(bytes: &[u8], line_start: usize) -> usize {
    let lead = skip_line_lead(bytes, line_start);
    bytes
        .get(lead..)
        .map_or(0, |line| line.iter().take_while(|&&b| b == b'`').count())
}

/// The start of the fence line that closes the wrapping fence opened at `open_at`, looked
/// for after `from`: the text's last fence line, when it is bare (nothing after its
/// backticks: one naming a language opens a fence), at least as long as the opening one
/// (a shorter one cannot close it, as in Markdown), and not the close of a block of the
/// step's own (the fence lines before it come in pairs).
fn closing_fence(bytes: &[u8], open_at: usize, from: usize) -> Option<usize> {
    let mut last = None;
    // Fence lines after `from`: the step's own (an input's, an answer's) come in pairs, so
    // a last one after an odd number of them closes the step's own block, not the wrapper
    // (which the model then left open).
    let mut fences = 0usize;
    let mut at = from;
    loop {
        if fence_at(bytes, at) {
            last = Some(at);
            fences += 1;
        }
        match line_break(bytes.get(at..).unwrap_or_default()) {
            Some(offset) => at += offset + 1,
            None => break,
        }
    }
    let close = last?;
    let ticks = fence_ticks(bytes, close);
    let line = bytes
        .get(skip_line_lead(bytes, close)..)
        .unwrap_or_default();
    let line_end = line_break(line).unwrap_or(line.len());
    let bare = line
        .get(ticks..line_end)
        .is_some_and(|rest| rest.iter().all(u8::is_ascii_whitespace));
    (bare && ticks >= fence_ticks(bytes, open_at) && fences % 2 == 1).then_some(close)
}

/// The start of the fence line that the lines from `from` (a line's start) to `end` leave
/// open, if they leave one open (an odd number of fence lines).
fn open_fence_between(bytes: &[u8], from: usize, end: usize) -> Option<usize> {
    let mut open = None;
    let mut at = from;
    while at < end {
        if fence_at(bytes, at) {
            open = if open.is_some() { None } else { Some(at) };
        }
        match line_break(bytes.get(at..end).unwrap_or_default()) {
            Some(offset) => at += offset + 1,
            None => break,
        }
    }
    open
}

/// The fence line that the lines of `thought` after its label's line (up to `end`, the next
/// label's line) leave open, when only blank lines follow it: the fence the rest of the step
/// is wrapped in. (One with text after it is the thought's own: code it shows, left open.)
/// Only a thought holding backticks is read line by line.
#[inline]
fn fence_opened_in_thought(bytes: &[u8], thought: Section, end: usize) -> Option<usize> {
    let after_label = bytes.get(thought.start..end)?;
    // A backtick first: most thoughts hold none, and one byte is found faster (no searcher
    // to build for a call).
    memchr::memchr(b'`', after_label)?;
    memchr::memmem::find(after_label, b"```")?;
    let next_line = thought.start + line_break(after_label)? + 1;
    let open_at = open_fence_between(bytes, next_line, end)?;
    let after_fence = open_at + line_break(bytes.get(open_at..end)?)? + 1;
    bytes
        .get(after_fence..end)?
        .iter()
        .all(u8::is_ascii_whitespace)
        .then_some(open_at)
}

/// Whether the line at `line_start` is a code fence line: blanks, then three backticks.
fn fence_at(bytes: &[u8], line_start: usize) -> bool {
    bytes
        .get(skip_line_lead(bytes, line_start)..)
        .is_some_and(|line| line.starts_with(b"```"))
}

/// Whether the line at `line_start` closes a fence of `ticks` backticks: blanks, at least
/// that many backticks, then only blanks (a line naming a language, or of fewer backticks,
/// is the block's own, as in Markdown).
fn fence_closes(bytes: &[u8], line_start: usize, ticks: usize) -> bool {
    let run = fence_ticks(bytes, line_start);
    let after = skip_line_lead(bytes, line_start) + run;
    let rest = bytes.get(after..).unwrap_or_default();
    let line_end = line_break(rest).unwrap_or(rest.len());
    run >= ticks && rest[..line_end].iter().all(u8::is_ascii_whitespace)
}

/// The backticks of the last fence on a line (at least three: it holds one).
fn last_fence_ticks(line: &[u8]) -> usize {
    let Some(at) = memchr::memmem::rfind(line, b"```") else {
        return 3;
    };
    let before = line[..at].iter().rev().take_while(|&&b| b == b'`').count();
    let after = line[at..].iter().take_while(|&&b| b == b'`').count();
    before + after
}

/// The index of the first line break in `bytes`: `\n`, or `\r`, which ends a line on its
/// own too (old Mac line ends, a terminal's output), as in Python's `str.splitlines`; a
/// `\r\n` is then a line end and an empty line, which holds no label.
fn line_break(bytes: &[u8]) -> Option<usize> {
    memchr::memchr2(b'\n', b'\r', bytes)
}

/// Whether a line after the one at `line_start` is an `Action Input:` or `Final Answer:`
/// label, before any `Action:` label (whose input would be its own) or `Observation:` label
/// (which ends the step: a line after it is not read).
fn input_label_ahead(bytes: &[u8], line_start: usize) -> bool {
    let mut at = line_start;
    while let Some(offset) = line_break(bytes.get(at..).unwrap_or_default()) {
        at += offset + 1;
        match label_at(bytes, at) {
            Some((Label::ActionInput | Label::FinalAnswer, ..)) => return true,
            Some((Label::Action | Label::Observation, ..)) => return false,
            _ => {}
        }
    }
    false
}

/// Whether the `Action:` section names the `FINAL_ANSWER` tool.
fn names_final_answer(text: &str, action: Section) -> bool {
    split_action(action.text(text).trim())
        .tool
        .eq_ignore_ascii_case(FINAL_ANSWER_TOOL)
}

/// Whether the `Action:` section holds an input after the tool's name.
fn has_inline_input(text: &str, action: Section) -> bool {
    !split_action(action.text(text).trim()).input.is_empty()
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

/// Returns the end (exclusive) of the bracketed value starting at `bytes[0]` (`open`),
/// honouring JSON strings and escapes; `None` when it never closes.
fn matching_close_of(bytes: &[u8], open: &[u8], close: &[u8]) -> Option<usize> {
    let mut depth: usize = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        if b == b'"' {
            i = skip_string(bytes, i)?;
        } else if open.contains(&b) {
            depth += 1;
        } else if close.contains(&b) {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// Returns the end (exclusive) of the bracketed JSON value starting at `bytes[0]`
/// (`{` or `[`), honouring strings and escapes; `None` when it never closes.
fn matching_close(bytes: &[u8]) -> Option<usize> {
    matching_close_of(bytes, b"{[", b"}]")
}

/// Returns the end (exclusive) of the JSON string literal starting at `bytes[0]` (`"`).
fn string_close(bytes: &[u8]) -> Option<usize> {
    skip_string(bytes, 1)
}

/// Removes a surrounding Markdown code fence, if there is one: a run of three or more
/// backticks, an info string (e.g. `json`) on its line, the value, and a closing fence as
/// Markdown reads it: a line of at least as many backticks and nothing else (a run of
/// backticks inside a line is the value's own: code writing a fence, Markdown showing one),
/// or, when the value is JSON, any such run after it (the close written on the value's last
/// line). A fence left open runs to the end. On one line (```` ```ls -la``` ````), the text
/// between the runs, less a leading info word when a JSON value follows it.
fn strip_fence(text: &str) -> &str {
    let ticks = text.bytes().take_while(|&b| b == b'`').count();
    if ticks < 3 {
        return text;
    }
    let rest = &text[ticks..];
    let Some(nl) = line_break(rest.as_bytes()) else {
        return one_line_fence(rest, ticks);
    };
    let body = &rest[nl + 1..];
    let value = body.trim_start();
    let value_end = match value.as_bytes().first() {
        Some(b'{' | b'[') => matching_close(value.as_bytes()),
        Some(b'"') => string_close(value.as_bytes()),
        _ => None,
    };
    let close = match value_end {
        // An index after an ASCII byte (a closing bracket or quote): a char boundary.
        Some(end) => {
            let from = body.len() - value.len() + end;
            backtick_run(&body.as_bytes()[from..], ticks).map(|at| from + at)
        }
        None => closing_fence_line(body.as_bytes(), ticks),
    };
    close.map_or(body, |close| &body[..close]).trim()
}

/// The start of the first run of at least `ticks` backticks in `bytes`.
fn backtick_run(bytes: &[u8], ticks: usize) -> Option<usize> {
    let mut at = 0;
    while let Some(offset) = bytes.get(at..).and_then(|b| memchr::memchr(b'`', b)) {
        let start = at + offset;
        let run = bytes[start..].iter().take_while(|&&b| b == b'`').count();
        if run >= ticks {
            return Some(start);
        }
        at = start + run;
    }
    None
}

/// The start of the first line of `bytes` that closes a fence of `ticks` backticks (see
/// [`fence_closes`]).
fn closing_fence_line(bytes: &[u8], ticks: usize) -> Option<usize> {
    let mut line_start = 0;
    loop {
        if fence_closes(bytes, line_start, ticks) {
            return Some(line_start);
        }
        line_start += line_break(bytes.get(line_start..)?)? + 1;
    }
}

/// [`strip_fence`] of a fence on one line, `rest` following its opening `ticks` backticks.
/// Closed by a run of at least as many backticks that ends the line, it is code: the text
/// between (so `ls -la` keeps its first word), less an info word (`json`) a JSON value
/// follows. Left open, the line is a fence's opening one, its text an info string: the JSON
/// value after an info word, if there is one, else nothing.
fn one_line_fence(rest: &str, ticks: usize) -> &str {
    let trimmed = rest.trim_end();
    let run = trimmed.bytes().rev().take_while(|&b| b == b'`').count();
    let closed = run >= ticks;
    let inner = if closed {
        &trimmed[..trimmed.len() - run]
    } else {
        trimmed
    };
    let word = inner.len()
        - inner
            .trim_start_matches(|c: char| c.is_ascii_alphanumeric())
            .len();
    let after = inner[word..].trim_start();
    let tagged = word > 0 && after.len() < inner.len() - word;
    if (tagged || !closed) && after.starts_with(['{', '[', '"']) {
        after.trim()
    } else if closed {
        inner.trim()
    } else {
        ""
    }
}

/// Whether `b` may be part of a tool name in the seed form (`[A-Za-z0-9_-]`).
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The length of the tool name at the start of `body` in the seed form: a run of
/// `[A-Za-z0-9_-]`, with dots between two such characters (`github.search_issues`; a dot
/// that ends a sentence is not part of the name).
fn name_len(body: &[u8]) -> usize {
    let mut end = 0;
    while let Some(&b) = body.get(end) {
        let joins = b == b'.' && end > 0 && body.get(end + 1).is_some_and(|&c| is_name_byte(c));
        if !(is_name_byte(b) || joins) {
            break;
        }
        end += 1;
    }
    end
}

/// The seed-form tool name at the start of `body` (see [`name_len`]), in backticks or not
/// (`` `search` ``, as a model writing Markdown quotes a name), and the text after it.
fn seed_name(body: &str) -> (&str, &str) {
    if let Some(quoted) = body.strip_prefix('`') {
        let len = name_len(quoted.as_bytes());
        if len > 0 {
            if let Some(rest) = quoted[len..].strip_prefix('`') {
                return (&quoted[..len], rest);
            }
        }
    }
    body.split_at(name_len(body.as_bytes()))
}

/// The text of an `Action:` section, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ActionText<'a> {
    /// The tool name (empty when there is none).
    tool: &'a str,
    /// The text after the seed-form name (and its backticks), whatever form was read.
    after_name: &'a str,
    /// The input written in the section, trimmed.
    input: &'a str,
    /// Whether the input follows an `Action Input:` label on the action's line (a later
    /// `Action Input:` line then gives no input).
    labelled: bool,
}

/// The first line of `text`.
fn first_line(text: &str) -> &str {
    line_break(text.as_bytes()).map_or(text, |nl| &text[..nl])
}

/// A tool name as LangChain reads it: all of `text`, trimmed, without a trailing `:`, `=`,
/// `,` or `;` (`Action: search:` then `Action Input: cats` calls `search`, and so does
/// `Action: search, Action Input: cats`), nor the backticks of a name quoted whole
/// (`` `Search Tool` ``). A trailing `.` stays: names such as `v1.` may end with one.
fn whole_name(text: &str) -> &str {
    let text = text.trim();
    let text = text
        .strip_suffix([':', '=', ',', ';'])
        .map_or(text, str::trim_end);
    match text.strip_prefix('`').and_then(|t| t.strip_suffix('`')) {
        Some(quoted) if !quoted.trim().is_empty() && !quoted.contains('`') => quoted.trim(),
        _ => text,
    }
}

/// If `bytes[at..]` starts with `word` (exactly, case included), returns the index after it.
fn eat_exact(bytes: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    let end = at.checked_add(word.len())?;
    (bytes.get(at..end)? == word).then_some(end)
}

/// Whether the action's line may be read whole as the tool name when an `Action Input:`
/// label follows (LangChain's `Action: Search Tool`): not when the seed-form name `tool` is
/// `FINAL_ANSWER`, nor when `rest`, the text after it, starts an input (`{`, a code fence,
/// `:` or `=`; or `(`, `[` or `"` whose value is all the line holds): the seed form is read
/// then (`Action: double {"n": 21}`, `Action: search("cats")`). A value with more text
/// after it on the line is part of the name (`Action: calculator (python) Action Input:`).
fn may_be_whole_name(tool: &str, rest: &str) -> bool {
    let rest = rest.trim_start();
    if tool.eq_ignore_ascii_case(FINAL_ANSWER_TOOL)
        || rest.starts_with(['{', ':', '='])
        || rest.starts_with("```")
    {
        return false;
    }
    let bytes = rest.as_bytes();
    let close = match bytes.first() {
        Some(b'(') => matching_close_of(bytes, b"(", b")"),
        Some(b'[') => matching_close(bytes),
        Some(b'"') => string_close(bytes),
        _ => return true,
    };
    close.is_none_or(|end| {
        let after = &bytes[end..];
        let line_end = line_break(after).unwrap_or(after.len());
        !after[..line_end].iter().all(u8::is_ascii_whitespace)
    })
}

/// Where an `Action Input:` label stands on the action's line `line`, at its start or after
/// a blank: its start and the index after its colon. Written as LangChain matches it (case
/// included: the words `action input:` in prose are not a label). JSON strings and
/// bracketed values on the line are stepped over, so that the text of an input is never
/// taken for a label (nor is anything after one that does not close, as after a backtick
/// that opens code); a tool name may hold other characters (`Search Tool (beta)`).
fn input_label_on(line: &str) -> Option<(usize, usize)> {
    let bytes = line.as_bytes();
    // Most action lines have no colon at all: they are settled with one fast search (for an
    // ASCII colon or the last byte of a full-width one).
    memchr::memchr2(b':', FULL_WIDTH_COLON[2], bytes)?;
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        at = match b {
            b'{' | b'[' => at + matching_close(&bytes[at..])?,
            b'"' => skip_string(bytes, at + 1)?,
            // Code in backticks closing on the line (a quoted tool name) is stepped over.
            b'`' => at + 2 + memchr::memchr(b'`', bytes.get(at + 1..)?)?,
            b'A' | b'*' => match input_label_at(line, at) {
                Some(label) => return Some(label),
                None => at + 1,
            },
            _ => at + 1,
        };
    }
    None
}

/// The `Action Input:` label starting at `line[at]` (at the line's start, or after a blank:
/// a tab, a space, a Unicode one too, as `Search Tool\u{3000}Action Input:`, which LangChain
/// reads as a label): its start and the index after its colon.
fn input_label_at(line: &str, at: usize) -> Option<(usize, usize)> {
    let bytes = line.as_bytes();
    let after_blank = match at.checked_sub(1).and_then(|before| bytes.get(before)) {
        None => true,
        Some(b' ' | b'\t') => true,
        Some(&byte) if byte.is_ascii() => false,
        // A Unicode space: trimmed off the tool name as an ASCII one is.
        Some(_) => line
            .get(..at)
            .and_then(|before| before.chars().next_back())
            .is_some_and(char::is_whitespace),
    };
    if !after_blank {
        return None;
    }
    // In asterisks as on a line of its own (`**Action Input:** cats`).
    let emphasis = match bytes.get(at) {
        Some(b'*') => emphasis_at(bytes, at),
        _ => b"",
    };
    let i = skip_number(bytes, eat_exact(bytes, at + emphasis.len(), b"Action")?);
    let k = skip_number(bytes, eat_exact(bytes, skip_blanks(bytes, i), b"Input")?);
    let after = match colon_after(bytes, k) {
        Some(colon) if emphasis.is_empty() => colon,
        Some(colon) => eat_exact(bytes, colon, emphasis)?,
        None => colon_after(bytes, eat_exact(bytes, k, emphasis)?)?,
    };
    Some((at, after))
}

/// Splits the (trimmed) content of an `Action:` section into the tool name and its input:
/// LangChain's `name Action Input: input` when the label is on the action's line (and
/// [`may_be_whole_name`] allows it), else the seed form.
fn split_action(body: &str) -> ActionText<'_> {
    let (tool, rest) = seed_name(body);
    if let Some((label, after)) = may_be_whole_name(tool, rest)
        .then(|| input_label_on(first_line(body)))
        .flatten()
    {
        return ActionText {
            tool: whole_name(&body[..label]),
            after_name: rest,
            input: body[after..].trim(),
            labelled: true,
        };
    }
    if let Some(input) = call_arguments(rest) {
        return ActionText {
            tool,
            after_name: rest,
            input: input.trim(),
            labelled: false,
        };
    }
    // An optional separator: `FINAL_ANSWER: 42`, `tool = {...}`, `tool, {...}`.
    let input = rest.trim_start();
    let input = input.strip_prefix(SEPARATORS).unwrap_or(input).trim();
    // A bare name, then a blank line: what follows is a paragraph of its own, the model's
    // chatter ("I'll wait for the result."), not the call's input, unless it opens as an
    // input does (JSON, a quoted string, call parentheses, a code fence).
    let chatter = !tool.eq_ignore_ascii_case(FINAL_ANSWER_TOOL)
        && blank_line_after_name(rest)
        && !input.starts_with(['{', '[', '(', '"'])
        && !input.starts_with("```");
    ActionText {
        tool,
        after_name: rest,
        input: if chatter { "" } else { input },
        labelled: false,
    }
}

/// Whether `rest`, the text after a tool name, leaves the rest of the name's line blank,
/// and then a whole line blank too (a line ends at `\n`, `\r\n` or a lone `\r`).
fn blank_line_after_name(rest: &str) -> bool {
    let next_line = |text: &str| -> Option<usize> {
        let at = line_break(text.as_bytes())?;
        let crlf = text.as_bytes().get(at..at + 2) == Some(b"\r\n");
        Some(at + if crlf { 2 } else { 1 })
    };
    let Some(second) = next_line(rest) else {
        return false;
    };
    let (first, after) = rest.split_at(second);
    first.trim().is_empty()
        && next_line(after).is_some_and(|third| after[..third].trim().is_empty())
}

/// The arguments of call syntax: `rest` (what follows a tool name) starts with `(...)`, or
/// with `[...]` that is not JSON, as in the ReAct paper (`Search[Colorado orogeny]`;
/// `tool[1, 2]` is the JSON array, and so is anything opening with `[[` or `[{`), nothing
/// after the closing bracket on its line (later lines are chatter, ignored as after a JSON
/// input).
fn call_arguments(rest: &str) -> Option<&str> {
    bracketed_arguments(rest).or_else(|| literal_call_arguments(rest))
}

/// [`call_arguments`] found by matching the brackets (the strings in them JSON's).
fn bracketed_arguments(rest: &str) -> Option<&str> {
    let (open, close): (&[u8], &[u8]) = match rest.as_bytes().first() {
        Some(b'(') => (b"(", b")"),
        Some(b'[') => (b"[", b"]"),
        _ => return None,
    };
    let close = matching_close_of(rest.as_bytes(), open, close)?;
    if !blank_to_line_end(rest.get(close..)?) {
        return None;
    }
    if open == b"[" && !react_paper_brackets(rest.get(..close)?) {
        return None;
    }
    // Both brackets are ASCII: their byte offsets are character boundaries.
    rest.get(1..close - 1)
}

/// Whether `text` holds nothing but blanks up to its first line break.
fn blank_to_line_end(text: &str) -> bool {
    let line_end = line_break(text.as_bytes()).unwrap_or(text.len());
    text.get(..line_end)
        .is_some_and(|line| line.trim().is_empty())
}

/// [`call_arguments`] of a call whose arguments are written as Python writes them, which
/// matching the brackets misses: a `)` or `"` in a single-quoted string
/// (`note({'text': '1) wash'})`, `search(query='1) wash')`) closed the call or opened a
/// string. Its end is found by a scan that knows those strings.
#[cold]
#[inline(never)]
fn literal_call_arguments(rest: &str) -> Option<&str> {
    let opening = rest.strip_prefix('(')?.trim_start();
    let literal = opening.starts_with(['{', '[', '\'', '"']);
    if !literal && !opens_python_arguments(opening) {
        return None; // plain words may hold an apostrophe (`search(what's new)`)
    }
    // After a keyword or a number, prose may follow: an apostrophe in it opens no string.
    let close = python_close(rest, !literal)?;
    if !blank_to_line_end(rest.get(close..)?) {
        return None;
    }
    rest.get(1..close - 1)
}

/// Whether call arguments `args` open as Python's do rather than as plain words: with a
/// keyword (`query=`), or with a number, a boolean or None followed by another argument
/// (`3, `).
fn opens_python_arguments(args: &str) -> bool {
    let word_end = args
        .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '+')))
        .unwrap_or(args.len());
    let (word, after) = args.split_at(word_end);
    let after = after.trim_start();
    let keyword = word.starts_with(|c: char| c.is_alphabetic() || c == '_')
        && word.chars().all(|c| c.is_alphanumeric() || c == '_')
        && after.starts_with('=')
        && !after.starts_with("==");
    let first_value = (matches!(word, "True" | "False" | "None" | "true" | "false" | "null")
        || word.parse::<f64>().is_ok_and(f64::is_finite))
        && after.starts_with(',');
    keyword || first_value
}

/// The end (exclusive) of the bracketed text opening at `text[0]` (`(`, `[` or `{`), its
/// strings in single quotes as well as double, read as [`relaxed_json`] reads them. With
/// `values_only`, a quote opens a string only where a value starts (see [`starts_value`]);
/// elsewhere (`O'Brien`) the text is no Python's, and there is no end.
fn python_close(text: &str, values_only: bool) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth: usize = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' | b'\'' => {
                if values_only && !starts_value(bytes.get(..i)?) {
                    return None;
                }
                i = python_string(text, i)?.1;
                if values_only && !ends_value(bytes.get(i..)?) {
                    return None;
                }
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether a string opening after `before` starts a value: after an opening bracket, a
/// comma, a colon, `=` or `+`, or another string (`'a' 'b'`), with blanks, then a string
/// prefix (`r`, `b`, `f`, `u`, two at most), between.
fn starts_value(before: &[u8]) -> bool {
    let before = before.trim_ascii_end();
    let prefix = before
        .iter()
        .rev()
        .take_while(|b| b"rRbBuUfF".contains(b))
        .count();
    let opener = before
        .get(..before.len() - prefix)
        .and_then(|rest| rest.trim_ascii_end().last());
    prefix <= 2 && opener.is_some_and(|b| b"([{,:=+'\"".contains(b))
}

/// Whether a string closing before `after` ends a value: blanks, then a comma, a closing
/// bracket, a colon, an operator (`=`, `+`, `%`, `*`), a method or an index (`.`, `[`), a
/// comment or a line continuation (`#`, `\`), or another string (`'a' 'b'`, its prefix
/// letters first). Prose's apostrophes pair up otherwise (`C++'s) and (Rust's`).
fn ends_value(after: &[u8]) -> bool {
    let after = after.trim_ascii_start();
    let prefix = after.iter().take_while(|b| b"rRbBuUfF".contains(b)).count();
    match after.get(prefix) {
        Some(b'\'' | b'"') => prefix <= 2,
        Some(b) => prefix == 0 && b",)]}:=+%*.[#\\".contains(b),
        None => prefix == 0,
    }
}

/// Whether the bracketed text `bracketed` (`[...]` right after a tool name) holds the
/// ReAct paper's plain argument (`[Colorado orogeny]`) rather than a JSON array: it is not
/// JSON, and does not open with a nested array or object (which JSON too deep for serde_json
/// may still be). Only runs for a `[` right after the name, which the common forms never
/// write.
#[cold]
#[inline(never)]
fn react_paper_brackets(bracketed: &str) -> bool {
    let inner = bracketed.get(1..).unwrap_or_default().trim_start();
    !inner.starts_with(['[', '{']) && serde_json::from_str::<de::IgnoredAny>(bracketed).is_err()
}

/// A final answer as written (trimmed); decoded when it is exactly one JSON string literal.
fn answer_of(text: &str) -> Cow<'_, str> {
    let text = text.trim();
    if text.starts_with('"') && string_close(text.as_bytes()) == Some(text.len()) {
        if let Ok(decoded) = serde_json::from_str::<String>(text) {
            return Cow::Owned(decoded);
        }
    }
    Cow::Borrowed(text)
}

/// The last `Final Answer:` written mid-line (LangChain's marker, so capitalized, and not
/// the end of a word): its start and the index after its colon.
fn final_answer_marker(text: &str) -> Option<(usize, usize)> {
    const MARKER: &[u8] = b"Final Answer";
    let bytes = text.as_bytes();
    memchr::memrchr_iter(b'F', bytes).find_map(|at| {
        let word_start = !text
            .get(..at)
            .and_then(|before| before.chars().next_back())
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let after = at + MARKER.len();
        if !word_start || bytes.get(at..after) != Some(MARKER) {
            return None;
        }
        Some((at, colon_after(bytes, after)?))
    })
}

/// Where the asterisks (up to three) right before the `Final Answer:` marker at `marker`
/// start: `marker` when there are none.
fn stars_before(text: &str, marker: usize) -> usize {
    text[..marker]
        .trim_end_matches('*')
        .len()
        .max(marker.saturating_sub(3))
}

/// The answer after a `Final Answer:` marker written in emphasis (`stars` before it): its
/// asterisks closing after the colon (`**Final Answer:** 42`) or later on its line, as
/// Markdown closes emphasis (after a non-blank, before a non-word character: `**Final
/// Answer: 42**.`, not the `**` of `2**3`), are not its text.
fn emphasized_answer<'a>(text: &'a str, start: usize, stars: &str) -> Cow<'a, str> {
    let answer = text.get(start..).unwrap_or_default();
    if stars.is_empty() {
        return Cow::Borrowed(answer);
    }
    if let Some(rest) = answer.strip_prefix(stars) {
        return Cow::Borrowed(rest);
    }
    let line = line_rest(text.as_bytes(), start);
    let closing = memchr::memmem::find_iter(line, stars.as_bytes()).find(|&at| {
        let before = line[..at].last();
        let after = line.get(at + stars.len());
        before.is_some_and(|b| !b.is_ascii_whitespace() && *b != b'*')
            && after.is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'*' && *b != b'_')
    });
    match closing {
        Some(at) => without(
            text,
            start,
            (start + at, start + at + stars.len()),
            text.len(),
        ),
        None => Cow::Borrowed(answer),
    }
}

/// Parses one ReAct step.
///
/// A reasoning model's `<think>...</think>` (or `<thinking>...</thinking>`) block at the
/// start of the text is not read for labels (it drafts actions and answers the model may
/// not take); the step is read from the text after it, and the block's content is the
/// thought when that text has none. A block that does not close holds no step: the reply
/// was cut inside it (by a stop sequence the reasoning wrote, say). So does a closing tag
/// starting a line of a text with no such opening block: all before it is the reasoning
/// (the opening tag was in the prompt, as some chat templates put it). A step wrapped whole
/// in a code fence ends at the fence that closes it.
///
/// # Errors
/// [`CoreError::Parse`] when the text has neither an action nor a final answer, has both
/// (unless the action says there is none: `Action: None`), names no tool, gives a tool no
/// input, or opens with a reasoning block that does not close.
pub fn parse(text: &str) -> CoreResult<Step<'_>> {
    // Only a text that starts with `<` is looked at further: no cost for the others.
    match leading_reasoning(text) {
        Some((reasoning, Some(after))) => return parse_after_reasoning(text, reasoning, after),
        Some((_, None)) => {
            return Err(CoreError::Parse {
                message: "the reasoning block that opens the reply never closes (no </think>): \
                          the reply holds no step after it"
                    .into(),
                position: Some(text.len()),
            })
        }
        None => {}
    }
    let found = sections(text, true);
    if let Some((tag, after)) = found.reasoning_end {
        return parse_after_reasoning(text, text.get(..tag).unwrap_or_default(), after);
    }
    step_from(text, &found)
}

/// The reasoning block opening `text` (after whitespace), `<think>` or `<thinking>`
/// (ASCII case ignored): its content, and the index after its closing tag (`None` when it
/// does not close: its content then runs to the text's end).
#[inline]
fn leading_reasoning(text: &str) -> Option<(&str, Option<usize>)> {
    let lead_byte = text.as_bytes().first().copied().unwrap_or_default();
    if !(lead_byte == b'<' || lead_byte.is_ascii_whitespace()) {
        return None;
    }
    let rest = text.trim_start();
    if !rest.starts_with('<') {
        return None;
    }
    let bytes = text.as_bytes();
    let lead = text.len() - rest.len();
    [b"<think>" as &[u8], b"<thinking>"]
        .into_iter()
        .find_map(|open| {
            let start = eat_word(bytes, lead, open)?;
            // Tags are ASCII: these offsets are character boundaries.
            match first_reasoning_close(bytes, start) {
                Some((end, after)) => Some((text.get(start..end)?, Some(after))),
                None => Some((text.get(start..)?, None)),
            }
        })
}

/// The first closing reasoning tag at or after `from`, anywhere in a line (see
/// [`closing_tag_at`]): its start and the index after it.
fn first_reasoning_close(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    while let Some(offset) = memchr::memmem::find(bytes.get(at..)?, b"</") {
        let tag = at + offset;
        if let Some(after) = closing_tag_at(bytes, tag) {
            return Some((tag, after));
        }
        at = tag + 2;
    }
    None
}

/// Parses the step written after a leading reasoning block (see [`parse`]): offsets into
/// the whole text.
#[cold]
#[inline(never)]
fn parse_after_reasoning<'a>(
    text: &'a str,
    reasoning: &'a str,
    after: usize,
) -> CoreResult<Step<'a>> {
    let rest = text.get(after..).unwrap_or_default();
    let mut step = step_from(rest, &sections(rest, false)).map_err(|err| match err {
        CoreError::Parse { message, position } => CoreError::Parse {
            message,
            position: position.map(|at| at + after),
        },
        other => other,
    })?;
    step.end += after;
    if step.thought.is_empty() {
        step.thought = reasoning.trim();
    }
    Ok(step)
}

/// Whether `name` (a whole action line, or its input) says that no tool is called: `None`,
/// `N/A`, `null`, `No action`, `No tool` (case ignored, a final `.` too), as models write
/// before a final answer.
fn names_no_action(name: &str) -> bool {
    let name = name.trim();
    let name = name.strip_suffix('.').unwrap_or(name).trim_end();
    ["none", "n/a", "null", "no action", "no tool"]
        .into_iter()
        .any(|word| name.eq_ignore_ascii_case(word))
}

/// Whether `tool` names the final answer: `FINAL_ANSWER`, or `Final Answer` as models write
/// it when they take the answer for a tool (ASCII case ignored).
fn is_final_tool(tool: &str) -> bool {
    tool.eq_ignore_ascii_case(FINAL_ANSWER_TOOL) || tool.eq_ignore_ascii_case("final answer")
}

/// When the action's text starts with the words `Final Answer` (ASCII case ignored, not
/// followed by a name character): the text after them (`Action: Final Answer: Paris`).
fn spelled_final_answer(body: &str) -> Option<&str> {
    let bytes = body.as_bytes();
    if !matches!(bytes.first(), Some(b'F' | b'f')) {
        return None;
    }
    let after = eat_word(bytes, 0, b"final answer")?;
    if bytes.get(after).is_some_and(|&b| is_name_byte(b)) {
        return None;
    }
    body.get(after..)
}

/// Skips ASCII whitespace, line breaks included.
fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// The JSON blob of LangChain's JSON agents (`{"action": "search", "action_input": ...}`,
/// in a code fence or not) that the action's text `body` is: the tool named by `action` (a
/// non-empty string, its quotes removed) and the text of `action_input` (`None` when the
/// blob has none). `None` when `body` is no such object.
fn json_blob(body: &str) -> Option<(&str, Option<&str>)> {
    let blob = strip_fence(body);
    let bytes = blob.as_bytes();
    if bytes.first() != Some(&b'{') {
        return None;
    }
    let close = matching_close(bytes)?;
    let (mut action, mut input) = (None, None);
    let mut at = 1;
    loop {
        at = skip_whitespace(bytes, at);
        match bytes.get(at)? {
            b'}' if at + 1 == close => break,
            b',' => {
                at += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = at + string_close(bytes.get(at..)?)?;
        let key = blob.get(at + 1..key_end - 1)?;
        at = skip_whitespace(bytes, key_end);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = skip_whitespace(bytes, at + 1);
        let value = bytes.get(at..close)?;
        let len = match value.first()? {
            b'{' | b'[' => matching_close(value)?,
            b'"' => string_close(value)?,
            _ => value
                .iter()
                .position(|&b| b == b',' || b == b'}' || b.is_ascii_whitespace())
                .unwrap_or(value.len()),
        };
        // Every end found above is after an ASCII byte: a character boundary.
        let value = blob.get(at..at + len)?;
        match key {
            "action" => action = Some(value),
            "action_input" => input = Some(value),
            _ => {}
        }
        at += len;
    }
    let tool = action?.strip_prefix('"')?.strip_suffix('"')?.trim();
    (!tool.is_empty()).then_some((tool, input))
}

/// Reads the action's text `body` as a LangChain JSON blob (see [`json_blob`]): off the
/// common path, as it only runs when `body` names no tool in the other forms.
#[cold]
#[inline(never)]
fn json_blob_step<'a>(body: &'a str, thought: &'a str, end: usize) -> Option<Step<'a>> {
    let (tool, input) = json_blob(body)?;
    if is_final_tool(tool) {
        let answer = answer_of(input.unwrap_or_default());
        return (!answer.is_empty()).then_some(Step {
            thought,
            action: None,
            action_input: None,
            final_answer: Some(answer),
            end,
        });
    }
    Some(Step {
        thought,
        action: Some(tool),
        action_input: Some(input.map_or_else(InputText::no_arguments, InputText::new)),
        final_answer: None,
        end,
    })
}

/// The answer written after a `Final Answer:` label whose colon ends at `start`, trimmed.
///
/// # Errors
/// [`CoreError::Parse`] when it is empty, as for `FINAL_ANSWER` with nothing after it: the
/// reply stopped where its answer was to start.
fn labelled_answer(answer: Cow<'_, str>, start: usize) -> CoreResult<Cow<'_, str>> {
    let answer = trimmed(answer);
    if answer.is_empty() {
        return Err(CoreError::Parse {
            message: "expected the final answer after 'Final Answer:'".into(),
            position: Some(start),
        });
    }
    Ok(answer)
}

/// `text` trimmed, borrowed as it was.
fn trimmed(text: Cow<'_, str>) -> Cow<'_, str> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(text.trim()),
        Cow::Owned(text) if text.trim().len() == text.len() => Cow::Owned(text),
        Cow::Owned(text) => Cow::Owned(text.trim().to_owned()),
    }
}

/// Parses the ReAct step of `text` (with no reasoning block in it) from its sections.
#[inline]
fn step_from<'a>(text: &'a str, found: &Sections) -> CoreResult<Step<'a>> {
    let content = |s: Section| s.text(text).trim();
    let end = if found.end < text.len() {
        text[..found.end].trim_end().len()
    } else {
        text.len()
    };

    let thought = match found.thought {
        Some(s) => content(s),
        None => text[..found.preamble_end].trim(),
    };

    let Some(action) = found.action else {
        if let Some(s) = found.final_answer {
            // A `Thought:` after the answer's label is part of the answer, not the thought.
            let thought = match found.thought {
                Some(t) if t.label_pos > s.label_pos => text[..found.preamble_end].trim(),
                _ => thought,
            };
            return Ok(Step {
                thought,
                action: None,
                action_input: None,
                // Everything after the last `Final Answer:` is the answer (to the fence
                // that closes a step wrapped in one).
                final_answer: Some(labelled_answer(s.answer(text, found.end), s.start)?),
                end,
            });
        }
        // `Thought: I now know the final answer. Final Answer: 42`, which LangChain accepts:
        // the thought ends at the marker (when the marker is in it), and the answer follows,
        // to the step's end (the fence that closes a step wrapped in one).
        let step = &text[..found.end];
        let Some((marker, start)) = final_answer_marker(step) else {
            return Err(CoreError::Parse {
                message: "expected a line starting with 'Action:' or 'Final Answer:'".into(),
                position: Some(text.len()),
            });
        };
        // The marker in emphasis (`I know. **Final Answer:** 42`, `**Final Answer: 42**`):
        // its asterisks are neither thought nor answer.
        let stars_start = stars_before(text, marker);
        let (thought, answer) = match found.thought {
            // A wrapped thought line (`**Thought: ... Final Answer: 42**`) closes after both.
            Some(s) if s.start <= marker => (
                &text[s.start..s.end.min(stars_start).max(s.start)],
                match s.close {
                    Some((close, _)) if close >= start => {
                        Section { start, ..s }.answer(step, step.len())
                    }
                    _ => emphasized_answer(step, start, &text[stars_start..marker]),
                },
            ),
            _ => (
                &text[..found.preamble_end.min(stars_start)],
                emphasized_answer(step, start, &text[stars_start..marker]),
            ),
        };
        return Ok(Step {
            thought: thought.trim(),
            action: None,
            action_input: None,
            final_answer: Some(labelled_answer(answer, start)?),
            end,
        });
    };

    let written_text = action.text(text);
    let body = written_text.trim();
    let mut written = split_action(body);
    // `Action: Final Answer` (`: Paris`): the answer taken for a tool, read as FINAL_ANSWER.
    if let Some(rest) = spelled_final_answer(body).filter(|_| !written.labelled) {
        let input = rest.trim_start();
        written = ActionText {
            tool: &body[..body.len() - rest.len()],
            after_name: rest,
            input: input.strip_prefix(SEPARATORS).unwrap_or(input).trim(),
            labelled: false,
        };
    }
    // An `Action Input:` line after the action gives its input (when the action's line has
    // none), and makes its whole line the tool name, as LangChain reads it, unless that line
    // is in the seed form (`FINAL_ANSWER 42`, `double {"n": 21}`).
    let seed_rest = written.after_name;
    let (tool, input_section) = match found.action_input.filter(|_| !written.labelled) {
        Some(section) if may_be_whole_name(written.tool, seed_rest) => {
            (whole_name(first_line(body)), Some(section))
        }
        Some(section) if written.input.is_empty() => (written.tool, Some(section)),
        _ => (written.tool, None),
    };
    if tool.is_empty() {
        if let Some(step) = json_blob_step(body, thought, end) {
            return Ok(step);
        }
        return Err(CoreError::Parse {
            message: "expected a tool name after 'Action:'".into(),
            // Where the section's text starts (or ends, when it is blank).
            position: Some(action.start + (written_text.len() - written_text.trim_start().len())),
        });
    }
    let input_text = input_section.map_or(written.input, content);
    if is_final_tool(tool) {
        // `Action: FINAL_ANSWER 42`, or LangChain's `Action: FINAL_ANSWER` then
        // `Action Input: 42`; for a bare `FINAL_ANSWER`, a `Final Answer:` section (up to the
        // next label), or else a `Final Answer:` written later on a line after the action.
        // An `Action Input:` label on its line (`FINAL_ANSWER Action Input: 42`) is no answer.
        let input_text = match input_label_at(input_text, 0) {
            Some((_, after)) => input_text[after..].trim(),
            None => input_text,
        };
        let mut thought = thought;
        let final_answer = if !input_text.is_empty() {
            answer_of(input_text)
        } else if let Some(s) = found.final_answer {
            trimmed(s.answer(text, s.end.min(end)))
        } else {
            let after = text.get(action.end..end).unwrap_or_default();
            match final_answer_marker(after) {
                Some((marker, start)) => {
                    let stars_start = stars_before(after, marker);
                    // A thought written after the action, holding the marker, ends there.
                    let marker_at = action.end + marker;
                    if let Some(t) = found.thought.filter(|t| {
                        t.start > action.start && (t.start..=t.end).contains(&marker_at)
                    }) {
                        thought = text[t.start..(action.end + stars_start).max(t.start)].trim();
                    }
                    trimmed(emphasized_answer(after, start, &after[stars_start..marker]))
                }
                None => Cow::Borrowed(""),
            }
        };
        if final_answer.is_empty() && input_text.is_empty() {
            return Err(CoreError::Parse {
                message: format!("expected the final answer after '{tool}'"),
                position: Some(action.start + written_text.trim_end().len()),
            });
        }
        return Ok(Step {
            thought,
            action: None,
            action_input: None,
            final_answer: Some(final_answer),
            end,
        });
    }
    if let Some(answer) = found.final_answer {
        // `Action: None` (or `N/A`), with no input or the same word as input, and the
        // answer (its section, as for `FINAL_ANSWER`): the model says it calls no tool.
        let no_input = found
            .action_input
            .is_none_or(|s| content(s).is_empty() || names_no_action(content(s)));
        if no_input && names_no_action(whole_name(body)) {
            let answer_text = answer.answer(text, answer.end.min(end));
            return Ok(Step {
                thought,
                action: None,
                action_input: None,
                final_answer: Some(labelled_answer(answer_text, answer.start)?),
                end,
            });
        }
        return Err(CoreError::Parse {
            message: format!(
                "found both an action ('{tool}') and a final answer; expected only one"
            ),
            position: Some(answer.label_pos),
        });
    }
    // A bare `Action: tool` (nothing after the name, no `Action Input:` line) calls the tool
    // with no arguments, as the seed's loop does: models write so for a tool without any.
    // So does an `Action Input:` left empty, as LangChain-style replies write it for such a
    // tool. (A word such as `None` stays the input: it may be an argument's value.)
    let input = if input_text.trim().is_empty() {
        InputText::no_arguments()
    } else {
        InputText::new(input_text)
    };
    // Checked without the code fence: an empty fence gives the tool no input either.
    if input.text.is_empty() {
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
        action_input: Some(input),
        final_answer: None,
        end,
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

/// Decodes an action input into Python as `json.loads` would: JSON objects, arrays and
/// strings become dict, list and str; anything else (including invalid JSON) stays the raw
/// text.
///
/// # Errors
/// Only what `json.loads` raises other than `ValueError` and `RecursionError` (which mean
/// "not JSON" here), such as `MemoryError`.
fn input_to_py<'py>(py: Python<'py>, input: &InputText<'_>) -> PyResult<Bound<'py, PyAny>> {
    if let Some(json) = input.json() {
        if let Some(value) = json_to_py(py, json)? {
            return Ok(value);
        }
    }
    if let Some(json) = relaxed_json(input.text) {
        if let Some(value) = json_to_py(py, &json)? {
            return Ok(value);
        }
    }
    Ok(PyString::new(py, input.raw()).into_any())
}

/// The JSON text `json` decoded into Python objects as `json.loads` decodes it, or `None`
/// when it is not JSON.
fn json_to_py<'py>(py: Python<'py>, json: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    let literals = wide_integers(json);
    let next = Cell::new(0);
    let seed = PyJson {
        py,
        wide: literals.as_deref().map(|literals| (literals, &next)),
    };
    let mut deserializer = serde_json::Deserializer::from_str(json);
    if let Ok(value) = seed.deserialize(&mut deserializer) {
        return Ok(Some(value));
    }
    python_json(py, json)
}

/// Most levels of objects and arrays an action input is decoded with, as the providers'
/// `MAX_ARGUMENT_DEPTH`: deeper, it stays text. A session holding a deeper value could not
/// be copied nor saved within Python's recursion limit.
const MAX_INPUT_DEPTH: usize = 200;

/// Whether the JSON text `bytes` opens over `limit` objects and arrays inside each other.
fn nests_deeper_than(bytes: &[u8], limit: usize) -> bool {
    let mut depth: usize = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'"' => match skip_string(bytes, i) {
                Some(end) => i = end,
                None => return false, // a string that never closes: no JSON anyway
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// `json.loads(json)`, or `None` when it refuses the text or it nests deeper than
/// `MAX_INPUT_DEPTH`. Off the fast path: it only runs where serde_json refused a text that
/// Python's `json` may accept (nesting deeper than 128, a number beyond the float range, an
/// escaped lone surrogate, `NaN`).
#[cold]
#[inline(never)]
fn python_json<'py>(py: Python<'py>, json: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    if nests_deeper_than(json.as_bytes(), MAX_INPUT_DEPTH) {
        return Ok(None);
    }
    let loads = py
        .import(pyo3::intern!(py, "json"))?
        .getattr(pyo3::intern!(py, "loads"))?;
    match loads.call1((json,)) {
        Ok(value) => Ok(Some(value)),
        // Too deep for Python's recursion limit is "not JSON" too, as for serde_json.
        Err(e)
            if e.is_instance_of::<PyValueError>(py) || e.is_instance_of::<PyRecursionError>(py) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// One step of a ReAct trace: the model's thought, then either an action with its input or
/// a final answer.
///
/// The action is a Python string made at parse time. The thought, the final answer and the
/// action input are read from the parsed text, which the step keeps, on first access, and
/// then cached: a caller that only dispatches the action pays for no other string. The input
/// is the decoded JSON (dict, list or str) when it was a JSON object or array (maybe
/// followed by other text; or one written as Python writes it, or with trailing commas: see
/// `relaxed_json`) or was one string literal, and the raw trimmed text otherwise.
/// A step pickles and copies as the parse of its text.
#[pyclass(module = "llm_agent_runtime", name = "ReActStep", frozen)]
pub struct PyReActStep {
    /// The parsed text (a plain `str` copy when it was a subclass of `str`).
    source: Py<PyString>,
    /// Whether `source` is ASCII: its parts are then sliced as stored (see [`text_slice`]).
    ascii: bool,
    /// The model's reasoning (may be empty).
    thought: Piece,
    /// The tool to call, or None for a final answer.
    #[pyo3(get)]
    action: Option<Py<PyString>>,
    /// The final answer, or None when the step calls a tool.
    final_answer: Option<Piece>,
    /// Where the step ends in the parsed text, in characters: len(text), unless an
    /// `Observation:` line follows the action, or a `Thought:` or `Action:` line its input
    /// (the model went on without the observation); then the end of the text before that
    /// line, trailing whitespace excluded. text[:end] is the step.
    #[pyo3(get)]
    end: usize,
    /// The action's input (None for a final answer).
    input: Option<Input>,
    /// Set once, with the GIL held; read by `__traverse__`, which has no GIL token.
    decoded_input: OnceLock<Py<PyAny>>,
}

/// Where a step's input comes from.
#[derive(Clone, Copy)]
enum Input {
    /// The parsed text, at these byte offsets (the input trimmed and unfenced).
    Written(usize, usize),
    /// None was written (a bare `Action: tool`): no arguments, `{}`.
    NoArguments,
}

/// A part of the parsed text, made a Python string on first access and then cached.
struct Piece {
    /// Where it lies in the parsed text, in bytes (on character boundaries).
    start: usize,
    end: usize,
    /// The string, once made (at parse time when it is not a slice of the text: a decoded
    /// JSON string literal).
    made: OnceLock<Py<PyString>>,
}

impl Piece {
    /// `part`, a slice of `source` (or empty).
    fn slice_of(source: &str, part: &str) -> Self {
        let start = if part.is_empty() {
            0 // it may be a literal `""`, not a slice of `source`
        } else {
            (part.as_ptr() as usize).saturating_sub(source.as_ptr() as usize)
        };
        Self {
            start,
            end: start + part.len(),
            made: OnceLock::new(),
        }
    }

    /// A string that is not a slice of the text.
    fn made(value: Bound<'_, PyString>) -> Self {
        Self {
            start: 0,
            end: 0,
            made: OnceLock::from(value.unbind()),
        }
    }

    /// The part as a Python string, made from `source` (ASCII when `ascii`) the first time.
    fn get<'py>(
        &self,
        source: &Bound<'py, PyString>,
        ascii: bool,
    ) -> PyResult<Bound<'py, PyString>> {
        let py = source.py();
        if let Some(value) = self.made.get() {
            return Ok(value.bind(py).clone());
        }
        let value = text_slice(source, ascii, self.start, self.end)?.unbind();
        // Had another thread made it meanwhile, its string wins: one object per part.
        Ok(self.made.get_or_init(|| value).bind(py).clone())
    }
}

/// `source[start..end]` (byte offsets on character boundaries) as a new string. An ASCII
/// source is sliced as it is stored, a plain copy; any other is sliced in its UTF-8 form and
/// decoded again.
fn text_slice<'py>(
    source: &Bound<'py, PyString>,
    ascii: bool,
    start: usize,
    end: usize,
) -> PyResult<Bound<'py, PyString>> {
    let py = source.py();
    // In an ASCII text a byte offset is a character index (and a `str` fits an isize).
    if let (true, Ok(from), Ok(to)) = (ascii, isize::try_from(start), isize::try_from(end)) {
        #[allow(unsafe_code)]
        // SAFETY: `source` is a live `str` and the GIL is held; `PyUnicode_Substring` clamps
        // its bounds and returns a new reference, or NULL with an exception set.
        let slice = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyUnicode_Substring(source.as_ptr(), from, to))?
        };
        return Ok(slice.cast_into::<PyString>()?);
    }
    let text = source.to_str()?.get(start..end).unwrap_or_default();
    Ok(PyString::new(py, text))
}

#[pymethods]
impl PyReActStep {
    /// The action's input: decoded JSON, or the raw text; None for a final answer.
    ///
    /// A string literal decodes only when nothing but blanks follows it on its line.
    #[getter]
    fn action_input(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if let Some(value) = this.decoded_input.get() {
            return Ok(value.clone_ref(py));
        }
        let value = match this.input {
            None => py.None(),
            Some(Input::Written(start, end)) => {
                let source = this.source.bind(py).to_str()?;
                let text = source.get(start..end).unwrap_or_default();
                // Trimmed and unfenced already: taken as it is.
                let input = InputText {
                    text,
                    written: true,
                };
                input_to_py(py, &input)?.unbind()
            }
            Some(Input::NoArguments) => PyDict::new(py).into_any().unbind(),
        };
        // Had another thread set it meanwhile (decoding may run Python code), its value wins.
        let value = this.decoded_input.get_or_init(|| value);
        track_if_it_holds_a_container(slf, value.bind(py));
        Ok(value.clone_ref(py))
    }

    /// The action's input as written (trimmed, and out of its code fence): `""` when none
    /// was written, None for a final answer. Made at each access, never decoded.
    #[getter]
    fn action_input_text<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyString>>> {
        let py = slf.py();
        let this = slf.get();
        Ok(match this.input {
            None => None,
            Some(Input::Written(start, end)) => {
                Some(text_slice(this.source.bind(py), this.ascii, start, end)?)
            }
            Some(Input::NoArguments) => Some(PyString::new(py, "")),
        })
    }

    /// The model's reasoning (may be empty).
    #[getter]
    fn thought<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyString>> {
        let this = slf.get();
        this.thought.get(this.source.bind(slf.py()), this.ascii)
    }

    /// The final answer, or None when the step calls a tool.
    #[getter]
    fn final_answer<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyString>>> {
        let this = slf.get();
        let source = this.source.bind(slf.py());
        this.final_answer
            .as_ref()
            .map(|answer| answer.get(source, this.ascii))
            .transpose()
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
            repr(Self::thought(slf)?.into_any())?,
            repr((&this.action).into_pyobject(py)?.into_any())?,
            repr(Self::action_input(slf)?.into_bound(py))?,
            repr(Self::final_answer(slf)?.into_pyobject(py)?.into_any())?,
        ))
    }

    /// Pickles (and copies) as the parse of its text, which makes an equal step.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, (Py<PyString>,))> {
        let parse = py
            .import(pyo3::intern!(py, "llm_agent_runtime._core"))?
            .getattr(pyo3::intern!(py, "parse_react_step"))?;
        Ok((parse, (self.source.clone_ref(py),)))
    }

    /// Steps are equal when their thought, action, input and final answer are (wherever
    /// they end in their texts).
    fn __eq__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = slf.py();
        let Ok(other) = other.cast::<PyReActStep>() else {
            return Ok(false);
        };
        let (this, that) = (slf.get(), other.get());
        let same = |a: Option<&Bound<'_, PyString>>, b: Option<&Bound<'_, PyString>>| match (a, b) {
            (None, None) => Ok(true),
            (Some(a), Some(b)) => a.as_any().eq(b),
            _ => Ok(false),
        };
        let (answer, other_answer) = (Self::final_answer(slf)?, Self::final_answer(other)?);
        Ok(Self::thought(slf)?.as_any().eq(Self::thought(other)?)?
            && same(
                this.action.as_ref().map(|a| a.bind(py)),
                that.action.as_ref().map(|a| a.bind(py)),
            )?
            && same(answer.as_ref(), other_answer.as_ref())?
            && Self::action_input(slf)?
                .bind(py)
                .eq(Self::action_input(other)?)?)
    }
}

/// Parses one ReAct step from model output.
///
/// Accepts `Thought: ...` followed by `Action: tool {"json": 1}`, `Action: tool` alone (no
/// arguments: the input `{}`), `Action: FINAL_ANSWER 42`,
/// `Action: tool` + `Action Input: ...` (the tool is then all the text before the label, as
/// LangChain reads it: `Action: Search Tool`; a name quoted whole in backticks loses them, in
/// either form), or `Final Answer: ...` (also later on a line,
/// when there is no action: `Thought: I know. Final Answer: 42`). Labels are
/// case-insensitive, may follow spaces (Unicode ones too) and invisible format characters
/// (a byte order mark, a zero-width space, a direction mark), may carry a step number
/// (`Action 1:`, `Action 1 Input:`), may follow a Markdown list marker (`- Action:`,
/// `1. Action:`) and may be in Markdown emphasis (`**Action:**`, `**Action**:`,
/// `__Action:__`, `*Action:*`); a line ends at `\n`, `\r\n` or a lone `\r`.
/// A JSON object or array input may sit in a ```json fence and be followed by other text; a string
/// literal is JSON only when nothing follows it on its line. A code fence that opens an input
/// (or any fence in a final answer) is read whole: a line in it that looks like a label (a
/// YAML `action:` key) is its text. Input decodes as `json.loads`
/// would (JSON nesting objects and arrays over 200 levels deep stays raw text). The step ends at an
/// `Observation:` line after the action, or a `Thought:` or `Action:` line after its input (see
/// `ReActStep.end`).
///
/// Args:
///     text: the model's output for one step.
///
/// Returns:
///     ReActStep: the parsed step.
///
/// Raises:
///     ParseError: the text is not a ReAct step; the message says what was expected, and
///         ``position`` where, as an index into ``text`` (in characters, like
///         ``ReActStep.end``). Also when the text is not valid Unicode (it holds a lone
///         surrogate, as a stream cut inside an emoji's escape leaves): ``position`` is the
///         first one's.
///     TypeError: the text is not a `str` (bytes included: decode them first).
#[pyfunction]
pub fn parse_react_step<'py>(text: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyReActStep>> {
    let py = text.py();
    // Told here, not by PyO3's extraction: its `TypeError` names the argument only in a note.
    let Ok(text) = text.cast::<PyString>() else {
        return Err(args::wrong_type(text, "text", args::STR));
    };
    let source = args::text_or_surrogate_at(text, |message, position| match position {
        // `ParseError`'s str adds " (at index N)", as to every position.
        Some(_) => CoreError::Parse {
            message: "text is not valid Unicode: it holds a lone surrogate (a surrogate pair \
                      cut in two has no UTF-8 form)"
                .to_owned(),
            position,
        },
        None => CoreError::Parse { message, position },
    })?;
    // Parsing slices the text by offsets it found: a bug there must not escape as a panic.
    let step = catch_panics(|| {
        parse(source).map_err(|err| match err {
            // Python indexes the text in characters, not UTF-8 bytes.
            CoreError::Parse { message, position } => PyErr::from(CoreError::Parse {
                message,
                position: position.map(|at| char_index(source, at)),
            }),
            other => other.into(),
        })
    })?;
    // As many characters as UTF-8 bytes: ASCII, where each byte offset is a character index.
    // (A `str` subclass may override `__len__`: its characters are counted instead.)
    let chars = if text.is_exact_instance_of::<PyString>() {
        text.len()?
    } else {
        source.chars().count()
    };
    let ascii = chars == source.len();
    let end = if step.end >= source.len() {
        chars
    } else if ascii {
        step.end
    } else {
        char_index(source, step.end)
    };
    // A `str` subclass may hold other objects (a `__dict__`), even the step: a plain copy of
    // it keeps the step out of any reference cycle (see below).
    let kept = if text.is_exact_instance_of::<PyString>() {
        text.clone()
    } else {
        PyString::new(py, source)
    };
    let final_answer = step.final_answer.map(|answer| match answer {
        Cow::Borrowed(part) => Piece::slice_of(source, part),
        Cow::Owned(decoded) => Piece::made(PyString::new(py, &decoded)),
    });
    let step = Bound::new(
        py,
        PyReActStep {
            source: kept.unbind(),
            ascii,
            thought: Piece::slice_of(source, step.thought),
            action: step.action.map(|action| PyString::new(py, action).unbind()),
            final_answer,
            end,
            input: step.action_input.map(|input| {
                if input.written {
                    let piece = Piece::slice_of(source, input.text);
                    Input::Written(piece.start, piece.end)
                } else {
                    Input::NoArguments
                }
            }),
            decoded_input: OnceLock::new(),
        },
    )?;
    // A new step holds only strings, so it cannot be part of a reference cycle: like CPython
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

/// The index in characters (as Python indexes `text`) of the byte offset `at`, which parsing
/// only puts on a character boundary (or at the end).
fn char_index(text: &str, at: usize) -> usize {
    text.get(..at).map_or(0, |before| before.chars().count())
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
        assert!(parse("Thought: done\nAction: FINAL_ANSWER").is_err());
        assert!(parse("Action: FINAL_ANSWER\nAction Input:  ").is_err());
        for separated in [
            "FINAL_ANSWER, 42",
            "FINAL_ANSWER; 42",
            "FINAL_ANSWER, Action Input: 42",
        ] {
            let text = format!("Action: {separated}");
            let step = parse(&text).unwrap();
            assert_eq!(step.final_answer.as_deref(), Some("42"), "{separated}");
        }
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
    fn labels_in_a_list_are_labels() {
        for marker in ["- ", "* ", "+ ", "\u{2022} ", "1. ", "12) ", "-\t"] {
            let text = format!("{marker}Thought: x\n{marker}Action: t\n{marker}Action Input: q");
            let step = parse(&text).unwrap();
            assert_eq!((step.thought, step.action), ("x", Some("t")), "{marker:?}");
            assert_eq!(step.action_input.map(|i| i.raw()), Some("q"));
        }
        // Not a list marker: no blank after it, or a number too long to number a list.
        for prose in ["-Action: t {}", "1234. Action: t {}", "1.Action: t {}"] {
            assert!(parse(prose).is_err(), "{prose:?}");
        }
    }

    #[test]
    fn multi_line_thought_and_preamble() {
        let step = parse("  THOUGHT :  line one\nline two\n ACTION: t [1]").unwrap();
        assert_eq!(step.thought, "line one\nline two");
        let pre = parse("I should look.\nAction: t {}").unwrap();
        assert_eq!(pre.thought, "I should look.");
    }

    #[test]
    fn a_lone_closing_tag_line_ends_the_reasoning() {
        let text = "Action: draft {}\nObservation: 1\n</think>\nAction: search {\"q\": 1}";
        let step = parse(text).unwrap();
        assert_eq!(step.action, Some("search"));
        assert_eq!(step.thought, "Action: draft {}\nObservation: 1");
        assert_eq!(step.end, text.len());
        // Within a line, a tag is text.
        let step = parse("Action: write\nAction Input: a </think> b").unwrap();
        assert_eq!(step.action_input.map(|i| i.raw()), Some("a </think> b"));
    }

    #[test]
    fn python_literals_and_trailing_commas_decode() {
        let (_, input) = action("Action: t {'q': 'it\\'s', 'n': [1, 2,], 'ok': True, 'x': None}");
        assert_eq!(
            input,
            ActionInput::Json(json!({"q": "it's", "n": [1, 2], "ok": true, "x": null}))
        );
        let (_, input) = action("Action: t {'q': '\\u00e9\\x41\\U0001F600'} then prose");
        assert_eq!(input, ActionInput::Json(json!({"q": "\u{e9}A\u{1F600}"})));
        for raw in ["[,]", "{q: 1}", "{'a': (1,)}", "{'k': 'open}", "['\\x+1']"] {
            let (_, input) = action(&format!("Action: t\nAction Input: {raw}"));
            assert_eq!(input, ActionInput::Raw(raw.to_owned()));
        }
    }

    #[test]
    fn full_width_colons_end_labels() {
        let step =
            parse("Thought\u{FF1A} x\nAction\u{FF1A} search\nAction Input\u{FF1A} a").unwrap();
        assert_eq!((step.thought, step.action), ("x", Some("search")));
        assert_eq!(step.action_input.map(|i| i.raw()), Some("a"));
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
        // A bare action is a call without arguments (the seed's `{}`), not an error.
        let (tool, input) = action("Action: tool");
        assert_eq!(
            (tool.as_str(), input),
            ("tool", ActionInput::Json(json!({})))
        );
        assert!(parse("Action: search ```\n```").is_err());
        assert!(parse("Action: search\nAction Input: ```json\n```").is_err());
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
    fn final_answer_tool_keeps_the_answer_as_written() {
        let answer = |text: &str| parse(text).unwrap().final_answer.unwrap().into_owned();
        for written in [
            r#""Paris" is the capital of France"#,
            "[1, 2, 3] are the primes",
            r#"{"price": 3.10, "b": 1, "a": 2}"#,
            r#"The word is "cat""#,
            r#""unclosed"#,
        ] {
            assert_eq!(answer(&format!("Action: FINAL_ANSWER {written}")), written);
            assert_eq!(
                answer(&format!("Action: FINAL_ANSWER\nAction Input: {written}")),
                written
            );
        }
        // Exactly one JSON string literal: its value.
        assert_eq!(answer(r#"Action: FINAL_ANSWER "a \"b\"" "#), r#"a "b""#);
    }

    #[test]
    fn raw_input_loses_only_a_matching_pair_of_quotes() {
        assert_eq!(InputText::new(r#"he said "hi""#).raw(), r#"he said "hi""#);
        assert_eq!(InputText::new(r#""a\qb""#).raw(), r#"a\qb"#);
        assert_eq!(InputText::new(r#""open"#).raw(), r#""open"#);
        assert_eq!(InputText::new(r#"""x"""#).raw(), r#"""x"""#);
        assert_eq!(InputText::new(r#""a" and "b""#).raw(), r#""a" and "b""#);
        assert_eq!(
            InputText::new(r#""C:\Users\bob\""#).raw(),
            r#"C:\Users\bob\"#
        );
        assert_eq!(InputText::new(r#"""#).raw(), r#"""#);
    }

    #[test]
    fn tool_name_ends_at_the_first_character_outside_the_name_set() {
        for action in [
            "FINAL_ANSWER: 42",
            "FINAL_ANSWER(42)",
            "FINAL_ANSWER=42",
            "final_answer = 42",
        ] {
            let text = format!("Action: {action}");
            let step = parse(&text).unwrap();
            assert_eq!(step.final_answer.as_deref(), Some("42"), "{action}");
            assert_eq!(step.action, None);
        }
        assert_eq!(
            split_action(r#"double({"n": 1})"#),
            ActionText {
                tool: "double",
                after_name: r#"({"n": 1})"#,
                input: r#"{"n": 1}"#,
                labelled: false
            }
        );
        assert_eq!(split_action("calc(2*(3+4))").input, "2*(3+4)");
        assert_eq!(split_action("calc (1) + (2)").input, "(1) + (2)");
        assert_eq!(split_action("f(1) (2)").input, "(1) (2)");
        assert_eq!(split_action(r#"f("a)")"#).input, r#""a)""#);
        assert_eq!(split_action("web-search_2{}").tool, "web-search_2");
        assert_eq!(split_action("é x").tool, "");
    }

    #[test]
    fn dots_join_name_runs_in_the_seed_form() {
        let split = |body| {
            let written = split_action(body);
            (written.tool, written.input)
        };
        assert_eq!(
            split(r#"github.search_issues {"q":1}"#),
            ("github.search_issues", r#"{"q":1}"#)
        );
        assert_eq!(split("a.b-c_d.e(1)"), ("a.b-c_d.e", "1"));
        assert_eq!(split("calc. 1"), ("calc", ". 1"));
        assert_eq!(split("calc.. x"), ("calc", ".. x"));
        assert_eq!(split(".hidden x"), ("", ".hidden x"));
        assert_eq!(split("search.é"), ("search", ".é"));
    }

    #[test]
    fn an_action_input_label_makes_the_action_line_the_tool_name() {
        let step = |text| {
            let step = parse(text).unwrap();
            (step.action.unwrap(), step.action_input.unwrap().decode())
        };
        let raw = |text: &str| ActionInput::Raw(text.into());
        for text in [
            "Thought: x\nAction: Search Tool\nAction Input: rust pyo3",
            "Action: Search Tool Action Input: rust pyo3",
            "Action:  Search Tool :\nAction Input: rust pyo3",
            "action 2: Search Tool Action 2 Input 2 : rust pyo3",
        ] {
            assert_eq!(step(text), ("Search Tool", raw("rust pyo3")), "{text:?}");
        }
        assert_eq!(
            step("Action: github.search_issues\nAction Input: {\"q\": 1}"),
            ("github.search_issues", ActionInput::Json(json!({"q": 1})))
        );
        assert_eq!(
            step("Action: search Action Input: rust"),
            ("search", raw("rust"))
        );
        // Inside a JSON input, or after it, the words are the input's.
        assert_eq!(
            step(r#"Action: t {"q": "Action Input: x"}"#),
            ("t", ActionInput::Json(json!({"q": "Action Input: x"})))
        );
        // Not a label: not after a blank, or no colon.
        assert_eq!(
            step("Action: t transaction input: 1"),
            ("t", raw("transaction input: 1"))
        );
        assert_eq!(
            step("Action: t action input 1"),
            ("t", raw("action input 1"))
        );
        // On the action's line, only as LangChain writes it (prose has `action input:` too).
        assert_eq!(
            step("Action: note remember the action input: must be JSON"),
            ("note", raw("remember the action input: must be JSON"))
        );
        assert!(parse("Action: Action Input: x").is_err());
        // An input label left empty: a call without arguments, as a bare action is.
        assert!(parse("Action: search Action Input:   ")
            .is_ok_and(|s| s.action_input.is_some_and(|input| input.text == "{}")));
    }

    #[test]
    fn an_action_input_label_after_a_unicode_space_is_a_label() {
        for text in [
            "Action: search\u{3000}Action Input: cats",
            "Action: search\u{a0}Action Input: cats",
            "Action: search \u{2003}Action 1 Input: cats",
        ] {
            let (tool, input) = action(text);
            assert_eq!(
                (tool.as_str(), input),
                ("search", ActionInput::Raw("cats".into())),
                "{text:?}"
            );
        }
        let (tool, _) = action("Action: Search Tool\u{3000}Action Input: cats");
        assert_eq!(tool, "Search Tool");
        // A letter or an invisible character before the word: no label.
        for text in [
            "Action: t x\u{e9}Action Input: y",
            "Action: t x\u{200b}Action Input: y",
        ] {
            let (tool, input) = action(text);
            assert_eq!(tool, "t");
            assert!(matches!(input, ActionInput::Raw(raw) if raw.ends_with("Action Input: y")));
        }
    }

    #[test]
    fn numbered_labels_and_a_final_answer_later_on_a_line() {
        let step = parse("Thought 1: x\nAction 1: search\nAction 1 Input: rust\nObservation 1: y")
            .unwrap();
        assert_eq!(
            (step.thought, step.action, step.end),
            (
                "x",
                Some("search"),
                "Thought 1: x\nAction 1: search\nAction 1 Input: rust".len()
            )
        );
        let answer = |text| {
            let step = parse(text).unwrap();
            (step.thought, step.final_answer.unwrap().into_owned())
        };
        assert_eq!(
            answer("Thought: I now know the final answer. Final Answer: 42"),
            ("I now know the final answer.", "42".to_owned())
        );
        assert_eq!(
            answer("I know. Final Answer :x\ny"),
            ("I know.", "x\ny".to_owned())
        );
        assert_eq!(
            answer("Thought: a Final Answer: 1. Final Answer: 2"),
            ("a Final Answer: 1.", "2".to_owned())
        );
        assert_eq!(
            answer("I know\nThought: t\nObservation: o Final Answer: 3"),
            ("t", "3".to_owned())
        );
        // Prose, another spelling, part of a word, or no colon: no answer.
        for text in [
            "Thought: I now know the final answer.",
            "Thought: the final answer: 42",
            "Thought: PreFinal Answer: 42",
            "Thought: éFinal Answer: 42",
            "Thought: the Final Answer is 42",
        ] {
            assert!(parse(text).is_err(), "{text:?}");
        }
        // With an action, the words are the thought's.
        let step = parse("Thought: then the Final Answer: 1\nAction: t {}").unwrap();
        assert_eq!(step.thought, "then the Final Answer: 1");
    }

    #[test]
    fn a_leading_string_literal_is_json_only_when_it_is_the_whole_input() {
        let (_, input) = action("Action: search\nAction Input: \"New York\" weather tomorrow");
        assert_eq!(
            input,
            ActionInput::Raw("\"New York\" weather tomorrow".into())
        );
        let (_, input) = action("Action: t \"a\" and \"b\"");
        assert_eq!(input, ActionInput::Raw("\"a\" and \"b\"".into()));
        let (_, input) = action("Action: t \"New York\"  \n");
        assert_eq!(input, ActionInput::Json(json!("New York")));
        let (_, input) = action("Action: t {\"q\": 1} and more");
        assert_eq!(input, ActionInput::Json(json!({"q": 1})));
        // Chatter on later lines is ignored, as after an object.
        let (_, input) = action("Action: t\nAction Input: \"rust\"  \n\nI will wait.");
        assert_eq!(input, ActionInput::Json(json!("rust")));
    }

    #[test]
    fn final_answer_tool_takes_a_final_answer_section() {
        let answer = |text| parse(text).unwrap().final_answer.unwrap().into_owned();
        assert_eq!(
            answer("Thought: x\nAction: FINAL_ANSWER\nFinal Answer: 5"),
            "5"
        );
        assert_eq!(answer("Action: FINAL_ANSWER 4\nFinal Answer: 5"), "4");
        assert_eq!(
            answer("Action: FINAL_ANSWER\nAction Input: 4\nFinal Answer: 5"),
            "4"
        );
    }

    #[test]
    fn a_seed_form_action_line_keeps_its_reading_before_an_action_input_line() {
        assert_eq!(
            action("Thought: x\nAction: double {\"n\": 21}\nAction Input: {\"n\": 21}"),
            ("double".to_owned(), ActionInput::Json(json!({"n": 21})))
        );
        assert_eq!(
            action("Thought: x\nAction: search(\"rust\")\nAction Input: rust"),
            ("search".to_owned(), ActionInput::Json(json!("rust")))
        );
        assert_eq!(
            action("Action: search:\nAction Input: cats"),
            ("search".to_owned(), ActionInput::Raw("cats".into()))
        );
        let answer = |text: &str| parse(text).unwrap().final_answer.unwrap().into_owned();
        assert_eq!(answer("Action: FINAL_ANSWER 42\nAction Input: 42"), "42");
        let prose = "To call a tool, write the action input: as JSON.";
        assert_eq!(answer(&format!("Action: FINAL_ANSWER {prose}")), prose);
        // The label on the line is no part of the answer, as after `Final Answer`.
        assert_eq!(answer("Action: FINAL_ANSWER Action Input: 4"), "4");
    }

    #[test]
    fn a_final_answer_section_is_cut_at_the_step_end_and_at_the_next_label() {
        let text = "Thought: done\nAction: FINAL_ANSWER\nFinal Answer: 5\nObservation: the user replied thanks\nThought: I should also";
        let step = parse(text).unwrap();
        assert_eq!(step.final_answer.as_deref(), Some("5"));
        assert_eq!(
            &text[..step.end],
            "Thought: done\nAction: FINAL_ANSWER\nFinal Answer: 5"
        );
        let text = "Action: FINAL_ANSWER\nFinal Answer: 5\nsix\nThought: more";
        let step = parse(text).unwrap();
        assert_eq!(step.final_answer.as_deref(), Some("5\nsix"));
        assert_eq!(
            &text[..step.end],
            "Action: FINAL_ANSWER\nFinal Answer: 5\nsix"
        );
        let before = parse("Thought: done\nFinal Answer: 42\nAction: FINAL_ANSWER").unwrap();
        assert_eq!(before.final_answer.as_deref(), Some("42"));
        let marker = parse("Thought: x\nAction: FINAL_ANSWER\nThought: I know. Final Answer: 5");
        assert_eq!(marker.unwrap().final_answer.as_deref(), Some("5"));
        assert!(parse("Thought: x\nAction: FINAL_ANSWER\nThought: I know.").is_err());
    }

    #[test]
    fn first_action_wins_with_its_own_input() {
        let (tool, input) =
            action("Thought: x\nAction: double {\"n\":1}\nAction: double\nAction Input: {\"n\":2}");
        assert_eq!(
            (tool.as_str(), input),
            ("double", ActionInput::Json(json!({"n": 1})))
        );
        let (tool, input) = action("Action: a\nAction Input: 1\nAction: b\nAction Input: 2");
        assert_eq!((tool.as_str(), input), ("a", ActionInput::Raw("1".into())));
        // An `Action Input:` line before the action, or after another one, is not its input.
        for text in [
            "Action: a\nAction: b\nAction Input: 1",
            "Action Input: 1\nAction: a",
        ] {
            let (tool, input) = action(text);
            assert_eq!((tool.as_str(), input), ("a", ActionInput::Json(json!({}))));
        }
        // The bare action's step ends at the next action, or at a thought after it.
        for text in [
            "Action: a\nAction: b\nAction Input: 1",
            "Action: a\nThought: then",
        ] {
            assert_eq!(
                parse(text).map(|step| step.end).ok(),
                Some("Action: a".len())
            );
        }
        // A thought between it and its `Action Input:` line leaves the input its own.
        let (tool, input) = action("Action: search\nThought: hm\nAction Input: cats");
        assert_eq!(
            (tool.as_str(), input),
            ("search", ActionInput::Raw("cats".into()))
        );
    }

    #[test]
    fn an_observation_after_the_action_ends_the_step() {
        let text = "Thought: x\nAction: double {\"n\":21}  \nObservation: 42\nThought: I know\nFinal Answer: 42";
        let step = parse(text).unwrap();
        assert_eq!((step.thought, step.action), ("x", Some("double")));
        assert_eq!(&text[..step.end], "Thought: x\nAction: double {\"n\":21}");
        let before = "Observation: x\nAction: t {}";
        assert_eq!(parse(before).unwrap().end, before.len());
        let after = parse("Action: t {}\nObservation: x\nThought: y").unwrap();
        assert_eq!(after.thought, "");
        // An input line past the observation is not the bare action's: a thought between
        // them ends the step as it would with nothing after it.
        let past = "Action: x\nThought: y\nObservation: z\nAction Input: w";
        let step = parse(past).unwrap();
        assert_eq!((step.thought, step.end), ("", "Action: x".len()));
        let answer = "Final Answer: a\nObservation: b";
        let step = parse(answer).unwrap();
        assert_eq!(
            (step.final_answer.as_deref(), step.end),
            (Some("a\nObservation: b"), answer.len())
        );
    }

    #[test]
    fn a_lone_carriage_return_ends_a_line() {
        let text = "Thought: x\rAction: search\rAction Input: rust\rObservation: y";
        let step = parse(text).unwrap();
        assert_eq!((step.thought, step.action), ("x", Some("search")));
        assert_eq!(
            step.action_input.map(|input| input.decode()),
            Some(ActionInput::Raw("rust".into()))
        );
        assert_eq!(
            &text[..step.end],
            "Thought: x\rAction: search\rAction Input: rust"
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
