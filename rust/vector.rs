//! Cosine top-k search over one contiguous block of normalized vectors.
//!
//! Vectors are normalized on insert, so cosine similarity is a dot product. The scan uses a
//! kernel compiled for AVX2+FMA when the CPU has them (checked once per scan) and a portable
//! one otherwise, keeps a bounded top-k (no full sort), splits large scans over rayon
//! threads, and for float32 batches runs a blocked matrix product with the top-k selection
//! fused into it (see `batch`). Rows may be stored as float32 (exact), float16 or int8 (see
//! `quantized`).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use numpy::{
    IntoPyArray, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArray,
    PyUntypedArrayMethods,
};
use parking_lot::RwLock;
use pyo3::exceptions::{PyTypeError, PyUnicodeEncodeError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyMemoryView};
use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::args::{self, OutOfRange};
use crate::errors::{
    catch_panics, interrupted, out_of_memory, run_detached, run_stoppable, try_reserve, CoreError,
    CoreResult,
};
use crate::sync;

mod batch;
mod originals;
mod quantized;
mod stream;

/// Deterministic pseudo-random values in [-0.5, 0.5) for the kernels' tests.
#[cfg(test)]
pub(crate) fn lcg(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

use originals::Originals;
pub use quantized::Dtype;
use quantized::{Rows, RowsCheck};
use stream::{CrcReader, CrcWriter};

/// Rows below which a single-query scan stays on one thread.
pub const PARALLEL_ROWS: usize = 4_096;
/// Multiply-adds (queries x rows x dim) from which `search_batch` runs in a thread that
/// stops on Ctrl-C: about 10 ms of work, against the tens of microseconds the thread costs
/// (64 queries of 384 against 10,000 rows stay below it).
const STOPPABLE_BATCH_WORK: usize = 1 << 28;
const MAGIC: &[u8; 8] = b"LARVEC\0\x01";
/// Version 2 adds the storage dtype and the re-scoring factor; version 1 files (float32) load.
const FORMAT_VERSION: u32 = 2;
/// Default shortlist factor of int8 search: `k * DEFAULT_RESCORE` rows are re-scored.
pub const DEFAULT_RESCORE: usize = 8;
/// The largest id: searches return ids as int64, so ids stop at `i64::MAX` (2**63 - 1).
pub const MAX_ID: u64 = i64::MAX as u64;
/// Heap sizes (in bytes) from which a search first checks that its top-k heaps fit in memory.
const PROBE_BYTES: usize = 1 << 20;

/// A scored candidate; ordered so that a `BinaryHeap` pops the worst one first.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Hit {
    score: f32,
    row: usize,
}

impl Eq for Hit {}
impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Hit {
    // Reversed: the heap's top is the lowest score (ties: the later row goes first).
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.row.cmp(&other.row))
    }
}

/// Bounded top-k: keeps the `k` best hits seen.
struct TopK {
    k: usize,
    heap: BinaryHeap<Hit>,
}

impl TopK {
    /// A top-`k` with room for `k` hits, allocated infallibly: for tests only (a search
    /// makes its heaps with [`TopK::for_rows`]).
    #[cfg(test)]
    fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// A top-`k` of a scan of `rows` rows: it never holds more than `min(k, rows)` hits, so
    /// room for that many is made, not for `k` (a huge `k` means "all rows", and each of a
    /// parallel scan's tasks sees only its own range), and allocated fallibly.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when the heap cannot be allocated.
    fn for_rows(k: usize, rows: usize) -> CoreResult<Self> {
        let mut hits = Vec::new();
        try_reserve(&mut hits, k.min(rows) + 1, "the top-k heaps")?;
        Ok(Self {
            k,
            heap: BinaryHeap::from(hits),
        })
    }

    /// The top `k` of the hits of `parts` (the heaps of a parallel scan's tasks), in one heap
    /// allocated fallibly at its final size: with a huge `k` ("all rows") the merged heap is
    /// as large as the parts together, and must fail with an error, not abort the process.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when the merged heap cannot be allocated.
    fn merge_all(k: usize, mut parts: Vec<TopK>) -> CoreResult<TopK> {
        if parts.len() == 1 {
            if let Some(top) = parts.pop() {
                return Ok(top);
            }
        }
        let total = parts.iter().map(|p| p.heap.len()).sum::<usize>().min(k);
        let mut hits = Vec::new();
        try_reserve(&mut hits, total, "the top-k heaps")?;
        // Never more than `total` hits are kept: the heap never grows past this room.
        let mut top = TopK {
            k,
            heap: BinaryHeap::from(hits),
        };
        for part in parts {
            for hit in part.heap {
                top.push(hit.score, hit.row);
            }
        }
        Ok(top)
    }

    /// Keeps `(score, row)` if it beats the worst kept hit (higher score, then lower row).
    #[inline]
    fn push(&mut self, score: f32, row: usize) {
        if self.heap.len() < self.k {
            self.heap.push(Hit { score, row });
        } else if let Some(worst) = self.heap.peek() {
            if score > worst.score || (score == worst.score && row < worst.row) {
                self.heap.pop();
                self.heap.push(Hit { score, row });
            }
        }
    }

    /// The score a new hit must beat to enter (minus infinity until `k` hits are kept).
    #[inline]
    fn threshold(&self) -> f32 {
        match self.heap.peek() {
            Some(worst) if self.heap.len() >= self.k => worst.score,
            _ => f32::NEG_INFINITY,
        }
    }

    /// Best first (ties: lower row first).
    ///
    /// Sorted in place: a heap's rows are distinct, so the order is total and an unstable
    /// sort gives the stable one's, without its scratch room (half the hits, allocated
    /// infallibly: a huge `k` aborted the process there).
    fn into_sorted(self) -> Vec<Hit> {
        let mut hits = self.heap.into_vec();
        hits.sort_unstable_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
        hits
    }

    /// Best first, as [`TopK::into_sorted`], with each score clamped to [-1, 1]: the scores
    /// a search reports, as cosines. A stored row is unit length only up to its rounding
    /// (float16 and int8 rows most of all), so a raw dot product may pass 1 or -1 slightly.
    /// Only the kept hits are clamped, after they are ranked by their raw scores: the order
    /// (ties: lower row first) is the unclamped one.
    fn into_results(self) -> Vec<Hit> {
        let mut hits = self.into_sorted();
        for hit in &mut hits {
            hit.score = cosine(hit.score);
        }
        hits
    }

    /// Checks that `heaps` heaps of `k` hits fit in memory before a search makes them: a
    /// huge `k` (read as "all rows") over a large index must fail with an error, not abort
    /// the process. Small heaps are not checked (the check costs an allocation).
    ///
    /// # Errors
    /// [`CoreError::Memory`] when the memory cannot be allocated.
    fn check_fits(heaps: usize, k: usize) -> CoreResult<()> {
        let hits = heaps
            .checked_mul(k.saturating_add(1))
            .ok_or_else(|| out_of_memory(usize::MAX, "the top-k heaps"))?;
        if hits.saturating_mul(std::mem::size_of::<Hit>()) < PROBE_BYTES {
            return Ok(());
        }
        let mut probe: Vec<Hit> = Vec::new();
        probe.try_reserve_exact(hits).map_err(|_| {
            out_of_memory(
                hits.saturating_mul(std::mem::size_of::<Hit>()),
                "the top-k heaps",
            )
        })
    }
}

/// A raw dot product of unit vectors reported as a cosine: clamped to [-1, 1] (NaN, which
/// normalized rows and queries never give, passes through).
#[inline]
fn cosine(score: f32) -> f32 {
    score.clamp(-1.0, 1.0)
}

#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    // Four 8-lane accumulators: enough independent FMAs to hide their latency.
    let mut acc = [0.0f32; 32];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..32 {
            acc[j] = x[j].mul_add(y[j], acc[j]);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum = x.mul_add(*y, sum);
    }
    sum
}

/// [`dot_avx2`] in 16-lane registers: twice the work an instruction, which shows on rows in
/// cache (an index of a few thousand rows); a scan from memory is bound by its bandwidth.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::{
        _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_maskz_loadu_ps,
        _mm512_reduce_add_ps, _mm512_setzero_ps,
    };
    let mut acc = [_mm512_setzero_ps(); 4];
    let (ca, cb) = (a.chunks_exact(64), b.chunks_exact(64));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for (j, sum) in acc.iter_mut().enumerate() {
            // SAFETY: `x` and `y` hold 64 floats; 16 of each are read from 16 * j.
            let (p, q) = unsafe {
                (
                    _mm512_loadu_ps(x.as_ptr().add(16 * j)),
                    _mm512_loadu_ps(y.as_ptr().add(16 * j)),
                )
            };
            *sum = _mm512_fmadd_ps(p, q, *sum);
        }
    }
    let pairs = (_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let mut sum = _mm512_add_ps(pairs.0, pairs.1);
    // The rest (up to 63 values) 16 at a time, then the last few under a mask: one by one,
    // they would cost more than the chunks (dimensions such as 50, 100 or 300).
    let (ca, cb) = (ra.chunks_exact(16), rb.chunks_exact(16));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        // SAFETY: `x` and `y` hold 16 floats.
        let (p, q) = unsafe { (_mm512_loadu_ps(x.as_ptr()), _mm512_loadu_ps(y.as_ptr())) };
        sum = _mm512_fmadd_ps(p, q, sum);
    }
    let tail = ta.len().min(tb.len());
    if tail > 0 {
        let mask = (1u16 << tail) - 1; // tail < 16
                                       // SAFETY: only the first `tail` lanes are read, and they are inside `ta` and `tb`
                                       // (a masked load does not touch the lanes it leaves out).
        let (p, q) = unsafe {
            (
                _mm512_maskz_loadu_ps(mask, ta.as_ptr()),
                _mm512_maskz_loadu_ps(mask, tb.as_ptr()),
            )
        };
        sum = _mm512_fmadd_ps(p, q, sum);
    }
    _mm512_reduce_add_ps(sum)
}

/// Scores `rows` (a slice of whole rows starting at row `first`) against `query` into `top`.
fn scan_rows(rows: &[f32], dim: usize, first: usize, query: &[f32], top: &mut TopK) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        #[allow(unsafe_code)]
        unsafe {
            scan_rows_avx512(rows, dim, first, query, top);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        #[allow(unsafe_code)]
        unsafe {
            scan_rows_avx2(rows, dim, first, query, top);
        }
        return;
    }
    for (i, row) in rows.chunks_exact(dim).enumerate() {
        top.push(dot_portable(row, query), first + i);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn scan_rows_avx2(rows: &[f32], dim: usize, first: usize, query: &[f32], top: &mut TopK) {
    for (i, row) in rows.chunks_exact(dim).enumerate() {
        quantized::prefetch(rows, (i + quantized::PREFETCH_ROWS) * dim, dim * 4);
        top.push(dot_avx2(row, query), first + i);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn scan_rows_avx512(rows: &[f32], dim: usize, first: usize, query: &[f32], top: &mut TopK) {
    for (i, row) in rows.chunks_exact(dim).enumerate() {
        quantized::prefetch(rows, (i + quantized::PREFETCH_ROWS) * dim, dim * 4);
        top.push(dot_avx512(row, query), first + i);
    }
}

/// Runs `scan(start, end, top)` over row ranges covering `0..n` (over rayon threads when `n`
/// reaches [`PARALLEL_ROWS`]) and merges the ranges' top `k`.
///
/// # Errors
/// [`CoreError::Memory`] when the merged top `k` cannot be allocated (see
/// [`TopK::merge_all`]).
fn scan_split(
    n: usize,
    k: usize,
    scan: impl Fn(usize, usize, &mut TopK) + Sync,
) -> CoreResult<TopK> {
    if n < PARALLEL_ROWS {
        let mut top = TopK::for_rows(k, n)?;
        scan(0, n, &mut top);
        return Ok(top);
    }
    let parallel = |threads: usize| {
        let per_task = PARALLEL_ROWS.max(n.div_ceil(threads));
        (0..n.div_ceil(per_task))
            .into_par_iter()
            .map(|t| {
                let (start, end) = (t * per_task, ((t + 1) * per_task).min(n));
                let mut top = TopK::for_rows(k, end - start)?;
                scan(start, end, &mut top);
                Ok(top)
            })
            .collect::<CoreResult<Vec<TopK>>>()
    };
    match sync::parallel(parallel) {
        Some(parts) => TopK::merge_all(k, parts?),
        None => {
            let mut top = TopK::for_rows(k, n)?;
            scan(0, n, &mut top);
            Ok(top)
        }
    }
}

/// Why a vector with a non-finite value is refused. A number past float32's range becomes
/// infinite as it is read (a Python float of 1e39, say), so the caller may have given none.
pub(crate) const NOT_FINITE: &str =
    "contains NaN or infinite values (or values beyond float32's range, about ±3.4e38)";

/// Normalizes `v` in place; refuses non-finite values and zero vectors.
///
/// The norm is computed in f64. Scaling multiplies by `1 / norm` in float32 when that is a
/// normal float32, and otherwise (norms below about 2.9e-39, where it would overflow to
/// infinity, or above about 8.5e37, where it would be subnormal and imprecise) in f64: each
/// `x / norm` is at most 1, so it always fits.
///
/// # Errors
/// [`CoreError::Memory`] naming `what` when `v` has NaN/inf values or is zero.
pub(crate) fn normalize(v: &mut [f32], what: &str) -> CoreResult<()> {
    if v.iter().any(|x| !x.is_finite()) {
        return Err(CoreError::Memory(format!("{what} {NOT_FINITE}")));
    }
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return Err(CoreError::Memory(format!(
            "{what} is the zero vector: cosine similarity is undefined"
        )));
    }
    let inv = 1.0 / norm; // finite: norm >= the smallest subnormal float32, 1.4e-45
    let inv32 = inv as f32;
    if inv32.is_normal() {
        v.iter_mut().for_each(|x| *x *= inv32); // the common case, at float32 speed
    } else {
        v.iter_mut().for_each(|x| *x = (f64::from(*x) * inv) as f32);
    }
    Ok(())
}

/// The index proper: ids, their rows (normalized, contiguous), and id -> row.
#[derive(Debug, PartialEq)]
pub struct Index {
    dim: usize,
    ids: Vec<u64>,
    vectors: Rows,
    /// float32 copies kept only by int8 indexes built with `exact_rescore`.
    originals: Option<Originals>,
    rescore: usize,
    rows: FxHashMap<u64, usize>,
}

impl Index {
    /// An empty float32 index of `dim`-dimensional vectors.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when `dim` is 0.
    pub fn new(dim: usize) -> CoreResult<Self> {
        Self::with_dtype(dim, Dtype::F32, DEFAULT_RESCORE, false)
    }

    /// An empty index storing its rows as `dtype`. int8 searches re-score `k * rescore` rows,
    /// against float32 copies of the rows when `exact_rescore` (kept beside the codes), else
    /// against the dequantized codes.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when `dim` or `rescore` is 0 or above `u32::MAX` (the saved
    /// format stores both as 32 bits), or `exact_rescore` is asked of a dtype other than int8.
    pub fn with_dtype(
        dim: usize,
        dtype: Dtype,
        rescore: usize,
        exact_rescore: bool,
    ) -> CoreResult<Self> {
        Self::with_storage(dim, dtype, rescore, exact_rescore, None)
    }

    /// As [`Index::with_dtype`]; with `originals_path` (int8 only, implies `exact_rescore`)
    /// the float32 copies live in that file (created or truncated) instead of in memory.
    ///
    /// # Errors
    /// As [`Index::with_dtype`], and [`CoreError::Persistence`] when the file cannot be
    /// created or another index holds it.
    pub fn with_storage(
        dim: usize,
        dtype: Dtype,
        rescore: usize,
        exact_rescore: bool,
        originals_path: Option<&str>,
    ) -> CoreResult<Self> {
        let exact_rescore = exact_rescore || originals_path.is_some();
        let max = u32::MAX as usize;
        if dim == 0 || dim > max {
            return Err(CoreError::Memory(format!(
                "dim must be between 1 and {max}, got {dim}"
            )));
        }
        if rescore == 0 || rescore > max {
            return Err(CoreError::Memory(format!(
                "rescore must be between 1 and {max}, got {rescore}"
            )));
        }
        if exact_rescore && dtype != Dtype::I8 {
            return Err(CoreError::Memory(format!(
                "exact_rescore (and originals_path) apply to dtype \"int8\" only, not {:?}",
                dtype.name()
            )));
        }
        let originals = match originals_path {
            Some(path) => Some(Originals::in_file(path, dim)?),
            None => exact_rescore.then(|| Originals::Memory(Vec::new())),
        };
        Ok(Self {
            dim,
            ids: Vec::new(),
            vectors: Rows::new(dtype),
            originals,
            rescore,
            rows: FxHashMap::default(),
        })
    }

    /// Whether int8 searches re-score against kept float32 copies.
    pub fn exact_rescore(&self) -> bool {
        self.originals.is_some()
    }

    /// How rows are stored.
    pub fn dtype(&self) -> Dtype {
        self.vectors.dtype()
    }

    /// Shortlist factor of int8 searches.
    pub fn rescore(&self) -> usize {
        self.rescore
    }

    /// The file holding the float32 copies, when they are kept in one.
    pub fn originals_path(&self) -> Option<&str> {
        self.originals.as_ref().and_then(Originals::path)
    }

    /// Bytes of memory held by the ids and the rows (the id -> row map aside; float32 copies
    /// kept in a file take none).
    pub fn nbytes(&self) -> usize {
        self.ids.len() * 8
            + self.vectors.nbytes()
            + self
                .originals
                .as_ref()
                .map_or(0, Originals::nbytes_in_memory)
    }

    /// Vector length.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Adds or replaces vectors (`vectors` is `ids.len()` rows of `dim`, normalized in place:
    /// the caller's own copy); all or nothing.
    ///
    /// # Errors
    /// [`CoreError::Memory`] on a shape mismatch, an id above [`MAX_ID`], a duplicate id in
    /// the batch, or a row that is not finite or is zero; [`CoreError::Persistence`] when
    /// float32 copies kept in a file cannot be written (new rows are then not added; a
    /// failure while overwriting rows leaves the copies marked broken), or belong to another
    /// process (this one is its `fork()`: nothing changes).
    pub fn add(&mut self, ids: &[u64], mut normalized: Vec<f32>) -> CoreResult<()> {
        if normalized.len() != ids.len() * self.dim {
            return Err(CoreError::Memory(format!(
                "expected {} vectors of dimension {}, got {} values",
                ids.len(),
                self.dim,
                normalized.len()
            )));
        }
        // Every buffer sized by the input is allocated fallibly: a batch (or an index) that
        // does not fit in memory is a MemoryStoreError, not an abort of the interpreter.
        let mut seen = FxHashMap::default();
        seen.try_reserve(ids.len())
            .map_err(|_| out_of_memory(ids.len().saturating_mul(16), "the batch's id table"))?;
        for (i, (row, id)) in normalized.chunks_exact_mut(self.dim).zip(ids).enumerate() {
            if *id > MAX_ID {
                return Err(CoreError::Memory(format!(
                    "id {id} is out of range: ids go from 0 to 2**63 - 1 (searches return \
                     them as int64)"
                )));
            }
            if seen.insert(*id, i).is_some() {
                return Err(CoreError::Memory(format!(
                    "id {id} appears twice in one add"
                )));
            }
            normalize(row, &format!("vector {i} (id {id})"))?;
        }
        let new_rows = ids.iter().filter(|id| !self.rows.contains_key(id)).count();
        // Memory for the grown index before any copy is written: a copies file appended to
        // and then an index that cannot grow would be out of step, row for row.
        try_reserve(&mut self.ids, new_rows, "the ids")?;
        self.vectors.reserve(new_rows, self.dim)?;
        self.rows
            .try_reserve(new_rows)
            .map_err(|_| out_of_memory(new_rows.saturating_mul(16), "the id -> row table"))?;
        if let Some(originals) = &mut self.originals {
            // The copies first, new rows before replaced ones: a failed append changes nothing.
            originals.reserve(new_rows, self.dim)?;
            let rows = || normalized.chunks_exact(self.dim).zip(ids);
            let known = &self.rows;
            originals.append(
                rows()
                    .filter(|(_, id)| !known.contains_key(id))
                    .map(|(row, _)| row),
            )?;
            for (row, id) in rows() {
                if let Some(&r) = self.rows.get(id) {
                    originals.set(r, row)?;
                }
            }
        }
        for (row, &id) in normalized.chunks_exact(self.dim).zip(ids) {
            match self.rows.get(&id) {
                Some(&r) => self.vectors.set(r, row),
                None => {
                    self.rows.insert(id, self.ids.len());
                    self.ids.push(id);
                    self.vectors.push(row);
                }
            }
        }
        Ok(())
    }

    /// Removes vectors by id, O(1) each (the last row moves into the hole); all or nothing.
    ///
    /// # Errors
    /// [`CoreError::Memory`] naming the first unknown id, or the first id given twice (as
    /// `add` refuses one: nothing changes); [`CoreError::Persistence`] when float32 copies
    /// kept in a file belong to another process (this one is its `fork()`), or the file's
    /// length was changed from outside (nothing changes; the copies are marked broken), or
    /// they cannot be updated (the vectors are removed, and the copies marked broken).
    pub fn remove(&mut self, ids: &[u64]) -> CoreResult<()> {
        let mut seen = rustc_hash::FxHashSet::default();
        seen.try_reserve(ids.len())
            .map_err(|_| out_of_memory(ids.len().saturating_mul(8), "the batch's id table"))?;
        for id in ids {
            if !self.rows.contains_key(id) {
                return Err(CoreError::Memory(format!("cannot remove unknown id {id}")));
            }
            if !seen.insert(*id) {
                return Err(CoreError::Memory(format!(
                    "id {id} appears twice in one remove"
                )));
            }
        }
        if let Some(originals) = &mut self.originals {
            // Copies another process owns (through fork), or a file cut short from outside,
            // refuse before any row moves. (The last row's removal reads nothing: such a file
            // would be grown back with zeros, scored as rows.)
            originals.check_process()?;
            originals.check_unchanged()?;
        }
        let mut copies_failed = None;
        for id in ids {
            let Some(row) = self.rows.remove(id) else {
                continue; // unreachable: every id was checked known and given once
            };
            let last = self.ids.len() - 1;
            if row != last {
                let moved = self.ids[last];
                self.ids[row] = moved;
                self.vectors.copy_row(last, row, self.dim);
                self.rows.insert(moved, row);
            }
            self.ids.pop();
            self.vectors.truncate(last, self.dim);
            if let (Some(originals), None) = (&mut self.originals, &copies_failed) {
                copies_failed = originals.swap_remove(row, self.dim).err();
            }
        }
        copies_failed.map_or(Ok(()), Err)
    }

    /// The stored vector of `id` (normalized; dequantized for compressed storage).
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when float32 copies kept in a file cannot be read.
    pub fn get(&self, id: u64) -> CoreResult<Option<Vec<f32>>> {
        let Some(&r) = self.rows.get(&id) else {
            return Ok(None);
        };
        Ok(Some(match &self.originals {
            Some(originals) => originals.row(r, self.dim)?,
            None => self.vectors.row(r, self.dim),
        }))
    }

    fn check_query(&self, query: &[f32], k: usize) -> CoreResult<Vec<f32>> {
        if k == 0 {
            return Err(CoreError::Memory("k must be at least 1".into()));
        }
        if query.len() != self.dim {
            return Err(CoreError::Memory(format!(
                "query has dimension {}, the index has {}",
                query.len(),
                self.dim
            )));
        }
        let mut q = query.to_vec();
        normalize(&mut q, "query")?;
        Ok(q)
    }

    /// The `k` most similar vectors to `query`: (ids, cosine scores in [-1, 1]), best first.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when `k` is 0 or the query has the wrong dimension, is not
    /// finite, or is zero; [`CoreError::Persistence`] when float32 copies kept in a file
    /// cannot be read for re-scoring (or are marked broken).
    pub fn search(&self, query: &[f32], k: usize) -> CoreResult<(Vec<u64>, Vec<f32>)> {
        let q = self.check_query(query, k)?;
        let width = k.min(self.len());
        TopK::check_fits(1, width)?;
        let hits = self.top_k(&q, width)?.into_results();
        // Allocated fallibly, as `search_batch`'s: with a huge `k` they are as long as the
        // index, and may not fit beside the hits.
        let mut ids = Vec::new();
        let mut scores = Vec::new();
        try_reserve(&mut ids, hits.len(), "the result ids")?;
        try_reserve(&mut scores, hits.len(), "the result scores")?;
        ids.extend(hits.iter().map(|h| self.ids[h.row]));
        scores.extend(hits.iter().map(|h| h.score));
        Ok((ids, scores))
    }

    /// The top `k` rows for the normalized query `q`, in the index's storage form; `k` is at
    /// most `len` (heaps reserve room for `k` hits).
    fn top_k(&self, q: &[f32], k: usize) -> CoreResult<TopK> {
        let dim = self.dim;
        Ok(match &self.vectors {
            Rows::F32(data) => scan_split(self.len(), k, |start, end, top| {
                scan_rows(&data[start * dim..end * dim], dim, start, q, top);
            })?,
            Rows::F16(data) => scan_split(self.len(), k, |start, end, top| {
                quantized::scan_f16(&data[start * dim..end * dim], dim, start, q, top);
            })?,
            Rows::I8 { codes, scales } => {
                let qi = quantized::quantize_query(q);
                let width = k.saturating_mul(self.rescore).min(self.len());
                // A query whose int8 form is mostly zeros would rank every row alike (a
                // shortlist of arbitrary rows, exact copies or not): it scans the codes with
                // the float32 query instead.
                let shortlist = if quantized::query_codes_lose_too_much(q, &qi) {
                    scan_split(self.len(), width, |start, end, top| {
                        quantized::scan_i8_float(
                            &codes[start * dim..end * dim],
                            &scales[start..end],
                            dim,
                            start,
                            q,
                            top,
                        );
                    })?
                } else {
                    scan_split(self.len(), width, |start, end, top| {
                        quantized::scan_i8(
                            &codes[start * dim..end * dim],
                            &scales[start..end],
                            dim,
                            start,
                            &qi,
                            top,
                        );
                    })?
                };
                // Fallibly, as every heap of a search: with a huge `k` the shortlist holds
                // every row, and this heap as many beside it.
                let mut top = TopK::for_rows(k, shortlist.heap.len())?;
                for hit in shortlist.into_sorted() {
                    let r = hit.row;
                    let score = match &self.originals {
                        Some(originals) => originals.dot(r, q)?,
                        None => quantized::rescore_i8(&codes[r * dim..(r + 1) * dim], scales[r], q),
                    };
                    top.push(score, r);
                }
                top
            }
        })
    }

    /// `search` for each of `queries` (`m` rows of `dim`): ids and scores, `m` rows of
    /// `min(k, len)` each. Stops once `stop` is set (a big batch may take seconds): looked
    /// at per query, or per block of rows of a fused scan.
    ///
    /// # Errors
    /// As [`Index::search`], for any query; [`interrupted`] when stopped.
    pub fn search_batch(
        &self,
        queries: &[f32],
        k: usize,
        stop: &AtomicBool,
    ) -> CoreResult<(Vec<u64>, Vec<f32>, usize)> {
        if k == 0 {
            return Err(CoreError::Memory("k must be at least 1".into()));
        }
        if !queries.len().is_multiple_of(self.dim) {
            return Err(CoreError::Memory(format!(
                "queries have dimension {}, the index has {}",
                queries.len(),
                self.dim
            )));
        }
        // The normalized queries, in one buffer (allocated fallibly, as are the results).
        let mut qs = Vec::new();
        try_reserve(&mut qs, queries.len(), "a normalized copy of the queries")?;
        qs.extend_from_slice(queries);
        for q in qs.chunks_exact_mut(self.dim) {
            normalize(q, "query")?;
        }
        let m = qs.len() / self.dim;
        let width = k.min(self.len());
        let total = m
            .checked_mul(width)
            .ok_or_else(|| out_of_memory(usize::MAX, "the results"))?;
        let mut ids = Vec::new();
        let mut scores = Vec::new();
        try_reserve(&mut ids, total, "the result ids")?;
        try_reserve(&mut scores, total, "the result scores")?;
        TopK::check_fits(m, width)?;
        let tops: Vec<TopK> = match &self.vectors {
            Rows::F32(data) if m >= 2 => {
                batch::search_batch_fused(data, self.dim, &qs, width, stop)?
            }
            _ => qs
                .chunks_exact(self.dim)
                .map(|q| {
                    if stop.load(AtomicOrdering::Relaxed) {
                        return Err(interrupted());
                    }
                    self.top_k(q, width)
                })
                .collect::<CoreResult<_>>()?,
        };
        for top in tops {
            for hit in top.into_results() {
                ids.push(self.ids[hit.row]);
                scores.push(hit.score);
            }
        }
        Ok((ids, scores, width))
    }

    /// Writes the index: magic, version, dim, dtype code, rescore, flags (1: float32 copies
    /// follow the rows), count, ids, rows, [copies], then a CRC-32 of all of it.
    ///
    /// Each section is streamed to the file (no copy of the index is built in memory).
    ///
    /// # Errors
    /// [`CoreError::Persistence`] on an I/O failure, when `path` holds the float32 copies of
    /// another index (in this process or another: replacing the file would take it from that
    /// index), or when float32 copies kept in a file cannot be read (another process's,
    /// through `fork()`, included);
    /// [`CoreError::Memory`] when `path` is the file of this index's float32 copies
    /// (`originals_path`), as [`Index::load`] refuses the same file for both, or when the
    /// save's buffer (1 MiB) cannot be allocated.
    pub fn save(&self, path: &str) -> CoreResult<()> {
        let target = save_target(path)?;
        if self
            .originals_path()
            .is_some_and(|originals| same_file(&target, originals))
        {
            // Checked before anything is written: the rename would replace the copies file
            // with the index, and the copies (still written to the replaced file, which no
            // name reaches any more) would be lost with the process.
            return Err(CoreError::Memory(format!(
                "cannot save the index to {path}: it is the index's own originals_path, \
                 which holds its float32 copies (save the index to another file)"
            )));
        }
        if originals::in_use(&target) {
            // Replacing the file would take it from the index holding it: that index goes on
            // with a file no name reaches, and another load could take (and empty) the new one.
            return Err(CoreError::Persistence(format!(
                "cannot save the index to {path}: the file is in use by another index, as its \
                 originals_path (save the index to another file)"
            )));
        }
        let io = |e: std::io::Error| CoreError::Persistence(format!("cannot write {path}: {e}"));
        // Write beside, then rename: a crash never leaves a half-written index in place. The
        // temporary name is unique to this save, so concurrent saves to one path never share
        // it, and it is removed again when the save fails.
        let tmp = unique_temp_path(&target);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io)?;
        let written = self
            .write_to(file, path)
            .and_then(|()| std::fs::rename(&tmp, &target).map_err(io));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp); // best effort: the save failed anyway
        }
        written
    }

    /// Writes the index and the CRC-32 of all of it to `file`, then syncs it; `path` names
    /// the target in errors. Every section is streamed, a chunk at a time: an index that fits
    /// in memory once is saved without room for a second copy of it.
    fn write_to(&self, file: std::fs::File, path: &str) -> CoreResult<()> {
        let io = |e: std::io::Error| CoreError::Persistence(format!("cannot write {path}: {e}"));
        let mut scratch = stream::chunk_buffer()?;
        let mut out = CrcWriter {
            inner: std::io::BufWriter::new(file),
            crc: crc32fast::Hasher::new(),
        };
        let header = [
            FORMAT_VERSION,
            self.dim as u32,
            self.dtype().code(),
            self.rescore as u32,
            u32::from(self.originals.is_some()),
        ];
        out.write_all(MAGIC).map_err(io)?;
        for field in header {
            out.write_all(&field.to_le_bytes()).map_err(io)?;
        }
        out.write_all(&(self.ids.len() as u64).to_le_bytes())
            .map_err(io)?;
        stream::write_le(&self.ids, u64::to_le_bytes, &mut scratch, &mut out).map_err(io)?;
        self.vectors.write_le(&mut scratch, &mut out).map_err(io)?;
        if let Some(originals) = &self.originals {
            originals.write_le(&mut scratch, &mut out)?;
        }
        let crc = out.crc.clone().finalize();
        out.write_all(&crc.to_le_bytes()).map_err(io)?;
        let file = out.inner.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)
    }

    /// Reads an index written by [`Index::save`] (format version 1 or 2); with
    /// `originals_path`, its float32 copies go to that file instead of memory.
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when the file cannot be read, is not a regular file (a named
    /// pipe would block the load), is not an index, has an unknown
    /// format version or dtype, is truncated, fails its checksum, or holds an id above
    /// [`MAX_ID`], or stores a value the index never writes (not finite, an int8 code of
    /// -128, or a row that is not of unit length: see [`Rows::invalid_values`]), or
    /// `originals_path` is given for an index saved without float32 copies,
    /// cannot be written, or is in use by another index; [`CoreError::Memory`] when
    /// `originals_path` is the index file itself, or the index does not fit in memory (it
    /// needs room for itself only: the file is read a chunk at a time).
    pub fn load(path: &str, originals_path: Option<&str>) -> CoreResult<Self> {
        if originals_path.is_some_and(|file| same_file(path, file)) {
            // Checked before anything is opened: the copies file is truncated when it opens.
            return Err(CoreError::Memory(format!(
                "originals_path must not be the index file itself ({path})"
            )));
        }
        Self::read_file(path, originals_path).map_err(|e| match e {
            // Only allocations fail with a memory error here: say which load ran out.
            CoreError::Memory(why) => CoreError::Memory(format!("cannot load {path}: {why}")),
            other => other,
        })
    }

    /// [`Index::load`] once the paths are checked. The file is read front to back in chunks,
    /// each section straight into the buffer it fills (allocated fallibly, at a size checked
    /// against the file's length first), computing the CRC-32 as it goes.
    ///
    /// The checks, and the error each file gets, are those of reading the whole file first
    /// and checking its checksum before anything else: a fault in the structure (a size, a
    /// code) found before the checksum is read is reported as a checksum mismatch when the
    /// checksum fails (see [`Index::corrupt_or`]), and values are checked once it holds.
    ///
    /// # Errors
    /// As [`Index::load`]; [`CoreError::Memory`] when the index does not fit in memory.
    fn read_file(path: &str, originals_path: Option<&str>) -> CoreResult<Self> {
        let bad = |why: String| CoreError::Persistence(format!("cannot load {path}: {why}"));
        let size = || "size does not match its header".to_owned();
        // Opened without waiting: a named pipe (or a device) would block `open` until a writer
        // came, hanging the load. Reads of a regular file ignore the flag.
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NONBLOCK);
        }
        let file = options.open(path).map_err(|e| bad(e.to_string()))?;
        let metadata = file.metadata().map_err(|e| bad(e.to_string()))?;
        if !metadata.is_file() {
            return Err(bad("not a vector index file (not a regular file)".into()));
        }
        let len = metadata.len();
        let mut input = CrcReader::new(file, path)?;
        if len < 28 || input.read(8)? != MAGIC.as_slice() {
            return Err(bad("not a vector index file".into()));
        }
        let version = u32_le(input.read(4)?);
        if version != 1 && version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version}, expected 1 or {FORMAT_VERSION}"
            )));
        }
        // Everything but the checksum, which ends the file.
        let body = len - 4;
        // Version 1: float32 rows and no rescore field.
        let (dim, dtype, rescore, exact_rescore, header) = if version == 1 {
            (
                u32_le(input.read(4)?),
                Dtype::F32,
                DEFAULT_RESCORE,
                false,
                16,
            )
        } else {
            if body < 36 {
                return Err(Self::corrupt_or(&mut input, body, size()));
            }
            let fields = input.read(16)?;
            let (dim, code, rescore, flags) = (
                u32_le(&fields[..4]),
                u32_le(&fields[4..8]),
                u32_le(&fields[8..12]),
                u32_le(&fields[12..]),
            );
            let Some(dtype) = Dtype::from_code(code) else {
                let why = format!("unknown dtype code {code}");
                return Err(Self::corrupt_or(&mut input, body, why));
            };
            let exact_rescore = match flags {
                0 => false,
                1 if dtype == Dtype::I8 => true,
                flags => {
                    let why = format!("unknown flags {flags}");
                    return Err(Self::corrupt_or(&mut input, body, why));
                }
            };
            (dim, dtype, rescore as usize, exact_rescore, 28)
        };
        let dim = dim as usize;
        let count = input.read(8)?;
        let count = u64::from_le_bytes([
            count[0], count[1], count[2], count[3], count[4], count[5], count[6], count[7],
        ]);
        let Ok(count) = usize::try_from(count) else {
            let why = "header sizes overflow".to_owned();
            return Err(Self::corrupt_or(&mut input, body, why));
        };
        // Section ends, checked against the file's length before anything is allocated.
        let end = |start: u64, unit: usize| {
            (count as u64)
                .checked_mul(unit as u64)
                .and_then(|n| n.checked_add(start))
        };
        let Some(ids_end) = end(header + 8, 8).filter(|&end| end <= body) else {
            return Err(Self::corrupt_or(&mut input, body, size()));
        };
        if dim == 0 || rescore == 0 {
            let why = "dim and rescore must be at least 1".to_owned();
            return Err(Self::corrupt_or(&mut input, body, why));
        }
        let rows_end = end(ids_end, dtype.row_bytes(dim)).filter(|&end| end <= body);
        let copies_end = match (rows_end, exact_rescore) {
            (Some(rows_end), true) => end(rows_end, dim * 4),
            (rows_end, _) => rows_end,
        };
        let (Some(rows_end), true) = (rows_end, copies_end == Some(body)) else {
            // An id above MAX_ID comes before the rows in the file, and so among the faults.
            let mut above = None;
            input.read_chunks(ids_end - (header + 8), |chunk| {
                above = above.or_else(|| ids_le(chunk).find(|&id| id > MAX_ID));
                Ok(())
            })?;
            let why = above.map_or_else(size, |id| format!("id {id} is above 2**63 - 1"));
            return Err(Self::corrupt_or(&mut input, body, why));
        };
        let mut ids = Vec::new();
        try_reserve(&mut ids, count, "the ids")?;
        input.read_chunks(ids_end - (header + 8), |chunk| {
            ids.extend(ids_le(chunk));
            Ok(())
        })?;
        if let Some(id) = ids.iter().find(|&&id| id > MAX_ID) {
            let why = format!("id {id} is above 2**63 - 1");
            return Err(Self::corrupt_or(&mut input, body, why));
        }
        let Some(vectors) = Rows::read_le(dtype, count, dim, &mut input)? else {
            return Err(Self::corrupt_or(&mut input, body, size()));
        };
        // The float32 copies: checked as they stream by, then kept in memory, or (with
        // `originals_path`) copied to their file once the whole index passed its checks
        // (opening that file empties it, so a failed load must not get that far).
        let mut copies_check = RowsCheck::new(dim);
        let mut copies_crc = crc32fast::Hasher::new();
        let mut copies = match (exact_rescore, originals_path) {
            (false, _) => None,
            (true, Some(_)) => {
                input.read_chunks(body - rows_end, |chunk| {
                    copies_check.feed_le(chunk);
                    copies_crc.update(chunk);
                    Ok(())
                })?;
                None
            }
            (true, None) => {
                let mut copies = Originals::Memory(Vec::new());
                copies.reserve(count, dim)?;
                copies.append_le(|keep| {
                    input.read_chunks(body - rows_end, |chunk| {
                        copies_check.feed_le(chunk);
                        keep(chunk)
                    })
                })?;
                Some(copies)
            }
        };
        let (computed, stored) = input.checksums()?;
        if computed != stored {
            return Err(bad(
                "checksum mismatch: the file is corrupt or truncated".into()
            ));
        }
        // A crafted or damaged file: values the index never stores would skew every score.
        if let Some(why) = vectors.invalid_values(dim) {
            return Err(bad(why));
        }
        if copies_check.not_finite {
            return Err(bad("a float32 copy is not finite".into()));
        }
        if let Some(why) = copies_check.not_unit {
            return Err(bad(format!("float32 copy: {why}")));
        }
        if originals_path.is_some() && !exact_rescore {
            return Err(bad(
                "originals_path is given but the index has no float32 copies \
                 (it was not built with exact_rescore)"
                    .into(),
            ));
        }
        let mut rows = FxHashMap::default();
        rows.try_reserve(count)
            .map_err(|_| out_of_memory(count.saturating_mul(16), "the id -> row table"))?;
        for (r, &id) in ids.iter().enumerate() {
            if rows.insert(id, r).is_some() {
                return Err(bad("duplicate ids".into()));
            }
        }
        if let (true, Some(file)) = (exact_rescore, originals_path) {
            let mut in_file = Originals::in_file(file, dim)?;
            input.seek(rows_end)?;
            in_file.append_le(|write| input.read_chunks(body - rows_end, write))?;
            if input.crc() != copies_crc.finalize() {
                return Err(bad("the file changed while it was being loaded".into()));
            }
            copies = Some(in_file);
        }
        Ok(Self {
            dim,
            ids,
            vectors,
            originals: copies,
            rescore,
            rows,
        })
    }

    /// The error of a structural fault `why` found before the checksum was read (the file's
    /// first `body` bytes precede it): a checksum mismatch when the checksum fails, as every
    /// damaged file is reported, else `why` (a file crafted with a valid checksum).
    fn corrupt_or<R: std::io::Read + std::io::Seek>(
        input: &mut CrcReader<R>,
        body: u64,
        why: String,
    ) -> CoreError {
        let why = match input.checksum_holds(body) {
            Ok(false) => "checksum mismatch: the file is corrupt or truncated".to_owned(),
            Ok(true) | Err(_) => why,
        };
        input.error(&why)
    }
}

/// The little-endian `u32` of the first 4 bytes of `bytes`.
fn u32_le(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The little-endian `u64` ids of `bytes` (a multiple of 8 long).
fn ids_le(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
}

/// Whether `a` and `b` name one existing file (the same inode on Unix, so hard links and
/// symlinks count; the same canonical path elsewhere).
fn same_file(a: &str, b: &str) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }
}

/// Bytes of the target's file name kept in a temporary name: with the longest suffix (46
/// bytes), the name stays within the 255 bytes file systems allow.
const TEMP_NAME_BYTES: usize = 200;

/// Where `save` writes the index given `path`: `path` itself, or, for a symbolic link, the
/// file it points to (the rename would replace the link, and leave that file as it was).
/// Anything there but a regular file is refused: the rename would replace a directory, a
/// device or a FIFO with the index.
fn save_target(path: &str) -> CoreResult<String> {
    let refused =
        |why: String| CoreError::Persistence(format!("cannot save the index to {path}: {why}"));
    let not_regular = || refused("not a regular file (it would be replaced)".to_owned());
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path.to_owned()),
        Err(e) => Err(refused(e.to_string())),
        Ok(found) if found.file_type().is_symlink() => {
            let target = std::fs::canonicalize(path).map_err(|e| {
                refused(format!(
                    "a symbolic link whose target cannot be resolved ({e})"
                ))
            })?;
            if !std::fs::metadata(&target).is_ok_and(|m| m.is_file()) {
                return Err(not_regular());
            }
            target
                .into_os_string()
                .into_string()
                .map_err(|_| refused("its link's target is not valid Unicode".to_owned()))
        }
        Ok(found) if found.is_file() => Ok(path.to_owned()),
        Ok(_) => Err(not_regular()),
    }
}

/// A temporary file name beside `path` that no other save (in this process or another) uses
/// at the same time: `{path}.{pid}.{counter}.{nanos}.tmp`, the file name cut to its first
/// [`TEMP_NAME_BYTES`] bytes (at a character boundary), so that any name the file system
/// accepts for the target leaves room for the temporary one.
fn unique_temp_path(path: &str) -> String {
    static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let counter = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name_start = path.rfind(std::path::is_separator).map_or(0, |i| i + 1);
    let (dir, name) = path.split_at(name_start);
    let mut keep = name.len().min(TEMP_NAME_BYTES);
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    let name = name.get(..keep).unwrap_or(name);
    format!("{dir}{name}.{}.{counter}.{nanos}.tmp", std::process::id())
}

fn path_str(path: &std::path::Path) -> CoreResult<&str> {
    path.to_str().ok_or_else(|| {
        CoreError::Persistence(format!("path {} is not valid UTF-8", path.display()))
    })
}

/// The shape and a copy of the values of `value`, a C-contiguous, aligned 2-D float32 array.
///
/// A copy (allocated fallibly), and the array let go before the caller releases the GIL:
/// while the GIL is released, another thread (or a `__del__` the collector runs as the
/// results are built) may view the array as another dtype or resize it, and rust-numpy
/// aborts the process when the borrow it keeps of the array no longer matches the array.
fn as_f32_matrix(value: &Bound<'_, PyAny>, what: &str) -> PyResult<([usize; 2], Vec<f32>)> {
    args::load_numpy(value.py())?;
    // Before the dtype: the advice of its error (np.ascontiguousarray) would drop the mask.
    args::not_masked(value, what, CoreError::Memory)?;
    let array = value.extract::<PyReadonlyArray2<'_, f32>>().map_err(|_| {
        PyErr::from(CoreError::Memory(format!(
            "{what} must be a 2-D numpy float32 array, got {} (it is refused, not converted: \
             use np.ascontiguousarray(x, dtype=np.float32))",
            given(value)
        )))
    })?;
    if !array.is_c_contiguous() {
        return Err(CoreError::Memory(format!(
            "{what} must be C-contiguous (use np.ascontiguousarray)"
        ))
        .into());
    }
    let shape = [array.shape()[0], array.shape()[1]];
    // A buffer at an odd byte offset (np.frombuffer past a header) is contiguous but cannot
    // be read as &[f32]; rust-numpy would raise the built-in TypeError. np.ascontiguousarray
    // keeps such an array as it is: only a copy moves it.
    if !array.is_aligned() {
        return Err(CoreError::Memory(format!(
            "{what} must be aligned in memory for float32 (it is not, e.g. np.frombuffer at an \
             odd offset): pass a copy, x.copy()"
        ))
        .into());
    }
    Ok((shape, owned_copy(array.as_slice()?, what)?))
}

/// A copy of the values of `value`, a C-contiguous, aligned 1-D float32 array (a copy for
/// the reason [`as_f32_matrix`] gives).
fn as_f32_vector(value: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
    args::load_numpy(value.py())?;
    args::not_masked(value, "query", CoreError::Memory)?;
    let array = value.extract::<PyReadonlyArray1<'_, f32>>().map_err(|_| {
        PyErr::from(CoreError::Memory(format!(
            "query must be a 1-D numpy float32 array, got {} (use np.asarray(q, \
             dtype=np.float32))",
            given(value)
        )))
    })?;
    if !array.is_c_contiguous() {
        return Err(CoreError::Memory("query must be C-contiguous".into()).into());
    }
    // As in `as_f32_matrix`: contiguous is not enough for &[f32].
    if !array.is_aligned() {
        return Err(CoreError::Memory(
            "query must be aligned in memory for float32 (it is not, e.g. np.frombuffer at an \
             odd offset): pass a copy, q.copy()"
                .into(),
        )
        .into());
    }
    Ok(owned_copy(array.as_slice()?, "query")?)
}

/// `values`, copied into a buffer allocated fallibly (an input too large to copy is a
/// `MemoryStoreError`, not an abort).
fn owned_copy(values: &[f32], what: &str) -> CoreResult<Vec<f32>> {
    let mut copy = Vec::new();
    try_reserve(&mut copy, values.len(), &format!("a copy of the {what}"))?;
    copy.extend_from_slice(values);
    Ok(copy)
}

/// What was given where a float32 array is expected, for its error: an array's dtype (with
/// its byte order: a float32 array of the other one, as read from a big-endian file, is
/// refused too, and "must be float32" alone would not say why) and shape; for anything else,
/// as [`args::describe_value`] shows it.
#[cold]
#[inline(never)]
fn given(value: &Bound<'_, PyAny>) -> String {
    match value.cast::<PyUntypedArray>() {
        Ok(array) => {
            let dtype = array
                .dtype()
                .getattr("str")
                .and_then(|text| text.extract::<String>())
                .unwrap_or_else(|_| "?".to_owned());
            let shape = match array.shape() {
                [length] => format!("({length},)"),
                shape => format!(
                    "({})",
                    shape
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            format!("an array of dtype {dtype} and shape {shape}")
        }
        Err(_) => args::describe_value(value),
    }
}

fn as_ids(value: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
    args::load_numpy(value.py())?;
    args::not_masked(value, "ids", CoreError::Memory)?;
    if let Ok(a) = value.extract::<PyReadonlyArray1<'_, i64>>() {
        return a
            .as_array()
            .iter()
            .map(|&id| {
                u64::try_from(id)
                    .map_err(|_| CoreError::Memory(format!("ids must be >= 0, got {id}")).into())
            })
            .collect();
    }
    if let Ok(a) = value.extract::<PyReadonlyArray1<'_, u64>>() {
        return Ok(a.as_array().to_vec());
    }
    let refuse = || {
        PyErr::from(CoreError::Memory(
            "ids must be a 1-D int64/uint64 numpy array or a list of ints >= 0".into(),
        ))
    };
    let id = |item: Bound<'_, PyAny>| -> PyResult<u64> {
        args::not_bool(&item, bool_id)?;
        item.extract::<u64>().map_err(|_| not_an_id(&item))
    };
    // A list is read in place; another sequence item by item (a str is no ids, nor are
    // bytes: text encoded by mistake would become the ids of its bytes).
    if let Ok(list) = value.cast::<PyList>() {
        return list.iter().map(id).collect();
    }
    if value.is_instance_of::<PyBytes>()
        || value.is_instance_of::<PyByteArray>()
        || value.is_instance_of::<PyMemoryView>()
    {
        return Err(refuse());
    }
    args::sequence_of(value, CoreError::Memory, "ids", |_, item| id(item))?.ok_or_else(refuse)
}

/// The error of a list item that is no id, naming it as a numpy array's bad id is named.
#[cold]
#[inline(never)]
fn not_an_id(item: &Bound<'_, PyAny>) -> PyErr {
    CoreError::Memory(format!(
        "ids must be ints >= 0 that fit in 64 bits, got {}",
        args::describe_value(item)
    ))
    .into()
}

/// The error of a `bool` given as an id: an `int` subclass, but True is no id (and no
/// count: `k` and the semantic store refuse it too).
fn bool_id(value: bool) -> CoreError {
    let text = if value { "True" } else { "False" };
    CoreError::Memory(format!("ids must be ints >= 0, not bool (got {text})"))
}

/// An id as numpy returns it: lossless, as `add` refuses ids above [`MAX_ID`] (`i64::MAX`).
#[inline]
fn id_to_i64(id: u64) -> i64 {
    id as i64
}

/// An id argument of `get` and `in`: a Python int of any size; one that no vector can have
/// (negative, or above [`MAX_ID`]) is `None`, and so is a `bool` (an `int` subclass, but no
/// id: `add` and `remove` refuse it) and anything not an int (`"a" in index` is False, as
/// in a Python container).
fn id_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
    if args::not_bool(value, bool_id).is_err() {
        return Ok(None);
    }
    let py = value.py();
    match value.extract::<i64>() {
        Ok(id) => Ok(u64::try_from(id).ok()),
        Err(e)
            if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(py)
                || e.is_instance_of::<pyo3::exceptions::PyTypeError>(py) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Search results as numpy arrays: (ids, scores).
type Hits<'py, D> = (
    Bound<'py, numpy::PyArray<i64, D>>,
    Bound<'py, numpy::PyArray<f32, D>>,
);

/// Cosine-similarity index (SIMD, multi-core, GIL released); float32, float16 or int8 storage.
///
/// Vectors are normalized on insert and kept in one contiguous block. Searches scan every
/// vector with the GIL released, using SIMD and, for large indexes, every core (set
/// ``RAYON_NUM_THREADS`` to limit it). Inputs are numpy float32 arrays, C-contiguous; other
/// dtypes are refused with a message saying how to convert, never silently copied. A numpy
/// masked array is refused when it masks a value (the values under the mask would be read
/// as data), and read as its data when it masks nothing.
///
/// Storage (``dtype``): ``"float32"`` (exact search); ``"float16"`` (half the memory; the
/// scan is exact for the stored half-precision values); ``"int8"`` (a quarter of the memory:
/// symmetric per-vector codes; an integer scan picks ``k * rescore`` candidates, re-scored
/// with the float32 query against the dequantized vectors; a query that int8 would mostly
/// round to 0, one dominated by a few values, is scanned in float32 instead, more slowly).
/// Compressed modes keep no float32 copy, so their scores are those of the stored (rounded)
/// vectors, clamped to [-1, 1] (a rounded row is unit length only up to its rounding); int8
/// recall@10 against exact search is about 0.99 on isotropic data but lower on tightly
/// clustered data. With ``exact_rescore=True`` an int8 index also keeps the float32 vectors
/// and re-scores the shortlist exactly against them (exact scores, recall@10 >= 0.99 on
/// clustered data too; rows that are near duplicates of each other, cosine about 0.999
/// within a cluster, are told apart by int8 only with a longer shortlist: ``rescore=32``
/// brings recall there from about 0.85 back to 1.0): scans still read 4x fewer bytes, but
/// memory is 1.25x that of
/// float32 -- unless ``originals_path`` puts the float32 copies in a file: memory is then a
/// quarter of float32's, and each search reads only its ``k * rescore`` shortlisted rows from
/// the file (served from the OS page cache while they are hot).
///
/// Args:
///     dim: vector length.
///     dtype: ``"float32"``, ``"float16"`` or ``"int8"``.
///     rescore: int8 shortlist factor (candidates re-scored per result).
///     exact_rescore: int8 only: keep float32 copies and re-score against them.
///     originals_path: int8 only, implies ``exact_rescore``: a file (created, or truncated)
///         that holds the float32 copies instead of memory. It is left on disk when the
///         index goes away but means nothing without it: persist the index with ``save``.
///         The index locks it while it lives: one file serves one index at a time. It
///         belongs to the process that opened it: in a ``fork()``ed child (a
///         ``multiprocessing`` worker started with "fork"), every use of the copies (add,
///         remove, get, search, save) raises ``PersistenceError``, as the file is shared
///         with the parent, whose writes would change the child's rows and the child's the
///         parent's; load the index again in the child, with an originals_path of its own.
///
/// Threads share an index (its calls lock it). A ``fork()`` taken while another thread is
/// inside a call on the index (an ``add``, a ``save``) copies its lock held into the child,
/// where no thread will release it: the child's first call on the index then waits for
/// good. Fork before starting such threads, or use the "spawn" or "forkserver" start method.
///
/// Raises:
///     MemoryStoreError: `dim` or `rescore` is not between 1 and 2**32 - 1 (or is a bool), an
///         unknown `dtype`, or `exact_rescore` or `originals_path` with a dtype other than int8.
///     PersistenceError: `originals_path` cannot be created (or is not valid Unicode), is
///         not a regular file (a device or FIFO), or another index uses it.
#[pyclass(module = "llm_agent_runtime", name = "VectorIndex", frozen)]
pub struct PyVectorIndex {
    inner: RwLock<Index>,
}

impl PyVectorIndex {
    /// Runs `f` on the index, read-locked (see [`sync`]): `f` copies out Rust values, and
    /// Python objects are built from them after the lock is released.
    fn read<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&Index) -> R + Send) -> PyResult<R> {
        sync::read(py, &self.inner, f)
    }
}

/// A size of the index (`dim`, `rescore`) named `what`: an int from 0 (the index refuses 0
/// itself) to 2**32 - 1, refused with a `MemoryStoreError` naming the range 1 to 2**32 - 1
/// beyond. A
/// `bool` is an `int` subclass but no size: refused, as `k` refuses it.
fn size_arg(value: &Bound<'_, PyAny>, what: &str) -> PyResult<usize> {
    args::not_bool(value, |_| {
        CoreError::Memory(format!("{what} must be an int, got bool"))
    })?;
    match args::to_usize(value, what)? {
        Ok(size) => Ok(size),
        // One message for every size out of range, as the index's own check of 0 gives.
        Err(OutOfRange::Negative(v) | OutOfRange::TooLarge(v)) => Err(CoreError::Memory(format!(
            "{what} must be between 1 and {}, got {v}",
            u32::MAX
        ))
        .into()),
    }
}

fn dim_arg(value: &Bound<'_, PyAny>) -> PyResult<usize> {
    size_arg(value, "dim")
}

fn rescore_arg(value: &Bound<'_, PyAny>) -> PyResult<usize> {
    size_arg(value, "rescore")
}

/// A `dtype` name: "float32", "float16" or "int8"; a `str` that is not valid Unicode is a
/// `MemoryStoreError`. An unknown name is returned as the error, which the constructor
/// raises itself (PyO3 notes the argument on errors raised while extracting it).
fn dtype_arg(value: &Bound<'_, PyAny>) -> PyResult<CoreResult<Dtype>> {
    let name = args::text(value, "dtype", CoreError::Memory)?;
    Ok(Dtype::parse(&name).ok_or_else(|| {
        CoreError::Memory(format!(
            "unknown dtype {:?}: expected \"float32\", \"float16\" or \"int8\"",
            &*name
        ))
    }))
}

/// A file path given as a `str` or `os.PathLike` (`save`, `load`), as `originals_path` is;
/// one that is not valid Unicode (a lone surrogate) is a `PersistenceError`, as a path that
/// cannot be used is, not the built-in `UnicodeEncodeError`.
fn path_arg(value: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(path_str(&fs_path(value, "path", "a str or os.PathLike")?)?.to_owned())
}

/// An optional file path given as a `str` or `os.PathLike` (`originals_path`); see
/// [`fs_path`].
fn optional_path_arg(value: &Bound<'_, PyAny>) -> PyResult<Option<PathBuf>> {
    if value.is_none() {
        return Ok(None);
    }
    fs_path(value, "originals_path", "a str, os.PathLike or None").map(Some)
}

/// `exact_rescore`: a bool.
fn exact_rescore_arg(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    args::flag(value, "exact_rescore")
}

/// `os.fspath(value)` as a path; one with no file-system form (a lone surrogate) is a
/// `PersistenceError`, not `UnicodeEncodeError`; a value that is no path (nor bytes) is a
/// `TypeError` naming the argument `name`, which takes `what`.
fn fs_path(value: &Bound<'_, PyAny>, name: &str, what: &str) -> PyResult<PathBuf> {
    match value.extract::<PathBuf>() {
        Ok(path) => Ok(path),
        Err(e) if e.is_instance_of::<PyUnicodeEncodeError>(value.py()) => {
            Err(CoreError::Persistence(format!(
                "cannot use the path: it is not valid Unicode ({})",
                e.value(value.py())
            ))
            .into())
        }
        Err(e) if e.is_instance_of::<PyTypeError>(value.py()) => {
            Err(args::wrong_type(value, name, what))
        }
        Err(e) => Err(e),
    }
}

/// A search's `k`: an int >= 1; one beyond 64 bits means every vector. A `bool` is an
/// `int` subclass but no count: refused, as `SemanticStore.search` refuses it.
fn k_arg(value: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::not_bool(value, |_| {
        CoreError::Memory("k must be an int, got bool".into())
    })?;
    args::limit(value, "k", 1, |v| {
        CoreError::Memory(format!("k must be at least 1, got {v}"))
    })
}

#[pymethods]
impl PyVectorIndex {
    #[new]
    // `rescore=8` is DEFAULT_RESCORE, spelled out so the Python signature shows it.
    #[pyo3(
        signature = (dim, dtype=Ok(Dtype::F32), rescore=8, exact_rescore=false, originals_path=None),
        text_signature = "(dim, dtype=\"float32\", rescore=8, exact_rescore=False, originals_path=None)"
    )]
    fn new(
        #[pyo3(from_py_with = dim_arg)] dim: usize,
        #[pyo3(from_py_with = dtype_arg)] dtype: CoreResult<Dtype>,
        #[pyo3(from_py_with = rescore_arg)] rescore: usize,
        #[pyo3(from_py_with = exact_rescore_arg)] exact_rescore: bool,
        #[pyo3(from_py_with = optional_path_arg)] originals_path: Option<PathBuf>,
    ) -> PyResult<Self> {
        let dtype = dtype?;
        let originals_path = originals_path.as_deref().map(path_str).transpose()?;
        let index = catch_panics(|| {
            Ok(Index::with_storage(
                dim,
                dtype,
                rescore,
                exact_rescore,
                originals_path,
            )?)
        })?;
        Ok(Self {
            inner: RwLock::new(index),
        })
    }

    /// The file holding the float32 copies (see ``originals_path``), or None.
    #[getter]
    fn originals_path(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.read(py, |index| index.originals_path().map(str::to_owned))
    }

    /// Whether int8 searches re-score against kept float32 copies.
    #[getter]
    fn exact_rescore(&self, py: Python<'_>) -> PyResult<bool> {
        self.read(py, Index::exact_rescore)
    }

    /// Storage form: "float32", "float16" or "int8".
    #[getter]
    fn dtype(&self, py: Python<'_>) -> PyResult<&'static str> {
        self.read(py, |index| index.dtype().name())
    }

    /// Shortlist factor of int8 searches.
    #[getter]
    fn rescore(&self, py: Python<'_>) -> PyResult<usize> {
        self.read(py, Index::rescore)
    }

    /// Bytes of memory held by the ids and the stored vectors (and float32 copies kept in
    /// memory; none for copies kept in a file).
    #[getter]
    fn nbytes(&self, py: Python<'_>) -> PyResult<usize> {
        self.read(py, Index::nbytes)
    }

    /// Vector length.
    #[getter]
    fn dim(&self, py: Python<'_>) -> PyResult<usize> {
        self.read(py, Index::dim)
    }

    /// Adds vectors, replacing those whose id is already present (upsert); all or nothing.
    ///
    /// Args:
    ///     ids: one integer id per row, from 0 to 2**63 - 1 (searches return int64 ids);
    ///         not a bool.
    ///     vectors: float32 array of shape (len(ids), dim).
    ///
    /// Raises:
    ///     MemoryStoreError: wrong shape or dtype (native-endian float32), not C-contiguous
    ///         or not aligned in memory (a slice such as `x[:, ::2]`, a Fortran-order array:
    ///         pass `np.ascontiguousarray(x)`), an id out of range (or a bool), a duplicate
    ///         id in the batch, NaN/inf, or a zero vector; or out of memory (the batch's copy, or the grown index, cannot be
    ///         allocated: the index is left unchanged).
    ///     PersistenceError: float32 copies kept in a file cannot be written, were changed
    ///         from outside the index, are marked broken by an earlier failure, or belong to
    ///         the parent of this forked process (see the class docs; nothing changes).
    fn add(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        vectors: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let ids = as_ids(ids)?;
        let (shape, vectors) = as_f32_matrix(vectors, "vectors")?;
        let dim = self.read(py, Index::dim)?;
        if shape != [ids.len(), dim] {
            return Err(CoreError::Memory(format!(
                "vectors have shape {shape:?}, expected ({}, {dim})",
                ids.len()
            ))
            .into());
        }
        run_detached(py, || self.inner.write().add(&ids, vectors))
    }

    /// Removes vectors by id (all or nothing), with the GIL released.
    ///
    /// Raises:
    ///     MemoryStoreError: an id is not in the index, is given twice (as in `add`), or is
    ///         a bool; nothing changes.
    ///     PersistenceError: float32 copies kept in a file cannot be updated (the vectors
    ///         are removed and the copies marked broken), or belong to the parent of this
    ///         forked process (see the class docs; nothing changes), or the file's length
    ///         was changed from outside (nothing changes; the copies are marked broken).
    fn remove(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = as_ids(ids)?;
        // Detached as `add` is: with float32 copies in a file each id costs file I/O, and
        // a large removal must not stall every other Python thread.
        run_detached(py, || self.inner.write().remove(&ids))
    }

    /// The `k` vectors most similar to `query`, best first.
    ///
    /// Returns:
    ///     (ids, scores): int64 and float32 arrays of length min(k, len(index)); scores are
    ///     cosine similarities, in [-1, 1] for every dtype (a dot product that rounding
    ///     carries past 1, as a float16 or int8 row's can, is clamped after ranking).
    ///
    /// Any `k` >= 1 is accepted: one above the number of vectors (even beyond 64 bits)
    /// returns them all.
    ///
    /// Raises:
    ///     MemoryStoreError: k < 1 or a bool, or a query of the wrong shape or dtype (as
    ///         for `add`: native-endian float32, C-contiguous and aligned in memory), NaN/inf,
    ///         or zero; or out of memory for the results.
    ///     PersistenceError: float32 copies kept in a file cannot be read for re-scoring
    ///         (in a forked child, they never can: see the class docs), or were changed from
    ///         outside the index.
    fn search<'py>(
        &self,
        py: Python<'py>,
        query: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = k_arg)] k: usize,
    ) -> PyResult<Hits<'py, numpy::Ix1>> {
        let query = as_f32_vector(query)?;
        let (ids, scores) = run_detached(py, || self.inner.read().search(&query, k))?;
        let ids: Vec<i64> = ids.into_iter().map(id_to_i64).collect();
        args::load_numpy(py)?;
        Ok((ids.into_pyarray(py), scores.into_pyarray(py)))
    }

    /// `search` for every row of `queries` (float32, shape (m, dim)).
    ///
    /// A row's scores agree with `search`'s for the same query within float rounding, not
    /// bit for bit: a float32 index scores two or more queries as one blocked matrix
    /// product, which sums in another order. So results whose scores nearly tie may come
    /// back in another order (or, at the k-th place, as another id) than `search` gives.
    /// A long batch stops on Ctrl-C (in the main thread).
    ///
    /// Returns:
    ///     (ids, scores): arrays of shape (m, min(k, len(index))); scores in [-1, 1], as
    ///     `search`'s.
    ///
    /// Raises:
    ///     MemoryStoreError: as `search`, and when `queries` is not of shape (m, dim).
    ///     PersistenceError: as `search`.
    fn search_batch<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = k_arg)] k: usize,
    ) -> PyResult<Hits<'py, numpy::Ix2>> {
        let ([m, cols], queries) = as_f32_matrix(queries, "queries")?;
        let dim = self.read(py, Index::dim)?;
        if cols != dim {
            return Err(CoreError::Memory(format!(
                "queries have shape ({m}, {cols}), expected ({m}, {dim}): one query of \
                 dimension {dim} a row"
            ))
            .into());
        }
        // A long batch (thousands of queries against a big index take seconds) stops on
        // Ctrl-C; a short one is not worth the watching thread.
        let work = m
            .saturating_mul(dim)
            .saturating_mul(self.read(py, Index::len)?);
        let search = |stop: &AtomicBool| self.inner.read().search_batch(&queries, k, stop);
        let (ids, scores, width) = if work >= STOPPABLE_BATCH_WORK {
            run_stoppable(py, search)?
        } else {
            run_detached(py, || search(&AtomicBool::new(false)))?
        };
        let ids: Vec<i64> = ids.into_iter().map(id_to_i64).collect();
        args::load_numpy(py)?;
        let ids = ids.into_pyarray(py).reshape([m, width])?;
        let scores = scores.into_pyarray(py).reshape([m, width])?;
        Ok((ids, scores))
    }

    /// The stored vector of `id`: normalized, and dequantized for compressed storage.
    ///
    /// Returns:
    ///     A float32 array of length dim, or None when `id` is not in the index.
    ///
    /// Raises:
    ///     MemoryStoreError: `id` is not a valid id (negative, above 2**63 - 1, a bool, or
    ///         not an int).
    ///     PersistenceError: float32 copies kept in a file cannot be read (in a forked
    ///         child, they never can: see the class docs), or were changed from outside the
    ///         index.
    fn get<'py>(
        &self,
        py: Python<'py>,
        id: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, numpy::PyArray1<f32>>>> {
        let Some(id) = id_arg(id)? else {
            args::not_bool(id, bool_id)?;
            let why = format!("ids go from 0 to 2**63 - 1, got {}", args::short_repr(id));
            return Err(CoreError::Memory(why).into());
        };
        // Copied out under the lock, made into an array after it: the array's allocation
        // may run the cycle collector, and with it Python code that writes to this index.
        let row = self.read(py, |index| index.get(id))??;
        args::load_numpy(py)?;
        Ok(row.map(|v| v.into_pyarray(py)))
    }

    /// Whether `id` is in the index (False for an int no vector can have, such as -1, a bool,
    /// or anything not an int).
    fn __contains__(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        match id_arg(id)? {
            Some(id) => self.read(py, |index| index.rows.contains_key(&id)),
            None => Ok(false),
        }
    }

    /// Writes the index to `path`, a `str` or `os.PathLike` (versioned format with a
    /// checksum, replaced atomically). A symbolic link is followed: the file it points to is
    /// replaced, and the link kept.
    ///
    /// The index is written a chunk at a time: saving needs no memory for a copy of it.
    ///
    /// Raises:
    ///     MemoryStoreError: `path` is this index's own `originals_path` (the file of its
    ///         float32 copies, which the save would replace): nothing is written.
    ///     PersistenceError: the file cannot be written, `path` is not valid Unicode, is
    ///         neither absent nor a regular file (a directory, device or FIFO), or is
    ///         the `originals_path` of another index (nothing is written); or
    ///         float32 copies kept in a file cannot be read (in a forked child: see the
    ///         class docs).
    fn save(&self, py: Python<'_>, #[pyo3(from_py_with = path_arg)] path: String) -> PyResult<()> {
        run_detached(py, || self.inner.read().save(&path))
    }

    /// Reads an index written by `save` from `path`, a `str` or `os.PathLike`; with
    /// `originals_path`, its float32 copies (of an index built with ``exact_rescore``) go to
    /// that file instead of memory.
    ///
    /// The file is read a chunk at a time into the index's own buffers: loading needs
    /// memory for the index once, not for a copy of the file besides.
    ///
    /// Raises:
    ///     MemoryStoreError: `originals_path` is the index file itself, or the index does
    ///         not fit in memory.
    ///     PersistenceError: unreadable, not a regular file, not an index, another
    ///         version, truncated or corrupt (including values the index never stores:
    ///         NaN/inf, an int8 code of -128, or a row that is not of unit length, zero rows
    ///         included); or `originals_path`
    ///         given for an index without float32 copies, that cannot be created, or that
    ///         another index uses; or a path that is not valid Unicode.
    #[staticmethod]
    #[pyo3(signature = (path, originals_path=None))]
    fn load(
        py: Python<'_>,
        #[pyo3(from_py_with = path_arg)] path: String,
        #[pyo3(from_py_with = optional_path_arg)] originals_path: Option<PathBuf>,
    ) -> PyResult<Self> {
        let originals_path = originals_path.as_deref().map(path_str).transpose()?;
        let index = run_detached(py, || Index::load(&path, originals_path))?;
        Ok(Self {
            inner: RwLock::new(index),
        })
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.read(py, Index::len)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.read(py, |index| {
            format!(
                "VectorIndex(dim={}, dtype={:?}, len={})",
                index.dim(),
                index.dtype().name(),
                index.len()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dot_kernel_agrees_with_the_portable_one() {
        // Lengths below, at and between the kernels' chunk sizes (16, 32, 64).
        for len in (0..200).chain([384, 1_000]) {
            let (a, b) = (lcg(len, 3), lcg(len, 5));
            let want = dot_portable(&a, &b);
            let mut got = Vec::new();
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(unsafe_code)]
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    got.push(unsafe { dot_avx2(&a, &b) });
                }
                #[allow(unsafe_code)]
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    got.push(unsafe { dot_avx512(&a, &b) });
                }
            }
            for g in got {
                assert!((g - want).abs() < 1e-4, "{len}: {g} != {want}");
            }
        }
    }

    fn brute(index: &Index, q: &[f32], k: usize) -> Vec<u64> {
        let mut qn = q.to_vec();
        normalize(&mut qn, "q").unwrap();
        let mut scored: Vec<(f32, u64)> = (0..index.len())
            .map(|r| {
                (
                    dot_portable(&index.vectors.row(r, index.dim), &qn),
                    index.ids[r],
                )
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().take(k).map(|(_, id)| id).collect()
    }

    fn filled(n: usize, dim: usize) -> Index {
        let mut index = Index::new(dim).unwrap();
        let mut x = 1u32;
        let data: Vec<f32> = (0..n * dim)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        let ids: Vec<u64> = (0..n as u64).collect();
        index.add(&ids, data).unwrap();
        index
    }

    #[test]
    fn serial_and_parallel_scans_match_brute_force() {
        for n in [10, PARALLEL_ROWS + 1000] {
            let index = filled(n, 24);
            let q: Vec<f32> = (0..24).map(|i| i as f32 - 7.0).collect();
            assert_eq!(index.search(&q, 5).unwrap().0, brute(&index, &q, 5));
            let (ids, _, width) = index
                .search_batch(&[q.clone(), q.clone()].concat(), 5, &AtomicBool::new(false))
                .unwrap();
            assert_eq!(width, 5);
            assert_eq!(&ids[..5], &ids[5..]);
            assert_eq!(ids[..5].to_vec(), brute(&index, &q, 5));
        }
    }

    #[test]
    fn huge_k_and_rescore_are_capped_at_the_row_count() {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::I8] {
            let mut index = Index::with_dtype(4, dtype, u32::MAX as usize, false).unwrap();
            let data = lcg(5 * 4, 9);
            index.add(&[0, 1, 2, 3, 4], data).unwrap();
            let q = [1.0, 0.5, -0.25, 0.0];
            for k in [usize::MAX, 1 << 62, 1 << 50, 1] {
                let (ids, scores) = index.search(&q, k).unwrap();
                assert_eq!(ids.len(), k.min(5), "{dtype:?} k={k}");
                assert!(scores.windows(2).all(|w| w[0] >= w[1]));
                let (ids, _, width) = index
                    .search_batch(&[q, q].concat(), k, &AtomicBool::new(false))
                    .unwrap();
                assert_eq!((ids.len(), width), (2 * k.min(5), k.min(5)));
            }
        }
        assert!(Index::with_dtype(4, Dtype::I8, u32::MAX as usize + 1, false).is_err());
        assert!(Index::new(0).is_err());
        let empty = Index::new(2).unwrap();
        assert!(empty.search(&[1.0, 0.0], 1 << 60).unwrap().0.is_empty());
    }

    #[test]
    fn reported_scores_are_cosines_in_the_unit_range() {
        // A dequantized float16 or int8 row is unit length only up to rounding: the exact
        // match of [1, 2, 3] used to score 1.0000764 (float16) and 1.0005624 (int8).
        let rows = [1.0, 2.0, 3.0, -1.0, -2.0, -3.0, 3.0, -1.0, 0.5];
        let q = [1.0, 2.0, 3.0];
        for dtype in [Dtype::F32, Dtype::F16, Dtype::I8] {
            for exact_rescore in [false, dtype == Dtype::I8] {
                let mut index = Index::with_dtype(3, dtype, 2, exact_rescore).unwrap();
                index.add(&[10, 20, 30], rows.to_vec()).unwrap();
                let (ids, scores) = index.search(&q, 3).unwrap();
                assert_eq!(ids, vec![10, 30, 20], "{dtype:?}");
                assert!(
                    scores.iter().all(|s| (-1.0..=1.0).contains(s)),
                    "{scores:?}"
                );
                assert!(
                    scores[0] > 0.999 && scores[2] < -0.999,
                    "{dtype:?} {scores:?}"
                );
                let (batch_ids, batch, width) = index
                    .search_batch(&[q, q].concat(), 3, &AtomicBool::new(false))
                    .unwrap();
                assert_eq!((&batch_ids[..3], width), (&ids[..], 3), "{dtype:?}");
                assert!(batch.iter().all(|s| (-1.0..=1.0).contains(s)), "{batch:?}");
            }
        }
        // Clamping comes after ranking: hits that clamp to one score keep their raw order.
        let mut top = TopK::new(3);
        for (score, row) in [(0.5, 0), (1.0001, 1), (1.0003, 2), (-1.0002, 3)] {
            top.push(score, row);
        }
        let hits = top.into_results();
        let got: Vec<(f32, usize)> = hits.iter().map(|h| (h.score, h.row)).collect();
        assert_eq!(got, vec![(1.0, 2), (1.0, 1), (0.5, 0)]);
        let mut top = TopK::new(1);
        top.push(-1.0002, 3);
        assert_eq!(top.into_results()[0].score, -1.0);
    }

    #[test]
    fn subnormal_vectors_normalize_to_unit_length() {
        let tiny = f32::from_bits(1); // 1.4e-45, the smallest subnormal
        for (v, want) in [
            (vec![tiny, 0.0, 0.0], vec![1.0, 0.0, 0.0]),
            (vec![tiny, -tiny, 0.0], vec![0.70710677, -0.70710677, 0.0]),
            (vec![3e38, 3e38, 0.0], vec![0.70710677, 0.70710677, 0.0]),
        ] {
            let mut got = v.clone();
            normalize(&mut got, "v").unwrap();
            assert_eq!(got, want, "{v:?}");
        }
        let mut index = Index::new(3).unwrap();
        index.add(&[1], vec![tiny, 0.0, 0.0]).unwrap();
        assert_eq!(index.get(1).unwrap().unwrap(), vec![1.0, 0.0, 0.0]);
        assert_eq!(index.search(&[0.0, 0.0, tiny], 1).unwrap().1, vec![0.0]);
    }

    #[test]
    fn ids_stop_at_i64_max() {
        let mut index = Index::new(2).unwrap();
        index.add(&[MAX_ID], vec![1.0, 0.0]).unwrap();
        let err = index.add(&[MAX_ID + 1], vec![1.0, 0.0]).unwrap_err();
        assert!(matches!(err, CoreError::Memory(_)));
        assert!(index.add(&[7, u64::MAX], vec![1.0, 0.0, 0.0, 1.0]).is_err());
        assert_eq!(index.len(), 1); // all or nothing
                                    // A file with a larger id (say, written before the rule) does not load.
        let dir = std::env::temp_dir().join(format!("vec-ids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("i.bin").to_string_lossy().into_owned();
        index.save(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[36..44].copy_from_slice(&(MAX_ID + 1).to_le_bytes()); // the first id
        let body = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = Index::load(&path, None).unwrap_err();
        assert!(err.to_string().contains("above 2**63 - 1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remove_upsert_and_errors() {
        let mut index = filled(5, 4);
        index.remove(&[0, 2]).unwrap();
        assert_eq!(index.len(), 3);
        assert!(index.remove(&[0]).is_err());
        index.add(&[1], vec![1.0, 0.0, 0.0, 0.0]).unwrap();
        assert_eq!(index.len(), 3);
        assert_eq!(index.search(&[1.0, 0.0, 0.0, 0.0], 1).unwrap().0, vec![1]);
        assert!(index.search(&[1.0, 0.0, 0.0], 1).is_err());
        assert!(index.search(&[0.0; 4], 1).is_err());
        assert!(index.search(&[1.0, 0.0, 0.0, 0.0], 0).is_err());
        assert!(Index::with_dtype(4, Dtype::F16, 4, true).is_err());
        assert!(Index::with_dtype(4, Dtype::I8, 0, false).is_err());
        assert!(index.add(&[9], vec![f32::NAN, 0.0, 0.0, 0.0]).is_err());
        assert!(index.add(&[7, 7], vec![1.0; 8]).is_err());
    }

    #[test]
    fn compressed_modes_find_the_float32_neighbours_and_round_trip() {
        let exact = filled(3_000, 48);
        let dir = std::env::temp_dir().join(format!("vecq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copies_file = dir.join("copies.f32").to_string_lossy().into_owned();
        let modes = [
            (Dtype::F16, false, None),
            (Dtype::I8, false, None),
            (Dtype::I8, true, None),
            (Dtype::I8, true, Some(copies_file.as_str())),
        ];
        for (dtype, exact_rescore, file) in modes {
            let mut index =
                Index::with_storage(48, dtype, DEFAULT_RESCORE, exact_rescore, file).unwrap();
            let data: Vec<f32> = (0..exact.len())
                .flat_map(|r| exact.vectors.row(r, 48))
                .collect();
            index.add(&exact.ids, data).unwrap();
            let copies = if exact_rescore && file.is_none() {
                3_000 * 48 * 4
            } else {
                0
            };
            assert_eq!(
                index.nbytes() - 8 * 3_000 - copies,
                3_000 * dtype.row_bytes(48)
            );
            let mut found = 0;
            let queries: Vec<Vec<f32>> = (0..20)
                .map(|seed| {
                    (0..48)
                        .map(|i| ((i * 7 + seed * 13) % 17) as f32 - 8.0)
                        .collect()
                })
                .collect();
            for q in &queries {
                let want = brute(&exact, q, 10);
                let (got, scores) = index.search(q, 10).unwrap();
                found += got.iter().filter(|id| want.contains(id)).count();
                if exact_rescore {
                    let row = index.get(got[0]).unwrap().unwrap();
                    let mut qn = q.clone();
                    normalize(&mut qn, "q").unwrap();
                    assert!((dot_portable(&row, &qn) - scores[0]).abs() < 1e-6);
                }
            }
            let want = if exact_rescore { 199 } else { 196 };
            assert!(found >= want, "{dtype:?}: {found} of 200");
            let path = dir.join("q.bin").to_string_lossy().into_owned();
            index.save(&path).unwrap();
            let loaded = Index::load(&path, None).unwrap();
            if file.is_none() {
                assert_eq!(loaded, index);
            }
            for q in &queries {
                assert_eq!(loaded.search(q, 10).unwrap(), index.search(q, 10).unwrap());
            }
            index.remove(&[0, 5, 2_999]).unwrap();
            assert_eq!(index.len(), 2_997);
            assert!(index.get(0).unwrap().is_none());
            for id in [1, 2_998] {
                let row = exact.vectors.row(id as usize, 48);
                let got = index.get(id).unwrap().unwrap();
                let tolerance = if exact_rescore { 0.0 } else { 1e-2 };
                assert!(row
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| (a - b).abs() <= tolerance));
            }
        }
        let without_copies = dir.join("plain.bin").to_string_lossy().into_owned();
        exact.save(&without_copies).unwrap();
        assert!(Index::load(&without_copies, Some(&copies_file)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn save_load_round_trip_and_corruption() {
        let index = filled(50, 8);
        let dir = std::env::temp_dir().join(format!("vec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("i.bin").to_string_lossy().into_owned();
        index.save(&path).unwrap();
        assert_eq!(Index::load(&path, None).unwrap(), index);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Index::load(&path, None),
            Err(CoreError::Persistence(_))
        ));
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(Index::load(&path, None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A scratch directory for one test, removed by the test.
    fn scratch_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn streamed_saves_keep_the_file_format_byte_for_byte() {
        let dir = scratch_dir("vec-format");
        let path = dir.join("i.bin").to_string_lossy().into_owned();
        let data = lcg(3 * 5, 11);
        for (dtype, exact_rescore) in [
            (Dtype::F32, false),
            (Dtype::F16, false),
            (Dtype::I8, false),
            (Dtype::I8, true),
        ] {
            let mut index = Index::with_dtype(5, dtype, 3, exact_rescore).unwrap();
            index.add(&[7, 1, 9], data.clone()).unwrap();
            let mut want = MAGIC.to_vec();
            for field in [2, 5, dtype.code(), 3, u32::from(exact_rescore)] {
                want.extend_from_slice(&field.to_le_bytes());
            }
            want.extend_from_slice(&3u64.to_le_bytes());
            for id in [7u64, 1, 9] {
                want.extend_from_slice(&id.to_le_bytes());
            }
            match &index.vectors {
                Rows::F32(values) => values
                    .iter()
                    .for_each(|x| want.extend_from_slice(&x.to_le_bytes())),
                Rows::F16(bits) => bits
                    .iter()
                    .for_each(|x| want.extend_from_slice(&x.to_le_bytes())),
                Rows::I8 { codes, scales } => {
                    scales
                        .iter()
                        .for_each(|x| want.extend_from_slice(&x.to_le_bytes()));
                    want.extend(codes.iter().map(|&c| c as u8));
                }
            }
            if let Some(Originals::Memory(copies)) = &index.originals {
                copies
                    .iter()
                    .for_each(|x| want.extend_from_slice(&x.to_le_bytes()));
            }
            let crc = crc32fast::hash(&want);
            want.extend_from_slice(&crc.to_le_bytes());
            index.save(&path).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), want, "{dtype:?}");
            assert_eq!(Index::load(&path, None).unwrap(), index, "{dtype:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rows_longer_than_a_chunk_round_trip_and_are_checked_across_chunks() {
        // Rows of 1.2 MB: every section of the file crosses the 1 MiB chunks of the stream.
        let dim = 300_000;
        let dir = scratch_dir("vec-chunks");
        let path = dir.join("i.bin").to_string_lossy().into_owned();
        let copies = dir.join("copies.f32").to_string_lossy().into_owned();
        let mut index = Index::with_dtype(dim, Dtype::I8, 2, true).unwrap();
        index.add(&[4, 2, 8], lcg(3 * dim, 5)).unwrap();
        index.save(&path).unwrap();
        assert_eq!(Index::load(&path, None).unwrap(), index);
        let in_file = Index::load(&path, Some(&copies)).unwrap();
        assert_eq!(in_file.originals_path(), Some(copies.as_str()));
        for id in [4, 2, 8] {
            assert_eq!(in_file.get(id).unwrap(), index.get(id).unwrap());
        }
        let q = lcg(dim, 6);
        assert_eq!(in_file.search(&q, 3).unwrap(), index.search(&q, 3).unwrap());
        drop(in_file);
        // The second copy scaled by 2 (its norm spans two chunks), under a valid checksum.
        let mut bytes = std::fs::read(&path).unwrap();
        let body = bytes.len() - 4;
        let second = body - 2 * dim * 4;
        for value in bytes[second..second + dim * 4].chunks_exact_mut(4) {
            let x = f32::from_le_bytes([value[0], value[1], value[2], value[3]]) * 2.0;
            value.copy_from_slice(&x.to_le_bytes());
        }
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(&copies, b"kept").unwrap();
        for file in [None, Some(copies.as_str())] {
            let err = Index::load(&path, file).unwrap_err().to_string();
            assert!(err.contains("float32 copy: row 1 has norm 2.0"), "{err}");
        }
        // A refused load leaves the file at originals_path as it was.
        assert_eq!(std::fs::read(&copies).unwrap(), b"kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_header_claiming_more_than_the_file_holds_is_refused_before_allocating() {
        let dir = scratch_dir("vec-huge");
        let path = dir.join("i.bin").to_string_lossy().into_owned();
        filled(4, 8).save(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let body = good.len() - 4;
        // A count of 2**60 rows: a damaged file, then one crafted with a valid checksum.
        let mut bytes = good.clone();
        bytes[28..36].copy_from_slice(&(1u64 << 60).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = Index::load(&path, None).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = Index::load(&path, None).unwrap_err().to_string();
        assert!(err.contains("size does not match its header"), "{err}");
        // One row fewer than the file holds, crafted: the rows do not end the file.
        let mut bytes = good.clone();
        bytes[28..36].copy_from_slice(&3u64.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = Index::load(&path, None).unwrap_err().to_string();
        assert!(err.contains("size does not match its header"), "{err}");
        // A truncated file fails its checksum, as it did when it was read whole.
        std::fs::write(&path, &good[..good.len() - 9]).unwrap();
        let err = Index::load(&path, None).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn copies_in_another_process_file_are_refused_and_left_alone() {
        let dir = scratch_dir("vec-owner");
        let copies = dir.join("copies.f32").to_string_lossy().into_owned();
        let mut index = Index::with_storage(4, Dtype::I8, 2, true, Some(&copies)).unwrap();
        index
            .add(&[1, 2], vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
            .unwrap();
        let before = std::fs::read(&copies).unwrap();
        // As in a fork()ed child: the file was opened by another process.
        if let Some(Originals::File(rows)) = &mut index.originals {
            rows.set_owner_for_test(std::process::id().wrapping_add(1));
        }
        let q = [1.0, 0.0, 0.0, 0.0];
        let errors = [
            index.add(&[1], vec![0.0, 0.0, 0.0, 1.0]).unwrap_err(),
            index.add(&[3], vec![0.0, 0.0, 1.0, 0.0]).unwrap_err(),
            index.remove(&[1]).unwrap_err(),
            index.get(1).unwrap_err(),
            index.search(&q, 1).unwrap_err(),
            index
                .save(&dir.join("i.bin").to_string_lossy())
                .unwrap_err(),
        ];
        for err in errors {
            assert!(matches!(err, CoreError::Persistence(_)), "{err}");
            assert!(err.to_string().contains("a fork() of it"), "{err}");
        }
        assert_eq!((index.len(), index.ids.clone()), (2, vec![1, 2]));
        assert_eq!(std::fs::read(&copies).unwrap(), before);
        assert!(!dir.join("i.bin").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
