//! A deterministic hashing text embedder: semantic memory with no model and no network.
//!
//! Text is normalized to Unicode NFKC (so composed and decomposed accents, full-width letters
//! and ligatures embed like their plain forms), lowercased and split into words (runs of
//! alphanumeric characters and combining marks: see [`is_word_char`]). Features are the
//! word n-grams (1..=`word_ngrams` words) and the character n-grams (`char_min..=char_max`
//! characters) of each word wrapped in `<` and `>` (so prefixes and suffixes are features of
//! their own); n-grams are at most [`MAX_NGRAM`] long. Each feature is hashed with 64-bit
//! FNV-1a (a fixed function: vectors are the same on every machine); the hash picks the
//! dimension and its top bit the sign (signed feature hashing, so collisions cancel out on
//! average). Word features weigh 1, and the character n-grams of one word share a weight of
//! 1 between them, so long words do not drown the words. The sum is L2-normalized; a text
//! with no word at all embeds to zeros.

use std::borrow::Cow;

use numpy::{IntoPyArray, PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use rayon::prelude::*;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

use crate::args::{self, OutOfRange};
use crate::errors::{out_of_memory, run_detached, try_filled, CoreError, CoreResult};
use crate::sync;

/// Texts above which a batch is embedded over rayon threads.
const PARALLEL_TEXTS: usize = 64;
/// The largest `dim`: 2**20, the largest feature space hashing embedders commonly use
/// (scikit-learn's `HashingVectorizer` default). Each text needs `dim` f64 sums while it is
/// embedded (8 MiB at this bound), and a batch returns `dim` float32 values a text.
pub const MAX_DIM: usize = 1 << 20;
/// The longest n-gram, in words (`word_ngrams`) or characters (`char_ngrams`): 32, far
/// beyond the 1 to 6 that hashing embedders use (a longer n-gram matches only its exact
/// text, which the shorter ones match already). A text of `w` words has about `w * n`
/// n-grams up to `n` words long, but `w * w / 2` with no bound: the bound keeps the cost of
/// embedding linear in the length of the text.
pub const MAX_NGRAM: usize = 32;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Settings of the hashing embedder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashing {
    dim: usize,
    /// At most [`MAX_NGRAM`]: a byte holds it (it seeds the hash of each word n-gram).
    word_ngrams: u8,
    char_min: usize,
    char_max: usize,
}

/// `text` in Unicode NFKC; borrowed (no copy) when it already is, as ASCII always is.
fn nfkc(text: &str) -> Cow<'_, str> {
    match is_nfkc_quick(text.chars()) {
        IsNormalized::Yes => Cow::Borrowed(text),
        IsNormalized::No | IsNormalized::Maybe => Cow::Owned(text.nfkc().collect()),
    }
}

/// Whether `c` belongs to a word: alphanumeric, or a combining mark (General_Category M).
/// A mark is part of its letter even when it is not Alphabetic (Thai tone marks, the Indic
/// virama, combining accents NFKC cannot compose): else `ข่าว` (news) and `ข้าว` (rice),
/// cut at their tone marks into the same pieces, would embed identically.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || is_combining_mark(c)
}

#[inline]
fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

impl Hashing {
    /// Validated settings.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when `dim` is 0 or above [`MAX_DIM`], `word_ngrams` is 0 or
    /// above [`MAX_NGRAM`], or the character n-gram range is empty, starts at 0, or has a
    /// bound above [`MAX_NGRAM`] (`char_max = 0` turns character n-grams off).
    pub fn new(
        dim: usize,
        word_ngrams: usize,
        char_min: usize,
        char_max: usize,
    ) -> CoreResult<Self> {
        if dim == 0 || word_ngrams == 0 {
            return Err(CoreError::Memory(
                "dim and word_ngrams must be at least 1".into(),
            ));
        }
        if dim > MAX_DIM {
            return Err(too_large_dim(&dim.to_string()));
        }
        let word_ngrams = u8::try_from(word_ngrams)
            .ok()
            .filter(|&n| usize::from(n) <= MAX_NGRAM)
            .ok_or_else(|| too_long_ngrams("word_ngrams", &word_ngrams.to_string()))?;
        if char_max != 0 && (char_min == 0 || char_min > char_max) {
            return Err(CoreError::Memory(format!(
                "char_ngrams ({char_min}, {char_max}) must satisfy 1 <= min <= max, or max = 0"
            )));
        }
        if char_min.max(char_max) > MAX_NGRAM {
            return Err(too_long_ngrams(
                "char_ngrams",
                &format!("({char_min}, {char_max})"),
            ));
        }
        Ok(Self {
            dim,
            word_ngrams,
            char_min,
            char_max,
        })
    }

    /// Output length.
    pub fn dim(&self) -> usize {
        self.dim
    }

    #[inline]
    fn add(&self, out: &mut [f64], hash: u64, weight: f64) {
        let slot = (hash % self.dim as u64) as usize;
        out[slot] += if hash >> 63 == 1 { -weight } else { weight };
    }

    /// Embeds `text` into `row` (`dim` values, overwritten); `text` is NFKC-normalized first.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when the `dim` sums cannot be allocated.
    pub fn embed_into(&self, text: &str, row: &mut [f32]) -> CoreResult<()> {
        // Sums in f64: weights like 1/3 cancel exactly enough that a text's vector does not
        // depend on rounding noise.
        let mut out = try_filled(self.dim, 0.0f64, "one text's feature sums")?;
        let lower = nfkc(text).to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !is_word_char(c))
            .filter(|w| !w.is_empty())
            .collect();
        // The n of each n-gram (at most MAX_NGRAM, so each costs a bounded number of words
        // to hash) seeds its hash, so that n-grams of different lengths never collide.
        for n in 1..=self.word_ngrams {
            let len = usize::from(n);
            if len > words.len() {
                break;
            }
            let seed = fnv(FNV_OFFSET, &[b'w', n]);
            for gram in words.windows(len) {
                let mut h = seed;
                for (i, w) in gram.iter().enumerate() {
                    if i > 0 {
                        h = fnv(h, b" ");
                    }
                    h = fnv(h, w.as_bytes());
                }
                self.add(&mut out, h, 1.0);
            }
        }
        if self.char_max > 0 {
            let mut padded = String::new();
            let mut bounds = Vec::new();
            // The hash of the n-gram from each start, grown by one character for each n: an
            // n-gram costs the hashing of one character (its last), not of all n.
            let mut hashes = Vec::new();
            let c_seed = fnv(FNV_OFFSET, b"c");
            for w in &words {
                padded.clear();
                padded.push('<');
                padded.push_str(w);
                padded.push('>');
                bounds.clear();
                bounds.extend(padded.char_indices().map(|(i, _)| i));
                bounds.push(padded.len());
                let chars = bounds.len() - 1;
                let longest = self.char_max.min(chars);
                if self.char_min > longest {
                    continue;
                }
                let grams: usize = (self.char_min..=longest).map(|n| chars + 1 - n).sum();
                let weight = 1.0 / grams as f64;
                let bytes = padded.as_bytes();
                // Each start's first `char_min - 1` characters, hashed.
                hashes.clear();
                hashes.extend((0..=chars - self.char_min).map(|start| {
                    fnv(
                        c_seed,
                        &bytes[bounds[start]..bounds[start + self.char_min - 1]],
                    )
                }));
                // Features in the order of n, then start (the order of the sums in `out`).
                for n in self.char_min..=longest {
                    for (start, h) in hashes.iter_mut().enumerate().take(chars + 1 - n) {
                        *h = fnv(*h, &bytes[bounds[start + n - 1]..bounds[start + n]]);
                        self.add(&mut out, *h, weight);
                    }
                }
            }
        }
        let norm = out.iter().map(|x| x * x).sum::<f64>().sqrt();
        let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        for (r, x) in row.iter_mut().zip(&out) {
            *r = (x * inv) as f32;
        }
        Ok(())
    }

    /// Embeds every text: `texts.len()` rows of `dim`, row-major.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when the result (or a text's sums) cannot be allocated: a batch
    /// too large for memory is an error, not an abort of the interpreter.
    pub fn embed<S: AsRef<str> + Sync>(&self, texts: &[S]) -> CoreResult<Vec<f32>> {
        let len = texts
            .len()
            .checked_mul(self.dim)
            .ok_or_else(|| out_of_memory(usize::MAX, "the embeddings"))?;
        let mut out = try_filled(len, 0.0f32, "the embeddings")?;
        let parallel = if texts.len() >= PARALLEL_TEXTS {
            sync::parallel(|_| {
                out.par_chunks_exact_mut(self.dim)
                    .zip(texts.par_iter())
                    .try_for_each(|(row, text)| self.embed_into(text.as_ref(), row))
            })
        } else {
            None
        };
        // Small batches, and any batch without a pool (threads cannot be spawned), run here.
        match parallel {
            Some(done) => done?,
            None => {
                for (text, row) in texts.iter().zip(out.chunks_exact_mut(self.dim)) {
                    self.embed_into(text.as_ref(), row)?;
                }
            }
        }
        Ok(out)
    }
}

/// The error for a `dim` above [`MAX_DIM`]; `dim` is its decimal text.
fn too_large_dim(dim: &str) -> CoreError {
    CoreError::Memory(format!("dim must be at most {MAX_DIM} (2**20), got {dim}"))
}

/// The error for an n-gram length above [`MAX_NGRAM`] given to `what`; `n` is its decimal
/// text.
fn too_long_ngrams(what: &str, n: &str) -> CoreError {
    CoreError::Memory(format!(
        "{what} must be at most {MAX_NGRAM} (the longest n-gram hashed), got {n}"
    ))
}

/// The `dim` argument: an int from 1 to [`MAX_DIM`] (a `bool`, an `int` subclass, is refused).
fn dim_arg(value: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::not_bool(value, |_| {
        CoreError::Memory("dim must be an int, got bool".into())
    })?;
    match args::to_usize(value, "dim")? {
        Ok(dim) if dim >= 1 => Ok(dim), // the upper bound is checked by `Hashing::new`
        Ok(dim) => Err(CoreError::Memory(format!("dim must be at least 1, got {dim}")).into()),
        Err(OutOfRange::Negative(v)) => {
            Err(CoreError::Memory(format!("dim must be at least 1, got {v}")).into())
        }
        Err(OutOfRange::TooLarge(v)) => Err(too_large_dim(&v).into()),
    }
}

/// The `word_ngrams` argument: an int >= 1 (the upper bound, [`MAX_NGRAM`], is checked by
/// `Hashing::new`).
fn word_ngrams_arg(value: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::not_bool(value, |_| {
        CoreError::Memory("word_ngrams must be an int, got bool".into())
    })?;
    match args::to_usize(value, "word_ngrams")? {
        Ok(n) if n >= 1 => Ok(n),
        Ok(n) => Err(CoreError::Memory(format!("word_ngrams must be at least 1, got {n}")).into()),
        Err(OutOfRange::Negative(v)) => {
            Err(CoreError::Memory(format!("word_ngrams must be at least 1, got {v}")).into())
        }
        Err(OutOfRange::TooLarge(v)) => Err(too_long_ngrams("word_ngrams", &v).into()),
    }
}

/// The `char_ngrams` argument: a pair of ints >= 0 (the upper bound, [`MAX_NGRAM`], is
/// checked by `Hashing::new`); anything else is refused: what is not a pair with a
/// `TypeError` (a wrong type, as for the other settings), a bool in it as a bad value.
fn char_ngrams_arg(value: &Bound<'_, PyAny>) -> PyResult<(usize, usize)> {
    let Ok((min, max)) = value.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>() else {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "char_ngrams must be a (min, max) tuple of ints, got {}",
            args::short_repr(value)
        )));
    };
    let bound = |v: &Bound<'_, PyAny>| -> PyResult<usize> {
        args::not_bool(v, |_| {
            CoreError::Memory("char_ngrams must hold ints, got a bool".into())
        })?;
        match args::to_usize(v, "each of char_ngrams")? {
            Ok(n) => Ok(n),
            Err(OutOfRange::Negative(v)) => {
                Err(CoreError::Memory(format!("char_ngrams must be >= 0, got {v}")).into())
            }
            Err(OutOfRange::TooLarge(v)) => Err(too_long_ngrams("char_ngrams", &v).into()),
        }
    };
    Ok((bound(&min)?, bound(&max)?))
}

/// A `HashingEmbedder`'s constructor arguments: `dim`, `word_ngrams`, `char_ngrams`.
type Settings = (usize, u8, (usize, usize));

/// Deterministic text embedder by feature hashing (word and character n-grams), in Rust.
///
/// Needs no model and no network; the same text gives the same vector on every machine.
/// Text is NFKC-normalized and lowercased first, so "é" composed or decomposed, and
/// full-width "ＡＢＣ" and "abc", embed alike. Words are runs of letters, digits and
/// combining marks (a Thai tone mark or an Indic virama stays in its word). Similar
/// wording gives similar vectors (shared words, shared word pieces); it does not know
/// synonyms. Rows are L2-normalized float32; a text with no word (empty, punctuation only)
/// embeds to the zero vector.
///
/// Args:
///     dim: output length, from 1 to 2**20 (1048576).
///     word_ngrams: longest word n-gram hashed (1 = words only), at most 32.
///     char_ngrams: (min, max) lengths of the character n-grams of each word, at most 32;
///         max = 0 turns them off.
///
/// N-grams are at most 32 words or characters long, so that embedding stays linear in the
/// length of the text (longer n-grams would match only their exact text anyway).
///
/// Raises:
///     MemoryStoreError: dim is not between 1 and 2**20 (or is a bool), word_ngrams is not between 1 and
///         32, or an invalid char_ngrams range (min above max, min 0 with max above 0, or
///         a length above 32).
#[pyclass(module = "llm_agent_runtime", name = "HashingEmbedder", frozen)]
pub struct PyHashingEmbedder {
    inner: Hashing,
}

#[pymethods]
impl PyHashingEmbedder {
    #[new]
    #[pyo3(
        signature = (dim=384, word_ngrams=2, char_ngrams=(3, 5)),
        text_signature = "(dim=384, word_ngrams=2, char_ngrams=(3, 5))"
    )]
    fn new(
        #[pyo3(from_py_with = dim_arg)] dim: usize,
        #[pyo3(from_py_with = word_ngrams_arg)] word_ngrams: usize,
        #[pyo3(from_py_with = char_ngrams_arg)] char_ngrams: (usize, usize),
    ) -> PyResult<Self> {
        Ok(Self {
            inner: Hashing::new(dim, word_ngrams, char_ngrams.0, char_ngrams.1)?,
        })
    }

    /// Output length.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// Embeds texts (the GIL is released while hashing).
    ///
    /// Args:
    ///     texts: a sequence of strings.
    ///
    /// Returns:
    ///     float32 array of shape (len(texts), dim), rows L2-normalized.
    ///
    /// Raises:
    ///     MemoryStoreError: `texts` is a single string or holds a non-string or a string
    ///         that is not valid Unicode (a lone surrogate), or the result does not fit in
    ///         memory.
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        if texts.is_instance_of::<pyo3::types::PyString>() {
            return Err(CoreError::Memory(
                "texts must be a sequence of strings, not one string (wrap it in a list)".into(),
            )
            .into());
        }
        let not_strings = || {
            PyErr::from(CoreError::Memory(
                "texts must be a sequence of strings".into(),
            ))
        };
        let texts = args::sequence_of(texts, CoreError::Memory, "texts", |_, item| {
            if !item.is_instance_of::<pyo3::types::PyString>() {
                return Err(not_strings());
            }
            args::text(&item, "texts", CoreError::Memory)
        })?
        .ok_or_else(not_strings)?;
        let n = texts.len();
        let inner = self.inner;
        let rows = run_detached(py, || inner.embed(&texts))?;
        args::load_numpy(py)?;
        rows.into_pyarray(py).reshape([n, inner.dim()])
    }

    fn __repr__(&self) -> String {
        format!(
            "HashingEmbedder(dim={}, word_ngrams={}, char_ngrams=({}, {}))",
            self.inner.dim, self.inner.word_ngrams, self.inner.char_min, self.inner.char_max
        )
    }

    /// Pickles as its settings (immutable: process pools and copies get an equal one).
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Settings)> {
        let inner = &slf.get().inner;
        let settings = (
            inner.dim,
            inner.word_ngrams,
            (inner.char_min, inner.char_max),
        );
        Ok((slf.get_type().into_any(), settings))
    }

    /// Itself: it never changes.
    fn __copy__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Itself: it never changes.
    fn __deepcopy__(slf: Py<Self>, _memo: &Bound<'_, PyAny>) -> Py<Self> {
        slf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn deterministic_normalized_and_similarity_follows_wording() {
        let h = Hashing::new(256, 2, 3, 5).unwrap();
        let texts: Vec<String> = [
            "The cat sat on the mat",
            "the CAT sat on the mat!",
            "A cat was sitting on a mat",
            "Quarterly revenue grew in Europe",
            "",
        ]
        .map(String::from)
        .to_vec();
        let rows = h.embed(&texts).unwrap();
        let row = |i: usize| &rows[i * 256..(i + 1) * 256];
        assert_eq!(row(0), row(1));
        assert!((cosine(row(0), row(0)) - 1.0).abs() < 1e-5);
        assert!(cosine(row(0), row(2)) > cosine(row(0), row(3)) + 0.2);
        assert!(row(4).iter().all(|&x| x == 0.0));
        let many: Vec<String> = (0..200).map(|i| format!("text number {i}")).collect();
        let parallel = h.embed(&many).unwrap();
        let mut one = vec![0.0; 256];
        h.embed_into(&many[150], &mut one).unwrap();
        assert_eq!(&parallel[150 * 256..151 * 256], one.as_slice());
    }

    #[test]
    fn settings_are_validated_and_unicode_is_split_on_characters() {
        assert!(Hashing::new(0, 1, 3, 5).is_err());
        assert!(Hashing::new(8, 0, 3, 5).is_err());
        assert!(Hashing::new(8, 1, 4, 3).is_err());
        assert!(Hashing::new(8, 1, 0, 0).is_ok());
        let h = Hashing::new(64, 1, 2, 3).unwrap();
        let mut out = vec![0.0; 64];
        h.embed_into("héllo wörld ß 日本語", &mut out).unwrap();
        assert!((cosine(&out, &out) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn dim_is_capped_and_oversized_batches_are_errors() {
        assert!(Hashing::new(MAX_DIM, 1, 3, 5).is_ok());
        let err = Hashing::new(MAX_DIM + 1, 1, 3, 5).unwrap_err();
        assert!(err.to_string().contains("at most 1048576"), "{err}");
        let h = Hashing::new(MAX_DIM, 1, 3, 5).unwrap();
        let rows = h.embed(&["hello", ""]).unwrap();
        assert_eq!(rows.len(), 2 * MAX_DIM);
    }

    /// The documented features, each hashed from scratch (in the order of the sums).
    fn from_scratch(h: &Hashing, text: &str) -> Vec<f32> {
        let mut out = vec![0.0f64; h.dim];
        let words: Vec<String> = text
            .to_lowercase()
            .split(|c: char| !is_word_char(c))
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect();
        for n in 1..=usize::from(h.word_ngrams).min(words.len()) {
            for gram in words.windows(n) {
                let seed = fnv(FNV_OFFSET, &[b'w', u8::try_from(n).unwrap()]);
                h.add(&mut out, fnv(seed, gram.join(" ").as_bytes()), 1.0);
            }
        }
        for w in &words {
            let chars: Vec<char> = format!("<{w}>").chars().collect();
            let sizes = h.char_min..=h.char_max.min(chars.len());
            let grams: usize = sizes.clone().map(|n| chars.len() + 1 - n).sum();
            for n in sizes {
                for gram in chars.windows(n) {
                    let gram: String = gram.iter().collect();
                    let hash = fnv(fnv(FNV_OFFSET, b"c"), gram.as_bytes());
                    h.add(&mut out, hash, 1.0 / grams as f64);
                }
            }
        }
        let norm = out.iter().map(|x| x * x).sum::<f64>().sqrt();
        out.iter()
            .map(|x| if norm > 0.0 { (x / norm) as f32 } else { 0.0 })
            .collect()
    }

    #[test]
    fn incremental_hashing_gives_the_features_hashed_from_scratch() {
        let text = "Pneumonoultramicroscopicsilicovolcanoconiosis is a word; \
                    so is Donaudampfschiffahrtsgesellschaftskapitän, and 日本語の文章 too. a b c";
        for (word_ngrams, char_min, char_max) in [(1, 1, 32), (2, 3, 5), (32, 2, 7), (5, 32, 32)] {
            let h = Hashing::new(512, word_ngrams, char_min, char_max).unwrap();
            let mut row = vec![0.0; 512];
            h.embed_into(text, &mut row).unwrap();
            assert_eq!(
                row,
                from_scratch(&h, text),
                "{word_ngrams} {char_min}..{char_max}"
            );
        }
    }

    #[test]
    fn ngram_lengths_are_capped() {
        assert!(Hashing::new(8, MAX_NGRAM, 1, MAX_NGRAM).is_ok());
        for (word_ngrams, char_min, char_max) in [
            (MAX_NGRAM + 1, 3, 5),
            // 257 used to hash as 1 (the seed kept its low byte).
            (257, 3, 5),
            (usize::MAX, 3, 5),
            (1, 3, MAX_NGRAM + 1),
            (1, MAX_NGRAM + 1, 0),
        ] {
            let err = Hashing::new(8, word_ngrams, char_min, char_max).unwrap_err();
            assert!(err.to_string().contains("at most 32"), "{err}");
        }
    }

    #[test]
    fn combining_marks_stay_in_their_word() {
        let h = Hashing::new(128, 1, 0, 0).unwrap();
        let texts = [
            "\u{e02}\u{e48}\u{e32}\u{e27}",
            "\u{e02}\u{e49}\u{e32}\u{e27}",
        ];
        let rows = h.embed(&texts).unwrap();
        // One word each (a single feature), and not the same one.
        assert_eq!(rows[..128].iter().filter(|&&x| x != 0.0).count(), 1);
        assert_ne!(rows[..128], rows[128..]);
    }

    #[test]
    fn nfkc_forms_embed_identically() {
        let h = Hashing::new(128, 2, 3, 5).unwrap();
        let pairs = [
            (
                "d\u{e9}j\u{e0} vu, \u{e7}a va",
                "de\u{301}ja\u{300} vu, c\u{327}a va",
            ),
            ("\u{ff21}\u{ff22}\u{ff23} \u{fb01}le", "abc file"),
        ];
        for (a, b) in pairs {
            let texts = [a.to_owned(), b.to_owned()];
            let rows = h.embed(&texts).unwrap();
            assert_eq!(rows[..128], rows[128..], "{a:?} vs {b:?}");
            assert!(rows.iter().any(|&x| x != 0.0));
        }
    }
}
