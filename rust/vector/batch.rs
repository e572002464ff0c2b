//! Batched exact search: a blocked matrix product with the top-k selection fused into it.
//!
//! The index is walked in blocks of rows; each block is repacked (in cache, never the whole
//! index) into panels of rows stored dimension-major (two vector registers of rows: 32 with
//! AVX-512, 16 with AVX2), by in-register transposes where the CPU has them, so a
//! register-blocked micro-kernel computes a tile of [`TILE_QUERIES`] queries x one panel with
//! one broadcast per query value and two loads per dimension. Each tile's scores go straight
//! into the per-query bounded heaps (most are rejected by one compare against the heap's
//! threshold), so the full score matrix is never materialized. Large indexes are split into
//! contiguous row ranges over rayon threads whose heaps are merged at the end.

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::TopK;
use crate::errors::{interrupted, try_filled, CoreResult};

/// Rows per packed panel of the AVX2 and portable kernels (two 8-lane registers).
const PANEL_ROWS: usize = 16;
/// Rows per packed panel of the AVX-512 kernel (two 16-lane registers).
const WIDE_PANEL_ROWS: usize = 32;
/// Queries per tile: 6 x 2 accumulators + 2 row registers + 1 broadcast fit the 16 AVX2
/// registers.
const TILE_QUERIES: usize = 6;
/// Rows packed at once (128 rows of 384 floats = 192 KiB: stays in L2).
const BLOCK_ROWS: usize = 128;
/// Rows below which a batch stays on one thread.
const PARALLEL_ROWS: usize = 2_048;

/// The top `k` rows of `data` (`n` rows of `dim`, normalized) for each of `queries` (`m` rows of
/// `dim`, normalized): one heap per query, rows numbered from 0.
///
/// # Errors
/// [`crate::errors::CoreError::Memory`] when the packed queries, a scan's packed rows or a
/// query's merged heap (see [`TopK::merge_all`]) cannot be allocated;
/// [`crate::errors::interrupted`] once `stop` is set (looked at per block of rows).
pub(super) fn search_batch_fused(
    data: &[f32],
    dim: usize,
    queries: &[f32],
    k: usize,
    stop: &AtomicBool,
) -> CoreResult<Vec<TopK>> {
    let n = data.len() / dim;
    let m = queries.len() / dim;
    let groups = pack_queries(queries, dim, m)?;
    let fused = Fused::detect();
    if n < PARALLEL_ROWS {
        return scan_range(data, dim, 0, n, &groups, m, k, fused, stop);
    }
    let parallel = |threads: usize| {
        // A few tasks per thread balance the load when another process shares a core.
        let per_task = n.div_ceil(threads * 4).next_multiple_of(BLOCK_ROWS);
        (0..n.div_ceil(per_task))
            .into_par_iter()
            .map(|t| {
                let start = t * per_task;
                scan_range(
                    data,
                    dim,
                    start,
                    (start + per_task).min(n),
                    &groups,
                    m,
                    k,
                    fused,
                    stop,
                )
            })
            .collect::<CoreResult<Vec<Vec<TopK>>>>()
    };
    let Some(tasks) = crate::sync::parallel(parallel) else {
        return scan_range(data, dim, 0, n, &groups, m, k, fused, stop);
    };
    let tasks = tasks?;
    // Each query's heaps, one a task, merged into one.
    let mut per_query: Vec<Vec<TopK>> = (0..m).map(|_| Vec::with_capacity(tasks.len())).collect();
    for task in tasks {
        for (parts, top) in per_query.iter_mut().zip(task) {
            parts.push(top);
        }
    }
    per_query
        .into_iter()
        .map(|parts| TopK::merge_all(k, parts))
        .collect()
}

/// Which micro-kernel this CPU runs (checked once per batch).
#[derive(Clone, Copy)]
enum Fused {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    Portable,
}

impl Fused {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Self::Avx2Fma;
            }
        }
        Self::Portable
    }

    /// Rows per panel of this kernel.
    fn panel_rows(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => WIDE_PANEL_ROWS,
            _ => PANEL_ROWS,
        }
    }

    /// Scores of a tile: `out[q * rows + r]` = query `q` of `group` . row `r` of `panel`, for
    /// the kernel's `rows` per panel.
    #[inline]
    fn tile(self, panel: &[f32], group: &[f32], dim: usize, out: &mut [f32; TILE]) {
        if panel.len() < dim * self.panel_rows() || group.len() < dim * TILE_QUERIES {
            return; // unreachable by construction; never read out of bounds
        }
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F was detected, and the lengths were checked just above.
            #[allow(unsafe_code)]
            Self::Avx512 => unsafe { tile_avx512(panel, group, dim, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA were detected, and the lengths were checked just above.
            #[allow(unsafe_code)]
            Self::Avx2Fma => unsafe { tile_avx2(panel, group, dim, out) },
            Self::Portable => tile_portable(panel, group, dim, out),
        }
    }
}

/// Scores of the largest tile (the first `TILE_QUERIES * panel_rows` are used).
const TILE: usize = TILE_QUERIES * WIDE_PANEL_ROWS;

/// Queries in groups of [`TILE_QUERIES`], each group dimension-major (`[d][q]`), padded with
/// zero queries.
///
/// # Errors
/// [`crate::errors::CoreError::Memory`] when the packed queries cannot be allocated (long
/// queries: up to three times the size of the batch).
fn pack_queries(queries: &[f32], dim: usize, m: usize) -> CoreResult<Vec<f32>> {
    let groups = m.div_ceil(TILE_QUERIES);
    let len = groups
        .checked_mul(dim * TILE_QUERIES)
        .ok_or_else(|| crate::errors::out_of_memory(usize::MAX, "the packed queries"))?;
    let mut packed = try_filled(len, 0.0f32, "the packed queries")?;
    for (q, query) in queries.chunks_exact(dim).enumerate() {
        let base = (q / TILE_QUERIES) * dim * TILE_QUERIES + q % TILE_QUERIES;
        for (d, &x) in query.iter().enumerate() {
            packed[base + d * TILE_QUERIES] = x;
        }
    }
    Ok(packed)
}

/// Rows `first..first + rows` of `data` into panels of the kernel's width, dimension-major
/// (`[panel][d][r]`), padded with zero rows.
fn pack_rows(
    data: &[f32],
    dim: usize,
    first: usize,
    rows: usize,
    fused: Fused,
    panels: &mut [f32],
) {
    let width = fused.panel_rows();
    let block = &data[first * dim..(first + rows) * dim];
    for (panel, panel_rows) in panels
        .chunks_exact_mut(dim * width)
        .zip(block.chunks(dim * width))
    {
        let full = panel_rows.len() == dim * width && panel.len() == dim * width;
        match fused {
            // SAFETY (both): the kernel's instructions were detected (`fused`), and `full`
            // checked both lengths.
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            Fused::Avx512 if full => unsafe { pack_panel_avx512(panel_rows, dim, panel) },
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            Fused::Avx2Fma if full => unsafe { pack_panel_avx2(panel_rows, dim, panel) },
            _ if width == WIDE_PANEL_ROWS => pack_panel::<WIDE_PANEL_ROWS>(panel_rows, dim, panel),
            _ => pack_panel::<PANEL_ROWS>(panel_rows, dim, panel),
        }
    }
}

/// One panel: `rows` (at most `width` rows of `dim`) dimension-major into `panel`, padded
/// with zero rows.
fn pack_panel<const WIDTH: usize>(rows: &[f32], dim: usize, panel: &mut [f32]) {
    // Exact lengths, so the compiler sees every index in bounds and copies 4 at a time.
    let panel = &mut panel[..dim * WIDTH];
    let count = (rows.len() / dim).min(WIDTH);
    for lane in 0..count {
        let row = &rows[lane * dim..][..dim];
        for (d, &x) in row.iter().enumerate() {
            panel[d * WIDTH + lane] = x;
        }
    }
    if count < WIDTH {
        for lanes in panel.chunks_exact_mut(WIDTH) {
            lanes[count..].fill(0.0);
        }
    }
}

/// A full panel of [`PANEL_ROWS`] rows packed with 8 x 8 in-register transposes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
unsafe fn pack_panel_avx2(rows: &[f32], dim: usize, panel: &mut [f32]) {
    use std::arch::x86_64::{
        __m256, _mm256_castpd_ps, _mm256_castps_pd, _mm256_loadu_ps, _mm256_permute2f128_ps,
        _mm256_setzero_ps, _mm256_storeu_ps, _mm256_unpackhi_pd, _mm256_unpackhi_ps,
        _mm256_unpacklo_pd, _mm256_unpacklo_ps,
    };
    let chunks = dim / 8;
    for half in 0..2 {
        let first_row = half * 8;
        for chunk in 0..chunks {
            let d0 = chunk * 8;
            let mut r = [_mm256_setzero_ps(); 8];
            for (i, reg) in r.iter_mut().enumerate() {
                // SAFETY: row first_row + i < 16 and d0 + 8 <= dim: inside `rows` (16 x dim).
                *reg = unsafe { _mm256_loadu_ps(rows.as_ptr().add((first_row + i) * dim + d0)) };
            }
            // Pairs of rows interleaved by 32, then 64 bits, then the 128-bit halves swapped.
            let lo = |a: __m256, b: __m256| {
                _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(a), _mm256_castps_pd(b)))
            };
            let hi = |a: __m256, b: __m256| {
                _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(a), _mm256_castps_pd(b)))
            };
            // u[4g + c], half h: rows 4g..4g+4 at dimension 4h + c.
            let mut u = [_mm256_setzero_ps(); 8];
            for g in 0..2 {
                let (a, b) = (r[4 * g], r[4 * g + 1]);
                let (c, d) = (r[4 * g + 2], r[4 * g + 3]);
                let (t0, t1) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
                let (t2, t3) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
                u[4 * g] = lo(t0, t2);
                u[4 * g + 1] = hi(t0, t2);
                u[4 * g + 2] = lo(t1, t3);
                u[4 * g + 3] = hi(t1, t3);
            }
            for c in 0..4 {
                // Dimension d0 + j, rows first_row..first_row + 8.
                for (j, column) in [
                    (c, _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c])),
                    (4 + c, _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c])),
                ] {
                    let at = (d0 + j) * PANEL_ROWS + first_row;
                    // SAFETY: d0 + j < dim and first_row + 8 <= 16: inside `panel` (dim x 16).
                    unsafe { _mm256_storeu_ps(panel.as_mut_ptr().add(at), column) };
                }
            }
        }
    }
    // The dimensions past the last full 8.
    for (lane, row) in rows.chunks_exact(dim).enumerate() {
        for d in chunks * 8..dim {
            panel[d * PANEL_ROWS + lane] = row[d];
        }
    }
}

/// A full panel of [`WIDE_PANEL_ROWS`] rows packed with 16 x 16 in-register transposes (a
/// scalar copy costs as much as the products it feeds).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
unsafe fn pack_panel_avx512(rows: &[f32], dim: usize, panel: &mut [f32]) {
    use std::arch::x86_64::{
        __m512, _mm512_castpd_ps, _mm512_castps_pd, _mm512_loadu_ps, _mm512_setzero_ps,
        _mm512_shuffle_f32x4, _mm512_storeu_ps, _mm512_unpackhi_pd, _mm512_unpackhi_ps,
        _mm512_unpacklo_pd, _mm512_unpacklo_ps,
    };
    let chunks = dim / 16;
    for half in 0..2 {
        let first_row = half * 16;
        for chunk in 0..chunks {
            let d0 = chunk * 16;
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, reg) in r.iter_mut().enumerate() {
                // SAFETY: row first_row + i < 32 and d0 + 16 <= dim: inside `rows` (32 x dim).
                *reg = unsafe { _mm512_loadu_ps(rows.as_ptr().add((first_row + i) * dim + d0)) };
            }
            // Pairs of rows interleaved by 32, then 64 bits, then 128-bit lanes regrouped twice.
            let mut t = [_mm512_setzero_ps(); 16];
            for p in 0..8 {
                t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
                t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
            }
            let lo = |a: __m512, b: __m512| {
                _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
            };
            let hi = |a: __m512, b: __m512| {
                _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
            };
            // u[4g + c], lane k: rows 4g..4g+4 at dimension 4k + c.
            let mut u = [_mm512_setzero_ps(); 16];
            for g in 0..4 {
                u[4 * g] = lo(t[4 * g], t[4 * g + 2]);
                u[4 * g + 1] = hi(t[4 * g], t[4 * g + 2]);
                u[4 * g + 2] = lo(t[4 * g + 1], t[4 * g + 3]);
                u[4 * g + 3] = hi(t[4 * g + 1], t[4 * g + 3]);
            }
            for c in 0..4 {
                let v = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
                let v2 = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
                let w = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
                let w2 = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
                // Dimension d0 + j, rows first_row..first_row + 16.
                for (j, column) in [
                    (c, _mm512_shuffle_f32x4::<0x88>(v, w)),
                    (8 + c, _mm512_shuffle_f32x4::<0xdd>(v, w)),
                    (4 + c, _mm512_shuffle_f32x4::<0x88>(v2, w2)),
                    (12 + c, _mm512_shuffle_f32x4::<0xdd>(v2, w2)),
                ] {
                    let at = (d0 + j) * WIDE_PANEL_ROWS + first_row;
                    // SAFETY: d0 + j < dim and first_row + 16 <= 32: inside `panel` (dim x 32).
                    unsafe { _mm512_storeu_ps(panel.as_mut_ptr().add(at), column) };
                }
            }
        }
    }
    // The dimensions past the last full 16.
    for (lane, row) in rows.chunks_exact(dim).enumerate() {
        for d in chunks * 16..dim {
            panel[d * WIDE_PANEL_ROWS + lane] = row[d];
        }
    }
}

/// Scores rows `start..end` against every query; one heap per query.
///
/// # Errors
/// [`crate::errors::CoreError::Memory`] when the heaps or the packed rows cannot be
/// allocated.
#[allow(clippy::too_many_arguments)]
fn scan_range(
    data: &[f32],
    dim: usize,
    start: usize,
    end: usize,
    groups: &[f32],
    m: usize,
    k: usize,
    fused: Fused,
    stop: &AtomicBool,
) -> CoreResult<Vec<TopK>> {
    let mut tops: Vec<TopK> = (0..m)
        .map(|_| TopK::for_rows(k, end - start))
        .collect::<CoreResult<_>>()?;
    let width = fused.panel_rows();
    let panel_len = dim * width;
    let group_len = dim * TILE_QUERIES;
    // Room for one block of packed rows, no larger than the range needs: for long rows (an
    // embedder may give 2**20 values) a full block is hundreds of MiB, which a small index
    // must not ask for, and which must be an error, not an abort, when it is not to be had.
    let block_rows = (end - start).min(BLOCK_ROWS).next_multiple_of(width);
    let mut panels = try_filled(block_rows * dim, 0.0f32, "the packed rows")?;
    let mut scores = [0.0f32; TILE];
    let mut block = start;
    while block < end {
        if stop.load(Ordering::Relaxed) {
            return Err(interrupted());
        }
        let rows = (end - block).min(BLOCK_ROWS);
        pack_rows(data, dim, block, rows, fused, &mut panels);
        // The next block's rows are asked for a slice per tile while this block is scored,
        // so its packing does not wait on memory.
        let next = (block + rows) * dim;
        let next_bytes = (end - block - rows).min(BLOCK_ROWS) * dim * 4;
        let tiles = groups.len() / group_len * rows.div_ceil(width);
        let per_tile = next_bytes.div_ceil(tiles.max(1)).next_multiple_of(64);
        let mut asked = 0;
        for (g, group) in groups.chunks_exact(group_len).enumerate() {
            let queries = (m - g * TILE_QUERIES).min(TILE_QUERIES);
            let tops = &mut tops[g * TILE_QUERIES..g * TILE_QUERIES + queries];
            let mut thresholds = [f32::NEG_INFINITY; TILE_QUERIES];
            for (t, top) in thresholds.iter_mut().zip(tops.iter()) {
                *t = top.threshold();
            }
            for (p, panel) in panels
                .chunks_exact(panel_len)
                .take(rows.div_ceil(width))
                .enumerate()
            {
                if asked < next_bytes {
                    super::quantized::prefetch(
                        data,
                        next + asked / 4,
                        per_tile.min(next_bytes - asked),
                    );
                    asked += per_tile;
                }
                fused.tile(panel, group, dim, &mut scores);
                let first = block + p * width;
                let valid = (rows - p * width).min(width);
                for (q, top) in tops.iter_mut().enumerate() {
                    let row_scores = &scores[q * width..q * width + valid];
                    for (r, &s) in row_scores.iter().enumerate() {
                        if s > thresholds[q] {
                            top.push(s, first + r);
                            thresholds[q] = top.threshold();
                        }
                    }
                }
            }
        }
        block += rows;
    }
    Ok(tops)
}

fn tile_portable(panel: &[f32], group: &[f32], dim: usize, out: &mut [f32; TILE]) {
    let mut acc = [[0.0f32; PANEL_ROWS]; TILE_QUERIES];
    for (rows, qs) in panel
        .chunks_exact(PANEL_ROWS)
        .zip(group.chunks_exact(TILE_QUERIES))
        .take(dim)
    {
        for (a, &q) in acc.iter_mut().zip(qs) {
            for (x, &r) in a.iter_mut().zip(rows) {
                *x += q * r;
            }
        }
    }
    for (o, a) in out.chunks_exact_mut(PANEL_ROWS).zip(&acc) {
        o.copy_from_slice(a);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(unsafe_code)]
unsafe fn tile_avx2(panel: &[f32], group: &[f32], dim: usize, out: &mut [f32; TILE]) {
    use std::arch::x86_64::{
        _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let mut acc = [[_mm256_setzero_ps(); 2]; TILE_QUERIES];
    let mut rows = panel.as_ptr();
    let mut qs = group.as_ptr();
    for _ in 0..dim {
        // SAFETY: the caller checked panel.len() >= dim * 16 and group.len() >= dim * 6; each
        // step reads 16 floats at `rows` and 6 at `qs`, then advances by those amounts.
        let (r0, r1) = unsafe { (_mm256_loadu_ps(rows), _mm256_loadu_ps(rows.add(8))) };
        for (q, a) in acc.iter_mut().enumerate() {
            let b = unsafe { _mm256_broadcast_ss(&*qs.add(q)) };
            a[0] = _mm256_fmadd_ps(b, r0, a[0]);
            a[1] = _mm256_fmadd_ps(b, r1, a[1]);
        }
        rows = unsafe { rows.add(PANEL_ROWS) };
        qs = unsafe { qs.add(TILE_QUERIES) };
    }
    for (o, a) in out.chunks_exact_mut(PANEL_ROWS).zip(&acc) {
        // SAFETY: each chunk of `out` holds exactly 16 floats.
        unsafe {
            _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
unsafe fn tile_avx512(panel: &[f32], group: &[f32], dim: usize, out: &mut [f32; TILE]) {
    use std::arch::x86_64::{
        _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };
    let mut acc = [[_mm512_setzero_ps(); 2]; TILE_QUERIES];
    let mut rows = panel.as_ptr();
    let mut qs = group.as_ptr();
    for _ in 0..dim {
        // SAFETY: the caller checked panel.len() >= dim * 32 and group.len() >= dim * 6; each
        // step reads 32 floats at `rows` and 6 at `qs`, then advances by those amounts.
        let (r0, r1) = unsafe { (_mm512_loadu_ps(rows), _mm512_loadu_ps(rows.add(16))) };
        for (q, a) in acc.iter_mut().enumerate() {
            let b = _mm512_set1_ps(unsafe { *qs.add(q) });
            a[0] = _mm512_fmadd_ps(b, r0, a[0]);
            a[1] = _mm512_fmadd_ps(b, r1, a[1]);
        }
        rows = unsafe { rows.add(WIDE_PANEL_ROWS) };
        qs = unsafe { qs.add(TILE_QUERIES) };
    }
    for (o, a) in out.chunks_exact_mut(WIDE_PANEL_ROWS).zip(&acc) {
        // SAFETY: each chunk of `out` holds exactly 32 floats.
        unsafe {
            _mm512_storeu_ps(o.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(o.as_mut_ptr().add(16), a[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::lcg;

    #[test]
    fn fused_matches_one_query_at_a_time_including_ragged_edges() {
        for (n, m, dim) in [
            (1, 1, 1),
            (37, 7, 5),
            (300, 13, 33),
            (PARALLEL_ROWS + 77, 9, 20),
        ] {
            let data = lcg(n * dim, 3);
            let queries = lcg(m * dim, 11);
            let groups = pack_queries(&queries, dim, m).unwrap();
            // The search as this CPU runs it, then each kernel it could run (one thread).
            let never = AtomicBool::new(false);
            let runs =
                std::iter::once(search_batch_fused(&data, dim, &queries, 4, &never).unwrap())
                    .chain(kernels().into_iter().map(|fused| {
                        scan_range(&data, dim, 0, n, &groups, m, 4, fused, &never).unwrap()
                    }));
            for (query, top) in runs.flat_map(|tops| queries.chunks_exact(dim).zip(tops)) {
                let mut want: Vec<(f32, usize)> = data
                    .chunks_exact(dim)
                    .enumerate()
                    .map(|(r, row)| (row.iter().zip(query).map(|(a, b)| a * b).sum(), r))
                    .collect();
                want.sort_by(|a, b| b.0.total_cmp(&a.0));
                let got = top.into_sorted();
                assert_eq!(got.len(), want.len().min(4));
                for (g, w) in got.iter().zip(&want) {
                    assert!((g.score - w.0).abs() < 1e-5, "{n} {m} {dim}");
                }
            }
        }
    }

    #[test]
    fn every_kernel_agrees_with_the_portable_one() {
        let dim = 19;
        let group = lcg(dim * TILE_QUERIES, 7);
        for fused in kernels() {
            let width = fused.panel_rows();
            let panel = lcg(dim * width, 5);
            let (mut a, mut b) = ([0.0f32; TILE], [0.0f32; TILE]);
            fused.tile(&panel, &group, dim, &mut a);
            for (q, out) in b.chunks_exact_mut(width).take(TILE_QUERIES).enumerate() {
                for (r, o) in out.iter_mut().enumerate() {
                    *o = (0..dim)
                        .map(|d| group[d * TILE_QUERIES + q] * panel[d * width + r])
                        .sum();
                }
            }
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn packing_puts_every_row_in_its_lane() {
        // Dimensions with and without a tail past the last 16; full and partial panels.
        for dim in [1, 16, 37, 48] {
            for fused in kernels() {
                let width = fused.panel_rows();
                let rows = 2 * width + 5;
                let data = lcg((rows + 3) * dim, 9);
                let mut panels = vec![f32::NAN; rows.div_ceil(width) * width * dim];
                pack_rows(&data, dim, 3, rows, fused, &mut panels);
                for (p, panel) in panels.chunks_exact(dim * width).enumerate() {
                    for d in 0..dim {
                        for lane in 0..width {
                            let r = p * width + lane;
                            let want = if r < rows {
                                data[(3 + r) * dim + d]
                            } else {
                                0.0
                            };
                            assert_eq!(panel[d * width + lane], want, "{dim} {r} {d}");
                        }
                    }
                }
            }
        }
    }

    /// The kernels this CPU can run.
    fn kernels() -> Vec<Fused> {
        let mut all = vec![Fused::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                all.push(Fused::Avx2Fma);
            }
            if is_x86_feature_detected!("avx512f") {
                all.push(Fused::Avx512);
            }
        }
        all
    }
}
