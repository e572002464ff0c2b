//! Batched exact search: a blocked matrix product with the top-k selection fused into it.
//!
//! The index is walked in blocks of rows; each block is repacked (in cache, never the whole
//! index) into panels of [`PANEL_ROWS`] rows stored dimension-major, so a register-blocked
//! micro-kernel computes a tile of [`TILE_QUERIES`] queries x [`PANEL_ROWS`] rows with one
//! broadcast per query value and two loads per dimension. Each tile's scores go straight into
//! the per-query bounded heaps (most are rejected by one compare against the heap's
//! threshold), so the full score matrix is never materialized. Large indexes are split into
//! contiguous row ranges over rayon threads whose heaps are merged at the end.

use rayon::prelude::*;

use super::TopK;

/// Rows per packed panel (two 8-lane registers).
const PANEL_ROWS: usize = 16;
/// Queries per tile: 6 x 2 accumulators + 2 row registers + 1 broadcast fit the 16 AVX2
/// registers.
const TILE_QUERIES: usize = 6;
/// Panels packed at once (8 x 16 rows of 384 floats = 192 KiB: stays in L2).
const BLOCK_PANELS: usize = 8;
/// Rows below which a batch stays on one thread.
const PARALLEL_ROWS: usize = 2_048;

/// The top `k` rows of `data` (`n` rows of `dim`, normalized) for each of `queries` (`m` rows of
/// `dim`, normalized): one heap per query, rows numbered from 0.
pub(super) fn search_batch_fused(data: &[f32], dim: usize, queries: &[f32], k: usize) -> Vec<TopK> {
    let n = data.len() / dim;
    let m = queries.len() / dim;
    let groups = pack_queries(queries, dim, m);
    let fused = Fused::detect();
    let block_rows = PANEL_ROWS * BLOCK_PANELS;
    if n < PARALLEL_ROWS {
        return scan_range(data, dim, 0, n, &groups, m, k, fused);
    }
    // A few tasks per thread balance the load when another process shares a core.
    let per_task = n
        .div_ceil(rayon::current_num_threads() * 4)
        .next_multiple_of(block_rows);
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
            )
        })
        .reduce(
            || (0..m).map(|_| TopK::new(k)).collect(),
            |a, b| a.into_iter().zip(b).map(|(x, y)| x.merge(y)).collect(),
        )
}

/// Which micro-kernel this CPU runs (checked once per batch).
#[derive(Clone, Copy)]
enum Fused {
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    Portable,
}

impl Fused {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Self::Avx2Fma;
        }
        Self::Portable
    }

    /// Scores of a tile: `out[q * PANEL_ROWS + r]` = query `q` of `group` . row `r` of `panel`.
    #[inline]
    fn tile(self, panel: &[f32], group: &[f32], dim: usize, out: &mut [f32; TILE]) {
        if panel.len() < dim * PANEL_ROWS || group.len() < dim * TILE_QUERIES {
            return; // unreachable by construction; never read out of bounds
        }
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA were detected, and the lengths were checked just above.
            #[allow(unsafe_code)]
            Self::Avx2Fma => unsafe { tile_avx2(panel, group, dim, out) },
            Self::Portable => tile_portable(panel, group, dim, out),
        }
    }
}

const TILE: usize = TILE_QUERIES * PANEL_ROWS;

/// Queries in groups of [`TILE_QUERIES`], each group dimension-major (`[d][q]`), padded with
/// zero queries.
fn pack_queries(queries: &[f32], dim: usize, m: usize) -> Vec<f32> {
    let groups = m.div_ceil(TILE_QUERIES);
    let mut packed = vec![0.0f32; groups * dim * TILE_QUERIES];
    for (q, query) in queries.chunks_exact(dim).enumerate() {
        let base = (q / TILE_QUERIES) * dim * TILE_QUERIES + q % TILE_QUERIES;
        for (d, &x) in query.iter().enumerate() {
            packed[base + d * TILE_QUERIES] = x;
        }
    }
    packed
}

/// Rows `first..first + rows` of `data` into panels of [`PANEL_ROWS`], dimension-major
/// (`[panel][d][r]`), padded with zero rows.
fn pack_rows(data: &[f32], dim: usize, first: usize, rows: usize, panels: &mut [f32]) {
    let panel_len = dim * PANEL_ROWS;
    for r in 0..rows.div_ceil(PANEL_ROWS) * PANEL_ROWS {
        let panel = &mut panels[(r / PANEL_ROWS) * panel_len..][..panel_len];
        let lane = r % PANEL_ROWS;
        if r < rows {
            let row = &data[(first + r) * dim..][..dim];
            for (d, &x) in row.iter().enumerate() {
                panel[d * PANEL_ROWS + lane] = x;
            }
        } else {
            for d in 0..dim {
                panel[d * PANEL_ROWS + lane] = 0.0;
            }
        }
    }
}

/// Scores rows `start..end` against every query; one heap per query.
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
) -> Vec<TopK> {
    let mut tops: Vec<TopK> = (0..m).map(|_| TopK::new(k)).collect();
    let panel_len = dim * PANEL_ROWS;
    let group_len = dim * TILE_QUERIES;
    let mut panels = vec![0.0f32; BLOCK_PANELS * panel_len];
    let mut scores = [0.0f32; TILE];
    let mut block = start;
    while block < end {
        let rows = (end - block).min(PANEL_ROWS * BLOCK_PANELS);
        pack_rows(data, dim, block, rows, &mut panels);
        for (g, group) in groups.chunks_exact(group_len).enumerate() {
            let queries = (m - g * TILE_QUERIES).min(TILE_QUERIES);
            let tops = &mut tops[g * TILE_QUERIES..g * TILE_QUERIES + queries];
            let mut thresholds = [f32::NEG_INFINITY; TILE_QUERIES];
            for (t, top) in thresholds.iter_mut().zip(tops.iter()) {
                *t = top.threshold();
            }
            for (p, panel) in panels
                .chunks_exact(panel_len)
                .take(rows.div_ceil(PANEL_ROWS))
                .enumerate()
            {
                fused.tile(panel, group, dim, &mut scores);
                let first = block + p * PANEL_ROWS;
                let valid = (rows - p * PANEL_ROWS).min(PANEL_ROWS);
                for (q, top) in tops.iter_mut().enumerate() {
                    let row_scores = &scores[q * PANEL_ROWS..q * PANEL_ROWS + valid];
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
    tops
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
            let tops = search_batch_fused(&data, dim, &queries, 4);
            for (query, top) in queries.chunks_exact(dim).zip(tops) {
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
    fn avx2_and_portable_tiles_agree() {
        let dim = 19;
        let panel = lcg(dim * PANEL_ROWS, 5);
        let group = lcg(dim * TILE_QUERIES, 7);
        let (mut a, mut b) = ([0.0f32; TILE], [0.0f32; TILE]);
        Fused::detect().tile(&panel, &group, dim, &mut a);
        Fused::Portable.tile(&panel, &group, dim, &mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5);
        }
    }
}
