//! Row storage of a `VectorIndex` in float32, float16 or int8, and the scan kernels of the
//! compressed forms.
//!
//! * float16: 2 bytes a value (half the memory). The scan converts to float32 in registers
//!   (F16C) and multiplies by the float32 query, so its scores are exact for the stored values
//!   and no shortlist is needed.
//! * int8: 1 byte a value plus one float32 scale per row (a quarter of the memory): symmetric
//!   per-row quantization, `code = round(x / scale)` with `scale = max|x| / 127`. The scan
//!   quantizes the query the same way and ranks rows by integer dot products (AVX2
//!   `maddubs`/`madd`, 32 values an instruction) times the row scale into a shortlist of
//!   `k * rescore` rows, then re-scores that shortlist with the float32 query against the
//!   dequantized rows, so scores are those of the rounded rows: recall@10 against exact search
//!   is bounded by int8 precision (about 0.99 on isotropic 384-d data at N = 100k, 0.97 at
//!   1M, lower inside tight clusters). The index can keep float32 copies beside the codes
//!   (`exact_rescore`) to re-score exactly instead: scans still read a quarter of the bytes,
//!   but memory grows to 1.25x that of float32, unless the copies live in a file (see
//!   `originals`), where a search reads only its shortlisted rows.

use std::io::{Read, Seek, Write};

use super::stream::{extend_f32, write_le, CrcReader};
use super::TopK;
use crate::errors::{out_of_memory, try_reserve, CoreResult};

/// How an index stores its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 4 bytes a value.
    F32,
    /// IEEE half precision, 2 bytes a value.
    F16,
    /// Symmetric per-row int8 codes, 1 byte a value plus a 4-byte scale per row.
    I8,
}

impl Dtype {
    /// Parses the Python-facing name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "float32" => Some(Self::F32),
            "float16" => Some(Self::F16),
            "int8" => Some(Self::I8),
            _ => None,
        }
    }

    /// The Python-facing name.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::I8 => "int8",
        }
    }

    /// Its code in the saved format.
    pub fn code(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::I8 => 2,
        }
    }

    /// The dtype of a saved-format code.
    pub fn from_code(code: u32) -> Option<Self> {
        [Self::F32, Self::F16, Self::I8]
            .into_iter()
            .find(|d| d.code() == code)
    }

    /// Bytes a row of `dim` values takes.
    pub fn row_bytes(self, dim: usize) -> usize {
        match self {
            Self::F32 => 4 * dim,
            Self::F16 => 2 * dim,
            Self::I8 => dim + 4,
        }
    }
}

/// Rows (normalized before they get here), contiguous, in one of the three forms.
#[derive(Debug, Clone, PartialEq)]
pub enum Rows {
    /// float32 values.
    F32(Vec<f32>),
    /// float16 bit patterns.
    F16(Vec<u16>),
    /// int8 codes and one scale per row.
    I8 {
        /// `dim` codes a row.
        codes: Vec<i8>,
        /// One scale a row: value = code * scale.
        scales: Vec<f32>,
    },
}

/// How far from 1 the norm of a float32 row the index stores may be: it normalizes each row
/// (rounding each value once or twice, a relative error of about 1e-7), so this is generous.
const F32_NORM_TOLERANCE: f64 = 1e-4;
/// As [`F32_NORM_TOLERANCE`] for float16 rows: rounding each value to float16 moves the norm
/// by at most 2**-11 (about 4.9e-4), plus a little for subnormal values.
const F16_NORM_TOLERANCE: f64 = 2e-3;
/// The largest int8 scale of a unit row (1/127), with room for float rounding.
const I8_MAX_SCALE: f32 = 1.01 / 127.0;

/// The Euclidean norm of `values`, summed in f64.
fn norm(values: impl Iterator<Item = f32>) -> f64 {
    values
        .map(|x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

/// The message for row `r` of norm `norm` when that is more than `tolerance` from 1.
fn not_unit(r: usize, norm: f64, tolerance: f64) -> Option<String> {
    ((norm - 1.0).abs() > tolerance)
        .then(|| format!("row {r} has norm {norm:.6}, not 1: the index stores unit vectors"))
}

/// Why float32 row `r`, as read back, is none the index stored: a value that is not finite,
/// or a norm that is not 1 (`None` when it is one). For rows read from a file that could be
/// changed from outside the index, whose scores would then not be cosines.
pub fn stored_row_problem(r: usize, row: &[f32]) -> Option<String> {
    if !row.iter().all(|x| x.is_finite()) {
        return Some(format!("row {r} holds a value that is not finite"));
    }
    not_unit(r, norm(row.iter().copied()), F32_NORM_TOLERANCE)
}

/// The message for the first float32 row (of `dim` values) of `values` that is not of unit
/// length; `None` when all are.
pub fn unit_rows_error(values: &[f32], dim: usize) -> Option<String> {
    values
        .chunks_exact(dim)
        .enumerate()
        .find_map(|(r, row)| not_unit(r, norm(row.iter().copied()), F32_NORM_TOLERANCE))
}

/// [`unit_rows_error`] and a check for values that are not finite, fed float32 rows a piece
/// at a time (pieces may end inside a row): for rows streamed from a file, never held whole.
#[derive(Debug)]
pub struct RowsCheck {
    dim: usize,
    /// Sum of squares of the current row so far, in f64 (as [`norm`] sums it, in order).
    squares: f64,
    /// Values of the current row seen so far.
    filled: usize,
    /// Rows finished.
    row: usize,
    /// Whether any value was not finite.
    pub not_finite: bool,
    /// The message for the first row that is not of unit length.
    pub not_unit: Option<String>,
}

impl RowsCheck {
    /// A check of rows of `dim` values (at least 1).
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            squares: 0.0,
            filled: 0,
            row: 0,
            not_finite: false,
            not_unit: None,
        }
    }

    /// Checks the next values of the rows, given as little-endian bytes (a multiple of 4).
    pub fn feed_le(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (part, rest) = bytes.split_at(((self.dim - self.filled) * 4).min(bytes.len()));
            let (mut squares, mut finite) = (self.squares, true);
            for b in part.chunks_exact(4) {
                let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                finite &= x.is_finite();
                squares += f64::from(x) * f64::from(x);
            }
            self.not_finite |= !finite;
            self.filled += part.len() / 4;
            if self.filled < self.dim {
                self.squares = squares;
            } else {
                if self.not_unit.is_none() {
                    self.not_unit = not_unit(self.row, squares.sqrt(), F32_NORM_TOLERANCE);
                }
                (self.squares, self.filled, self.row) = (0.0, 0, self.row + 1);
            }
            bytes = rest;
        }
    }
}

/// Quantizes `row` into `codes`; returns the scale.
fn quantize(row: &[f32], codes: &mut [i8]) -> f32 {
    let max = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    for (c, &x) in codes.iter_mut().zip(row) {
        *c = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

impl Rows {
    /// Why the stored rows (of `dim` values) could not have come from the index (a crafted or
    /// damaged file): a float that is not finite, an int8 code outside the quantizer's
    /// [-127, 127], or a row that is not of unit length as its dtype stores it (a zero row
    /// included), which would skew every ranking and give scores that are not cosines. A
    /// linear scan, for loading.
    pub fn invalid_values(&self, dim: usize) -> Option<String> {
        match self {
            Self::F32(values) => {
                if values.iter().any(|x| !x.is_finite()) {
                    return Some("a stored value is not finite".into());
                }
                unit_rows_error(values, dim)
            }
            Self::F16(bits) => {
                if bits.iter().any(|b| b & 0x7c00 == 0x7c00) {
                    // All-ones exponent: inf or NaN.
                    return Some("a stored value is not finite".into());
                }
                bits.chunks_exact(dim).enumerate().find_map(|(r, row)| {
                    let norm = norm(row.iter().map(|&b| half::f16::from_bits(b).to_f32()));
                    not_unit(r, norm, F16_NORM_TOLERANCE)
                })
            }
            Self::I8 { codes, scales } => {
                if codes.contains(&i8::MIN) {
                    return Some(
                        "an int8 code is -128, outside the quantizer's [-127, 127]".into(),
                    );
                }
                let rows = codes.chunks_exact(dim).zip(scales);
                rows.enumerate().find_map(|(r, (row, &scale))| {
                    // `quantize` gives a row's largest value (at most 1 in a unit row) the code
                    // +-127, so the scale is at most 1/127.
                    if row.iter().all(|&c| c.unsigned_abs() != 127) {
                        return Some(format!(
                            "int8 row {r} has no code of +-127, which the quantizer gives \
                             the largest value of every row"
                        ));
                    }
                    if scale > I8_MAX_SCALE {
                        return Some(format!(
                            "int8 row {r} has scale {scale}, above 1/127 (rows are unit \
                             vectors)"
                        ));
                    }
                    // Each value is within half a scale of its unit row's, so the norm of the
                    // row as stored is within sqrt(dim) * scale / 2 of 1.
                    let norm = f64::from(scale) * norm(row.iter().map(|&c| f32::from(c)));
                    let step = (dim as f64).sqrt() * f64::from(scale) / 2.0;
                    not_unit(r, norm, step * 1.01 + F32_NORM_TOLERANCE)
                })
            }
        }
    }

    /// No rows, stored as `dtype`.
    pub fn new(dtype: Dtype) -> Self {
        match dtype {
            Dtype::F32 => Self::F32(Vec::new()),
            Dtype::F16 => Self::F16(Vec::new()),
            Dtype::I8 => Self::I8 {
                codes: Vec::new(),
                scales: Vec::new(),
            },
        }
    }

    /// The storage form.
    pub fn dtype(&self) -> Dtype {
        match self {
            Self::F32(_) => Dtype::F32,
            Self::F16(_) => Dtype::F16,
            Self::I8 { .. } => Dtype::I8,
        }
    }

    /// Makes room for `rows` more rows of `dim` values (see [`reserve_huge`]).
    ///
    /// # Errors
    /// [`CoreError::Memory`] when the memory cannot be allocated.
    pub fn reserve(&mut self, rows: usize, dim: usize) -> CoreResult<()> {
        let values = rows
            .checked_mul(dim)
            .ok_or_else(|| out_of_memory(usize::MAX, "the stored vectors"))?;
        match self {
            Self::F32(data) => reserve_huge(data, values),
            Self::F16(data) => reserve_huge(data, values),
            Self::I8 { codes, scales } => {
                reserve_huge(codes, values)?;
                try_reserve(scales, rows, "the stored vectors' scales")
            }
        }
    }

    /// Appends a row.
    pub fn push(&mut self, row: &[f32]) {
        match self {
            Self::F32(data) => data.extend_from_slice(row),
            Self::F16(data) => data.extend(row.iter().map(|&x| half::f16::from_f32(x).to_bits())),
            Self::I8 { codes, scales } => {
                let start = codes.len();
                codes.resize(start + row.len(), 0);
                scales.push(quantize(row, &mut codes[start..]));
            }
        }
    }

    /// Overwrites row `r`.
    pub fn set(&mut self, r: usize, row: &[f32]) {
        let dim = row.len();
        match self {
            Self::F32(data) => data[r * dim..(r + 1) * dim].copy_from_slice(row),
            Self::F16(data) => {
                for (out, &x) in data[r * dim..(r + 1) * dim].iter_mut().zip(row) {
                    *out = half::f16::from_f32(x).to_bits();
                }
            }
            Self::I8 { codes, scales } => {
                scales[r] = quantize(row, &mut codes[r * dim..(r + 1) * dim]);
            }
        }
    }

    /// Copies row `from` over row `to`.
    pub fn copy_row(&mut self, from: usize, to: usize, dim: usize) {
        match self {
            Self::F32(data) => data.copy_within(from * dim..(from + 1) * dim, to * dim),
            Self::F16(data) => data.copy_within(from * dim..(from + 1) * dim, to * dim),
            Self::I8 { codes, scales } => {
                codes.copy_within(from * dim..(from + 1) * dim, to * dim);
                scales[to] = scales[from];
            }
        }
    }

    /// Keeps the first `rows` rows.
    pub fn truncate(&mut self, rows: usize, dim: usize) {
        match self {
            Self::F32(data) => data.truncate(rows * dim),
            Self::F16(data) => data.truncate(rows * dim),
            Self::I8 { codes, scales } => {
                codes.truncate(rows * dim);
                scales.truncate(rows);
            }
        }
    }

    /// Row `r` as float32 (dequantized).
    pub fn row(&self, r: usize, dim: usize) -> Vec<f32> {
        match self {
            Self::F32(data) => data[r * dim..(r + 1) * dim].to_vec(),
            Self::F16(data) => data[r * dim..(r + 1) * dim]
                .iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect(),
            Self::I8 { codes, scales } => codes[r * dim..(r + 1) * dim]
                .iter()
                .map(|&c| f32::from(c) * scales[r])
                .collect(),
        }
    }

    /// Bytes the rows take.
    pub fn nbytes(&self) -> usize {
        match self {
            Self::F32(data) => data.len() * 4,
            Self::F16(data) => data.len() * 2,
            Self::I8 { codes, scales } => codes.len() + scales.len() * 4,
        }
    }

    /// Writes the rows to `out`, little-endian (int8: the scales, then the codes), converted a
    /// chunk at a time in `scratch` (no copy of them all).
    ///
    /// # Errors
    /// The first error of `out`.
    pub fn write_le(&self, scratch: &mut Vec<u8>, out: &mut impl Write) -> std::io::Result<()> {
        match self {
            Self::F32(data) => write_le(data, f32::to_le_bytes, scratch, out),
            Self::F16(data) => write_le(data, u16::to_le_bytes, scratch, out),
            Self::I8 { codes, scales } => {
                write_le(scales, f32::to_le_bytes, scratch, out)?;
                write_le(codes, i8::to_le_bytes, scratch, out)
            }
        }
    }

    /// Reads `rows` rows of `dim` values written by [`Rows::write_le`] from `input`, a chunk
    /// at a time, into buffers allocated (fallibly) at their full size; `None` when an int8
    /// scale is not a positive finite number (no file the index writes has one).
    ///
    /// # Errors
    /// [`CoreError::Memory`] when the rows do not fit in memory; [`CoreError::Persistence`]
    /// when they cannot be read.
    pub fn read_le<R: Read + Seek>(
        dtype: Dtype,
        rows: usize,
        dim: usize,
        input: &mut CrcReader<R>,
    ) -> CoreResult<Option<Self>> {
        let values = rows
            .checked_mul(dim)
            .ok_or_else(|| out_of_memory(usize::MAX, "the stored vectors"))?;
        let bytes = |size: usize| values as u64 * size as u64;
        Ok(Some(match dtype {
            Dtype::F32 => {
                let mut data = Vec::new();
                reserve_huge(&mut data, values)?;
                input.read_chunks(bytes(4), |chunk| {
                    extend_f32(&mut data, chunk);
                    Ok(())
                })?;
                Self::F32(data)
            }
            Dtype::F16 => {
                let mut data = Vec::new();
                reserve_huge(&mut data, values)?;
                input.read_chunks(bytes(2), |chunk| {
                    data.extend(
                        chunk
                            .chunks_exact(2)
                            .map(|b| u16::from_le_bytes([b[0], b[1]])),
                    );
                    Ok(())
                })?;
                Self::F16(data)
            }
            Dtype::I8 => {
                let mut scales = Vec::new();
                try_reserve(&mut scales, rows, "the stored vectors' scales")?;
                input.read_chunks(rows as u64 * 4, |chunk| {
                    extend_f32(&mut scales, chunk);
                    Ok(())
                })?;
                if scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                    return Ok(None);
                }
                let mut codes = Vec::new();
                reserve_huge(&mut codes, values)?;
                input.read_chunks(bytes(1), |chunk| {
                    codes.extend(chunk.iter().map(|&b| b as i8));
                    Ok(())
                })?;
                Self::I8 { codes, scales }
            }
        }))
    }
}

/// Appends `values` to `out` as little-endian bytes.
pub fn f32_to_le(values: &[f32], out: &mut Vec<u8>) {
    out.reserve(values.len() * 4);
    values
        .iter()
        .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

/// Reserves room for `extra` more values. When that moves the buffer (to fresh, untouched
/// memory), asks Linux to back it with transparent huge pages, as numpy does for its large
/// arrays: a streaming scan over 4 KiB pages stalls at every page boundary (the hardware
/// prefetchers stop there) and misses the TLB far more often.
///
/// # Errors
/// [`CoreError::Memory`] when the memory cannot be allocated (an index too large for the
/// machine must not abort the interpreter).
pub fn reserve_huge<T>(values: &mut Vec<T>, extra: usize) -> CoreResult<()> {
    let before = values.capacity();
    try_reserve(values, extra, "the stored vectors")?;
    if values.capacity() != before {
        advise_huge_pages(
            values.as_ptr() as usize,
            values.capacity() * std::mem::size_of::<T>(),
        );
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(start: usize, bytes: usize) {
    const HUGE_PAGE: usize = 2 << 20;
    if bytes < 4 * HUGE_PAGE {
        return; // small buffers: not worth a system call
    }
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + bytes) / HUGE_PAGE * HUGE_PAGE;
    if end > first {
        // SAFETY: [first, end) lies inside one live allocation; MADV_HUGEPAGE only changes how
        // the kernel backs those pages, never their contents. A failure (no THP) is harmless.
        #[allow(unsafe_code)]
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_start: usize, _bytes: usize) {}

/// The int8 form of a normalized query (its scale is dropped: it does not change the ranking).
pub fn quantize_query(query: &[f32]) -> Vec<i8> {
    let mut codes = vec![0i8; query.len()];
    quantize(query, &mut codes);
    codes
}

/// Whether `codes` (the int8 form of `query`) lost too much of the query for the integer scan
/// to rank rows by: more than a quarter of its nonzero values rounded to code 0. That is a
/// query dominated by a few values (one 300 times the rest, say): its other values, which may
/// be all that tells the rows apart, become 0, every row scores alike, and the shortlist is
/// arbitrary. An isotropic query loses about 1% of its values.
pub fn query_codes_lose_too_much(query: &[f32], codes: &[i8]) -> bool {
    let (mut nonzero, mut lost) = (0usize, 0usize);
    for (&x, &c) in query.iter().zip(codes) {
        if x != 0.0 {
            nonzero += 1;
            lost += usize::from(c == 0);
        }
    }
    lost * 4 > nonzero
}

/// Scores int8 `codes` (whole rows, the first one numbered `first`, with their `scales`)
/// against the float32 `query`, as [`rescore_i8`] does: the scan for a query whose int8 form
/// lost too much of it (see [`query_codes_lose_too_much`]). Slower than [`scan_i8`], and
/// exact for the stored rows.
pub fn scan_i8_float(
    codes: &[i8],
    scales: &[f32],
    dim: usize,
    first: usize,
    query: &[f32],
    top: &mut TopK,
) {
    for (i, (row, &scale)) in codes.chunks_exact(dim).zip(scales).enumerate() {
        top.push(rescore_i8(row, scale, query), first + i);
    }
}

/// Scores float16 `rows` (whole rows, the first one numbered `first`) against `query`.
pub fn scan_f16(rows: &[u16], dim: usize, first: usize, query: &[f32], top: &mut TopK) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
        #[allow(unsafe_code)]
        unsafe {
            scan_f16_avx2(rows, dim, first, query, top);
        }
        return;
    }
    for (i, row) in rows.chunks_exact(dim).enumerate() {
        let score = row
            .iter()
            .zip(query)
            .map(|(&b, &q)| half::f16::from_bits(b).to_f32() * q)
            .sum();
        top.push(score, first + i);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn scan_f16_avx2(rows: &[u16], dim: usize, first: usize, query: &[f32], top: &mut TopK) {
    for (i, row) in rows.chunks_exact(dim).enumerate() {
        prefetch(rows, (i + PREFETCH_ROWS) * dim, dim * 2);
        top.push(dot_f16_avx2(row, query), first + i);
    }
}

/// Rows ahead of the scan whose cache lines are requested early: the hardware prefetcher
/// alone leaves the scans short of the memory bandwidth. Measured at d=384 on 1M rows: 2
/// rows ahead beat 8 by ~10% (float32) and ~20% (float16); further ahead, the lines are
/// evicted or compete with the rows being read.
#[cfg(target_arch = "x86_64")]
pub(crate) const PREFETCH_ROWS: usize = 2;

/// Asks for the cache lines of `bytes` bytes of `data` from element `at` on (a hint: no-op past
/// the end, and off x86-64).
#[inline(always)]
pub(crate) fn prefetch<T>(data: &[T], at: usize, bytes: usize) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, at, bytes);
    #[cfg(target_arch = "x86_64")]
    if let Some(tail) = data.get(at..) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let base = tail.as_ptr().cast::<i8>();
        for line in (0..bytes.min(std::mem::size_of_val(tail))).step_by(64) {
            // SAFETY: `line` < the tail's size in bytes, so the address is inside `data`;
            // prefetching never faults anyway.
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch(base.add(line), _MM_HINT_T0);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(unsafe_code)]
fn dot_f16_avx2(row: &[u16], query: &[f32]) -> f32 {
    use std::arch::x86_64::{
        __m128i, _mm256_add_ps, _mm256_cvtph_ps, _mm256_fmadd_ps, _mm256_loadu_ps,
        _mm256_setzero_ps, _mm256_storeu_ps, _mm_loadu_si128,
    };
    let mut acc = [_mm256_setzero_ps(); 4];
    let (rc, qc) = (row.chunks_exact(32), query.chunks_exact(32));
    let (rr, qr) = (rc.remainder(), qc.remainder());
    for (r, q) in rc.zip(qc) {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: `r` holds 32 u16 and `q` 32 f32; lane group j reads 8 of each at 8 * j.
            let (x, y) = unsafe {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(r.as_ptr().add(8 * j).cast::<__m128i>())),
                    _mm256_loadu_ps(q.as_ptr().add(8 * j)),
                )
            };
            *a = _mm256_fmadd_ps(x, y, *a);
        }
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    let mut total: f32 = lanes.iter().sum();
    for (&b, &q) in rr.iter().zip(qr) {
        total += half::f16::from_bits(b).to_f32() * q;
    }
    total
}

/// Scores int8 `codes` (whole rows, the first one numbered `first`, with their `scales`)
/// against the int8 `query`: integer dot product times the row's scale.
pub fn scan_i8(
    codes: &[i8],
    scales: &[f32],
    dim: usize,
    first: usize,
    query: &[i8],
    top: &mut TopK,
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        #[allow(unsafe_code)]
        unsafe {
            scan_i8_avx2(codes, scales, dim, first, query, top);
        }
        return;
    }
    for (i, (row, &scale)) in codes.chunks_exact(dim).zip(scales).enumerate() {
        top.push(dot_i8_portable(row, query) as f32 * scale, first + i);
    }
}

/// Values whose int8 products an `i32` can sum without overflow: a product is at most
/// 127 * 127 = 16129 in magnitude (codes stay within [-127, 127]), and 2^17 of them sum to at
/// most 2,114,060,288 < 2^31 - 1. Longer rows (dim above 131,072; an embedder may give up to
/// 2^20 values, an index takes up to 2^32 - 1) are summed a block at a time into an `i64`,
/// so normal rows keep the 32-bit lanes and pay one widening per row.
const I8_BLOCK: usize = 1 << 17;

/// The integer dot product of two int8 rows (codes within [-127, 127]), exact for any length.
fn dot_i8_portable(row: &[i8], query: &[i8]) -> i64 {
    row.chunks(I8_BLOCK)
        .zip(query.chunks(I8_BLOCK))
        .map(|(r, q)| i64::from(dot_i8_block_portable(r, q)))
        .sum()
}

/// [`dot_i8_portable`] of at most [`I8_BLOCK`] values, in `i32` (which cannot overflow there).
#[inline]
fn dot_i8_block_portable(row: &[i8], query: &[i8]) -> i32 {
    row.iter()
        .zip(query)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scan_i8_avx2(
    codes: &[i8],
    scales: &[f32],
    dim: usize,
    first: usize,
    query: &[i8],
    top: &mut TopK,
) {
    for (i, (row, &scale)) in codes.chunks_exact(dim).zip(scales).enumerate() {
        prefetch(codes, (i + 2 * PREFETCH_ROWS) * dim, dim); // rows a quarter the size
        top.push(dot_i8_avx2(row, query) as f32 * scale, first + i);
    }
}

/// The integer dot product of two int8 rows (codes within [-127, 127]), exact for any length:
/// each block of [`I8_BLOCK`] values is summed in 32-bit lanes, the blocks in an `i64`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_i8_avx2(row: &[i8], query: &[i8]) -> i64 {
    if row.len() <= I8_BLOCK {
        return i64::from(dot_i8_block_avx2(row, query)); // every row of a usual dim
    }
    row.chunks(I8_BLOCK)
        .zip(query.chunks(I8_BLOCK))
        .map(|(r, q)| i64::from(dot_i8_block_avx2(r, q)))
        .sum()
}

/// [`dot_i8_avx2`] of at most [`I8_BLOCK`] values (a multiple of 64 but for the last block),
/// in `i32`: no lane, and no sum of lanes, can overflow there.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
#[inline]
fn dot_i8_block_avx2(row: &[i8], query: &[i8]) -> i32 {
    use std::arch::x86_64::{
        __m256i, _mm256_abs_epi8, _mm256_add_epi32, _mm256_loadu_si256, _mm256_madd_epi16,
        _mm256_maddubs_epi16, _mm256_set1_epi16, _mm256_setzero_si256, _mm256_sign_epi8,
        _mm256_storeu_si256,
    };
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); 2];
    let (rc, qc) = (row.chunks_exact(64), query.chunks_exact(64));
    let (rr, qr) = (rc.remainder(), qc.remainder());
    for (r, q) in rc.zip(qc) {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: `r` and `q` hold 64 bytes; lane group j reads 32 of each at 32 * j.
            let (x, y) = unsafe {
                (
                    _mm256_loadu_si256(r.as_ptr().add(32 * j).cast::<__m256i>()),
                    _mm256_loadu_si256(q.as_ptr().add(32 * j).cast::<__m256i>()),
                )
            };
            // |q| (unsigned) times x with q's sign: pairs of products fit i16 because codes
            // stay within [-127, 127] (2 * 127 * 127 < 32768).
            let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(y), _mm256_sign_epi8(x, y));
            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, ones));
        }
    }
    let mut lanes = [0i32; 8];
    // SAFETY: `lanes` holds 8 i32 (32 bytes).
    unsafe {
        _mm256_storeu_si256(
            lanes.as_mut_ptr().cast::<__m256i>(),
            _mm256_add_epi32(acc[0], acc[1]),
        );
    }
    lanes.iter().sum::<i32>() + dot_i8_block_portable(rr, qr)
}

/// Exact score of int8 row `codes` (with `scale`) against the float32 `query`.
///
/// Summed in sixteen partial sums, as the float32 scans sum: one running float32 sum over a
/// long row drifts (by about 1e-3 at dim 140,000, a cosine above 1 for a vector and itself).
pub fn rescore_i8(codes: &[i8], scale: f32, query: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (cc, cq) = (codes.chunks_exact(16), query.chunks_exact(16));
    let (rc, rq) = (cc.remainder(), cq.remainder());
    for (c, q) in cc.zip(cq) {
        for j in 0..16 {
            acc[j] += f32::from(c[j]) * q[j];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (&c, &q) in rc.iter().zip(rq) {
        sum += f32::from(c) * q;
    }
    sum * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::lcg;

    #[test]
    fn simd_and_portable_dots_agree() {
        for dim in [1, 31, 64, 100, 384] {
            let a = lcg(dim, 1);
            let q = lcg(dim, 2);
            let mut rows = Rows::new(Dtype::I8);
            rows.push(&a);
            let Rows::I8 { codes, scales } = &rows else {
                unreachable!()
            };
            let qi = quantize_query(&q);
            let mut top = TopK::new(1);
            scan_i8(codes, scales, dim, 0, &qi, &mut top);
            let want = dot_i8_portable(codes, &qi) as f32 * scales[0];
            assert_eq!(top.into_sorted()[0].score, want);

            let mut rows = Rows::new(Dtype::F16);
            rows.push(&a);
            let Rows::F16(bits) = &rows else {
                unreachable!()
            };
            let mut top = TopK::new(1);
            scan_f16(bits, dim, 0, &q, &mut top);
            let exact: f32 = a.iter().zip(&q).map(|(x, y)| x * y).sum();
            assert!((top.into_sorted()[0].score - exact).abs() < 1e-2);
        }
    }

    #[test]
    fn int8_dots_are_exact_beyond_the_i32_range() {
        // 127 * 127 * dim passes 2^31 - 1 from dim 133,145 on; each 32-bit lane of the AVX2
        // kernel (a sixteenth of the products) would pass it from about dim 2.1M on.
        for dim in [
            64,
            I8_BLOCK - 1,
            I8_BLOCK,
            I8_BLOCK + 65,
            140_000,
            2_200_000,
        ] {
            let query: Vec<i8> = (0..dim)
                .map(|i| if i % 7 == 3 { -127 } else { 127 })
                .collect();
            let row: Vec<i8> = (0..dim)
                .map(|i| if i % 5 == 1 { -127 } else { 127 })
                .collect();
            let want: i64 = row
                .iter()
                .zip(&query)
                .map(|(&a, &b)| i64::from(a) * i64::from(b))
                .sum();
            assert_eq!(dot_i8_portable(&row, &query), want, "dim {dim}");
            assert_eq!(dot_i8_portable(&query, &query), 16129 * dim as i64);
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                #[allow(unsafe_code)]
                let (got, own) =
                    unsafe { (dot_i8_avx2(&row, &query), dot_i8_avx2(&query, &query)) };
                assert_eq!((got, own), (want, 16129 * dim as i64), "dim {dim}");
            }
            // The query itself scores highest, above the other row (it did not once the sum
            // wrapped around).
            let codes: Vec<i8> = row.iter().chain(&query).copied().collect();
            let mut top = TopK::new(2);
            scan_i8(&codes, &[1.0, 1.0], dim, 0, &query, &mut top);
            let hits = top.into_sorted();
            assert_eq!(hits[0].row, 1, "dim {dim}");
            assert_eq!(hits[0].score, (16129 * dim as i64) as f32);
            assert_eq!(hits[1].score, want as f32);
        }
    }

    #[test]
    fn a_query_dominated_by_one_value_is_scanned_in_float32() {
        let isotropic = lcg(384, 7);
        assert!(!query_codes_lose_too_much(
            &isotropic,
            &quantize_query(&isotropic)
        ));
        let mut dominated = lcg(64, 8);
        dominated[0] = 1_000.0;
        let codes = quantize_query(&dominated);
        assert!(query_codes_lose_too_much(&dominated, &codes));
        // The float32 scan gives the stored rows' exact scores, as the re-scoring does.
        let mut rows = Rows::new(Dtype::I8);
        let (a, b) = (lcg(64, 1), lcg(64, 2));
        rows.push(&a);
        rows.push(&b);
        let Rows::I8 { codes, scales } = &rows else {
            unreachable!()
        };
        let mut top = TopK::new(2);
        scan_i8_float(codes, scales, 64, 0, &dominated, &mut top);
        let mut hits = top.into_sorted();
        hits.sort_by_key(|h| h.row);
        for (r, hit) in hits.iter().enumerate() {
            let want = rescore_i8(&codes[r * 64..(r + 1) * 64], scales[r], &dominated);
            assert_eq!(hit.score, want);
        }
    }

    #[test]
    fn rows_round_trip_and_move() {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::I8] {
            let mut rows = Rows::new(dtype);
            let (a, b) = (lcg(8, 3), lcg(8, 4));
            rows.push(&a);
            rows.push(&b);
            rows.copy_row(1, 0, 8);
            rows.truncate(1, 8);
            for (x, y) in rows.row(0, 8).iter().zip(&b) {
                assert!((x - y).abs() < 0.01);
            }
            let mut bytes = Vec::new();
            rows.write_le(&mut Vec::new(), &mut bytes).unwrap();
            assert_eq!(bytes.len(), dtype.row_bytes(8));
            let mut input = CrcReader::new(std::io::Cursor::new(bytes), "rows").unwrap();
            assert_eq!(Rows::read_le(dtype, 1, 8, &mut input).unwrap(), Some(rows));
            assert_eq!(Dtype::parse(dtype.name()), Some(dtype));
            assert_eq!(Dtype::from_code(dtype.code()), Some(dtype));
        }
    }

    #[test]
    fn stored_unit_rows_are_valid_and_others_are_not() {
        for dim in [1, 2, 3, 64, 384, 4096] {
            for dtype in [Dtype::F32, Dtype::F16, Dtype::I8] {
                let mut rows = Rows::new(dtype);
                for seed in 0..8 {
                    let mut row = lcg(dim, seed);
                    // Rows dominated by one value: int8 rounds the rest to 0 or one step.
                    row[0] += f32::from(u8::try_from(seed).unwrap_or(0)) * 10.0;
                    crate::vector::normalize(&mut row, "row").unwrap_or_default();
                    rows.push(&row);
                }
                assert_eq!(rows.invalid_values(dim), None, "{dtype:?} dim {dim}");
                let mut scaled = lcg(dim, 99);
                crate::vector::normalize(&mut scaled, "row").unwrap_or_default();
                scaled.iter_mut().for_each(|x| *x *= 0.5);
                rows.push(&scaled);
                let why = rows.invalid_values(dim).unwrap_or_default();
                assert!(why.contains("row 8"), "{dtype:?} dim {dim}: {why}");
            }
        }
    }
}
