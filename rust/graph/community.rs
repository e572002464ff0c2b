//! Community detection on the undirected view: Louvain (with resolution) and asynchronous
//! label propagation. Parallel relationships add their weights, as networkx does when it
//! runs these on a multigraph.
//!
//! Every buffer sized by the graph is allocated fallibly: a graph too large for memory is a
//! [`crate::errors::CoreError::Graph`], never an abort.

use super::alloc::{collected, filled, reserve, with_capacity};
use crate::errors::CoreResult;

/// Called once a pass (or round) of a long run: an error it returns (the caller was
/// interrupted) ends the run with that error.
pub type Check<'a> = &'a mut dyn FnMut() -> CoreResult<()>;

/// A small seeded generator (splitmix64): node orders and tie-breaks are reproducible.
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index below `bound` (> 0).
    pub fn below(&mut self, bound: usize) -> usize {
        ((self.next_u64() as u128 * bound as u128) >> 64) as usize
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// Undirected weighted graph with merged parallel edges and self-loops kept apart.
struct WeightedGraph {
    offsets: Vec<usize>,
    targets: Vec<u32>,
    weights: Vec<f64>,
    self_loops: Vec<f64>,
    /// Weighted degree (a self-loop counts twice).
    degree: Vec<f64>,
    /// Total edge weight `m`.
    total: f64,
}

impl WeightedGraph {
    /// The graph of `n` nodes and `edges`.
    ///
    /// # Errors
    /// [`crate::errors::CoreError::Graph`] when it does not fit in memory.
    fn from_edges(
        n: usize,
        edges: impl Iterator<Item = (u32, u32, f64)>,
    ) -> CoreResult<WeightedGraph> {
        let mut self_loops = filled(n, 0.0, "the community graph")?;
        let mut half: Vec<(u32, u32, f64)> = Vec::new();
        // Both halves of every edge (self-loops aside, which take none).
        reserve(
            &mut half,
            edges.size_hint().0.saturating_mul(2),
            "the community graph's edges",
        )?;
        for (a, b, w) in edges {
            if a == b {
                self_loops[a as usize] += w;
            } else {
                // Past the iterator's hint (a filtered one says 0), grown fallibly too.
                reserve(&mut half, 2, "the community graph's edges")?;
                half.push((a, b, w));
                half.push((b, a, w));
            }
        }
        half.sort_unstable_by_key(|&(a, b, _)| (a, b));
        let mut offsets = filled(n + 1, 0usize, "the community graph")?;
        let mut targets = with_capacity(half.len(), "the community graph's edges")?;
        let mut weights: Vec<f64> = with_capacity(half.len(), "the community graph's edges")?;
        let mut last: Option<(u32, u32)> = None;
        for (a, b, w) in half {
            if last == Some((a, b)) {
                if let Some(x) = weights.last_mut() {
                    *x += w;
                }
                continue;
            }
            last = Some((a, b));
            offsets[a as usize + 1] += 1;
            targets.push(b);
            weights.push(w);
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut degree = filled(n, 0.0, "the community graph")?;
        for v in 0..n {
            degree[v] =
                weights[offsets[v]..offsets[v + 1]].iter().sum::<f64>() + 2.0 * self_loops[v];
        }
        let total = degree.iter().sum::<f64>() / 2.0;
        Ok(WeightedGraph {
            offsets,
            targets,
            weights,
            self_loops,
            degree,
            total,
        })
    }

    /// The graph of `n` nodes and `edges` (weights non-negative) in units of its total
    /// weight: every weight divided by the largest one, then by the total `m` (which is then
    /// 1, up to rounding). Modularity is the same at every scale of the weights, and so,
    /// in these units, is every sum Louvain compares: neither weights as small as 1e-300 nor
    /// as large as 1e300 (whose products would underflow or overflow) change the result.
    ///
    /// # Errors
    /// As [`WeightedGraph::from_edges`].
    fn normalized(n: usize, edges: &[(u32, u32, f64)]) -> CoreResult<WeightedGraph> {
        let largest = edges.iter().map(|e| e.2).fold(0.0, f64::max);
        if !(largest > 0.0 && largest.is_finite()) {
            // No weight (or none positive): the sums are 0 at any scale.
            return WeightedGraph::from_edges(n, edges.iter().copied());
        }
        let mut g =
            WeightedGraph::from_edges(n, edges.iter().map(|&(a, b, w)| (a, b, w / largest)))?;
        let m = g.total;
        if m > 0.0 && m.is_finite() {
            for x in g
                .weights
                .iter_mut()
                .chain(g.self_loops.iter_mut())
                .chain(g.degree.iter_mut())
            {
                *x /= m;
            }
            g.total = g.degree.iter().sum::<f64>() / 2.0;
        }
        Ok(g)
    }

    fn n(&self) -> usize {
        self.degree.len()
    }

    fn neighbors(&self, v: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let range = self.offsets[v]..self.offsets[v + 1];
        self.targets[range.clone()]
            .iter()
            .map(|&t| t as usize)
            .zip(self.weights[range].iter().copied())
    }
}

/// networkx's modularity of a partition (`community[v]` = community id of node v).
///
/// # Errors
/// [`crate::errors::CoreError::Graph`] when the per-community sums do not fit in memory.
fn modularity_of(g: &WeightedGraph, community: &[usize], resolution: f64) -> CoreResult<f64> {
    if g.total <= 0.0 {
        return Ok(0.0);
    }
    let count = community.iter().copied().max().map_or(0, |c| c + 1);
    let mut internal = filled(count, 0.0, "the modularity sums")?;
    let mut degree = filled(count, 0.0, "the modularity sums")?;
    for v in 0..g.n() {
        let c = community[v];
        degree[c] += g.degree[v];
        internal[c] += g.self_loops[v];
        for (w, weight) in g.neighbors(v) {
            if community[w] == c && w > v {
                internal[c] += weight;
            }
        }
    }
    let m = g.total;
    Ok(internal
        .iter()
        .zip(&degree)
        .map(|(l, k)| l / m - resolution * (k / (2.0 * m)).powi(2))
        .sum())
}

/// A pass (of [`local_moving`]) or a level (of [`louvain_once`]) that improves modularity by
/// less than this ends the level or the run (networkx's `threshold`).
const THRESHOLD: f64 = 1e-7;

/// A node moves only to a community that gains more than this times its degree (in units of
/// the total weight, see [`WeightedGraph::normalized`]) over the best one before it: far
/// above the rounding in the community totals, so two nodes never trade places forever over
/// a rounding residue, and far below a gain that changes the modularity.
const RELATIVE_TOLERANCE: f64 = 1e-10;

/// At most this many passes over the nodes per level: each pass that goes on improves
/// modularity by at least [`THRESHOLD`], and passes usually stop after a few dozen; the cap
/// bounds the run whatever the rounding does.
const MAX_PASSES: usize = 1000;

/// Moves nodes between communities while a pass over them improves modularity by
/// [`THRESHOLD`] or more (at most [`MAX_PASSES`] passes); returns whether any node moved and
/// the modularity the moves gained.
///
/// # Errors
/// [`crate::errors::CoreError::Graph`] when its per-node buffers do not fit in memory; the
/// error of `check`, called before each pass, when it fails.
fn local_moving(
    g: &WeightedGraph,
    community: &mut [usize],
    resolution: f64,
    rng: &mut SplitMix,
    check: Check<'_>,
) -> CoreResult<(bool, f64)> {
    let n = g.n();
    let m = g.total;
    if m.is_nan() || m <= 0.0 {
        return Ok((false, 0.0)); // no weight: every partition has modularity 0
    }
    let two_m = 2.0 * m;
    let mut totals = filled(n, 0.0, "the community totals")?;
    let mut sizes = filled(n, 0usize, "the community sizes")?;
    for v in 0..n {
        sizes[community[v]] += 1;
    }
    // Community ids with no member: where a node goes to stand alone.
    let mut empty: Vec<usize> = with_capacity(n, "the empty communities")?;
    empty.extend((0..n).filter(|&c| sizes[c] == 0));
    let mut order: Vec<usize> = collected(0..n, "the node order")?;
    rng.shuffle(&mut order);
    let mut link = filled(n, 0.0, "the community links")?;
    // A node's neighbours' communities: at most every community. Reserved at once, as the
    // buffers above: grown as it goes, a failed growth aborted the process.
    let mut touched: Vec<usize> = with_capacity(n, "the neighbouring communities")?;
    let mut any_move = false;
    let mut improvement = 0.0;
    for _ in 0..MAX_PASSES {
        check()?;
        // Summed afresh each pass: no rounding carried from one pass to the next.
        totals.fill(0.0);
        for v in 0..n {
            totals[community[v]] += g.degree[v];
        }
        let mut moved = 0;
        let mut pass_gain = 0.0;
        for &v in &order {
            let own = community[v];
            let k = g.degree[v];
            for (w, weight) in g.neighbors(v) {
                let c = community[w];
                if link[c] == 0.0 {
                    touched.push(c);
                }
                link[c] += weight;
            }
            totals[own] -= k;
            sizes[own] -= 1;
            if sizes[own] == 0 {
                // Exactly empty, not a rounding residue of what its members brought.
                totals[own] = 0.0;
            }
            // Twice the modularity `v` brings to community `c` (times m).
            let gain = |c: usize, links: f64| links - resolution * totals[c] * k / two_m;
            let tolerance = RELATIVE_TOLERANCE * k;
            let stay = gain(own, link[own]);
            let mut best = own;
            let mut best_gain = stay;
            for &c in &touched {
                let g_c = gain(c, link[c]);
                if g_c > best_gain + tolerance {
                    best = c;
                    best_gain = g_c;
                }
            }
            // Standing alone gains nothing and costs nothing: better when every community
            // around costs more than it links.
            if sizes[own] > 0 && 0.0 > best_gain + tolerance {
                if let Some(c) = empty.pop() {
                    best = c;
                    best_gain = 0.0;
                }
            }
            totals[best] += k;
            sizes[best] += 1;
            if sizes[own] == 0 && best != own {
                empty.push(own);
            }
            if best != own {
                community[v] = best;
                moved += 1;
                pass_gain += (best_gain - stay) / m;
            }
            for &c in &touched {
                link[c] = 0.0;
            }
            touched.clear();
        }
        if moved == 0 {
            break;
        }
        any_move = true;
        improvement += pass_gain;
        if pass_gain < THRESHOLD {
            break;
        }
    }
    Ok((any_move, improvement))
}

/// Renumbers community ids to 0..count in order of first appearance.
///
/// # Errors
/// [`crate::errors::CoreError::Graph`] when the renumbering table does not fit in memory.
fn renumber(community: &mut [usize]) -> CoreResult<usize> {
    let mut map = filled(community.len(), usize::MAX, "the community renumbering")?;
    let mut next = 0;
    for c in community.iter_mut() {
        if map[*c] == usize::MAX {
            map[*c] = next;
            next += 1;
        }
        *c = map[*c];
    }
    Ok(next)
}

/// Graphs up to this many nodes run Louvain from several node orders and keep the best.
const SMALL_GRAPH: usize = 512;
const SMALL_GRAPH_TRIES: u64 = 8;

/// Louvain communities of the undirected view (node indices, each sorted; communities in
/// order of their smallest node) and the partition's modularity.
///
/// Louvain's result depends on the order nodes are visited; on small graphs that variance is
/// largest and a run costs microseconds, so they keep the best of several seeded orders.
///
/// # Errors
/// [`crate::errors::CoreError::Graph`] when its buffers (a few slots per node and per relationship) do not
/// fit in memory; the error of `check`, called once a pass over the nodes, when it fails.
pub fn louvain(
    n: usize,
    edges: &[(u32, u32, f64)],
    resolution: f64,
    seed: u64,
    check: Check<'_>,
) -> CoreResult<(Vec<Vec<u32>>, f64)> {
    let tries = if n <= SMALL_GRAPH {
        SMALL_GRAPH_TRIES
    } else {
        1
    };
    let graph = WeightedGraph::normalized(n, edges)?;
    let mut best: Option<(Vec<Vec<u32>>, f64)> = None;
    for attempt in 0..tries {
        let found = louvain_once(&graph, resolution, seed.wrapping_add(attempt), check)?;
        if best.as_ref().is_none_or(|(_, q)| found.1 > *q + 1e-12) {
            best = Some(found);
        }
    }
    Ok(best.unwrap_or_default())
}

/// One Louvain run from the node order `seed` gives.
///
/// # Errors
/// As [`louvain`].
fn louvain_once(
    original: &WeightedGraph,
    resolution: f64,
    seed: u64,
    check: Check<'_>,
) -> CoreResult<(Vec<Vec<u32>>, f64)> {
    let n = original.n();
    let mut rng = SplitMix::new(seed);
    // `membership[v]` = community of original node v, refined level by level.
    let mut membership: Vec<usize> = collected(0..n, "the community membership")?;
    let mut aggregated: Option<WeightedGraph> = None;
    loop {
        let level = aggregated.as_ref().unwrap_or(original);
        let mut community: Vec<usize> = collected(0..level.n(), "the community membership")?;
        let (moved, gain) = local_moving(level, &mut community, resolution, &mut rng, check)?;
        if !moved {
            break;
        }
        let count = renumber(&mut community)?;
        for m in membership.iter_mut() {
            *m = community[*m];
        }
        // Another level only when this one merged communities and gained enough (networkx
        // stops at the same threshold); one community is as far as merging goes.
        if count == level.n() || count == 1 || gain < THRESHOLD {
            break;
        }
        // Aggregate: communities become nodes; internal weight becomes a self-loop.
        let mut edges = with_capacity(
            level.targets.len() / 2 + level.n(),
            "the aggregated community graph",
        )?;
        for v in 0..level.n() {
            let cv = community[v] as u32;
            if level.self_loops[v] != 0.0 {
                edges.push((cv, cv, level.self_loops[v]));
            }
            for (w, weight) in level.neighbors(v) {
                if w > v {
                    edges.push((cv, community[w] as u32, weight));
                }
            }
        }
        aggregated = Some(WeightedGraph::from_edges(count, edges.into_iter())?);
    }
    let count = renumber(&mut membership)?;
    let communities = grouped(&membership, count)?;
    let q = modularity_of(original, &membership, resolution)?;
    Ok((communities, q))
}

/// Modularity of a given partition (lists of node indices) on the undirected view.
///
/// # Errors
/// As [`louvain`].
pub fn modularity(
    n: usize,
    edges: &[(u32, u32, f64)],
    communities: &[Vec<u32>],
    resolution: f64,
) -> CoreResult<f64> {
    let g = WeightedGraph::normalized(n, edges)?;
    let mut membership = filled(n, 0usize, "the community membership")?;
    for (c, members) in communities.iter().enumerate() {
        for &v in members {
            membership[v as usize] = c;
        }
    }
    modularity_of(&g, &membership, resolution)
}

/// Asynchronous label propagation (weighted, seeded): every node ends with a label carried
/// by the largest weight among its neighbours. Communities as sorted node-index lists.
///
/// # Errors
/// As [`louvain`] (`check` is called once a round).
pub fn label_propagation(
    n: usize,
    edges: &[(u32, u32, f64)],
    seed: u64,
    max_rounds: usize,
    check: Check<'_>,
) -> CoreResult<Vec<Vec<u32>>> {
    let g = WeightedGraph::from_edges(n, edges.iter().copied())?;
    let mut label: Vec<usize> = collected(0..n, "the labels")?;
    let mut rng = SplitMix::new(seed);
    let mut order: Vec<usize> = collected(0..n, "the node order")?;
    let mut weight_of = filled(n, 0.0, "the label weights")?;
    // At most one a label, reserved at once as the buffers above (see `local_moving`).
    let mut touched = with_capacity(n, "the neighbouring labels")?;
    let mut best = with_capacity(n, "the best labels")?;
    for _ in 0..max_rounds {
        check()?;
        rng.shuffle(&mut order);
        let mut changed = false;
        for &v in &order {
            for (w, weight) in g.neighbors(v) {
                if weight_of[label[w]] == 0.0 {
                    touched.push(label[w]);
                }
                weight_of[label[w]] += weight;
            }
            let top = touched
                .iter()
                .map(|&l| weight_of[l])
                .fold(f64::NEG_INFINITY, f64::max);
            best.clear();
            best.extend(touched.iter().copied().filter(|&l| weight_of[l] == top));
            if !best.is_empty() && !best.contains(&label[v]) {
                label[v] = best[rng.below(best.len())];
                changed = true;
            }
            for &l in &touched {
                weight_of[l] = 0.0;
            }
            touched.clear();
        }
        if !changed {
            break;
        }
    }
    let count = renumber(&mut label)?;
    grouped(&label, count)
}

/// The nodes of each of `count` communities, by `membership` (each node's, below `count`),
/// in node order. Every list is allocated at its size, fallibly: a graph of many small
/// communities must fail as "out of memory", not abort.
fn grouped(membership: &[usize], count: usize) -> CoreResult<Vec<Vec<u32>>> {
    let mut sizes = filled(count, 0usize, "the communities' sizes")?;
    for &c in membership {
        sizes[c] += 1;
    }
    let mut communities = with_capacity(count, "the communities")?;
    for size in sizes {
        communities.push(with_capacity(size, "a community")?);
    }
    for (v, &c) in membership.iter().enumerate() {
        let members: &mut Vec<u32> = &mut communities[c];
        members.push(v as u32); // within the capacity counted above
    }
    Ok(communities)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_triangles() -> Vec<(u32, u32, f64)> {
        [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3), (2, 3)]
            .into_iter()
            .map(|(a, b)| (a, b, 1.0))
            .collect()
    }

    #[test]
    fn louvain_splits_two_triangles() {
        let (communities, q) = louvain(6, &two_triangles(), 1.0, 7, &mut || Ok(())).unwrap();
        assert_eq!(communities, vec![vec![0, 1, 2], vec![3, 4, 5]]);
        // networkx: modularity of this split is 5/14.
        assert!((q - 5.0 / 14.0).abs() < 1e-12);
        assert!((modularity(6, &two_triangles(), &communities, 1.0).unwrap() - q).abs() < 1e-12);
    }

    #[test]
    fn louvain_ends_and_ignores_the_scale_of_the_weights() {
        // Weights whose rounding residues made two nodes trade places forever.
        let money: Vec<(u32, u32, f64)> = vec![
            (5, 9, 12345.67),
            (2, 10, 12345.67),
            (4, 3, 12345.67),
            (3, 8, 37037.01),
            (2, 10, 37037.01),
            (10, 6, 12345.67),
            (4, 5, 24691.34),
            (3, 0, 37037.01),
            (8, 6, 37037.01),
            (9, 1, 37037.01),
        ];
        let unit: Vec<_> = money
            .iter()
            .map(|&(a, b, w)| (a, b, w / 12345.67))
            .collect();
        let (expected, q) = louvain(11, &unit, 1.0, 0, &mut || Ok(())).unwrap();
        let (found, q_money) = louvain(11, &money, 1.0, 0, &mut || Ok(())).unwrap();
        assert_eq!(found, expected);
        assert!((q - q_money).abs() < 1e-12);
        for scale in [1e-300, 1e-13, 1e-6, 1e6, 1e200, 1e300] {
            let scaled: Vec<_> = two_triangles()
                .into_iter()
                .map(|(a, b, w)| (a, b, w * scale))
                .collect();
            let (communities, q) = louvain(6, &scaled, 1.0, 7, &mut || Ok(())).unwrap();
            assert_eq!(communities, vec![vec![0, 1, 2], vec![3, 4, 5]], "{scale}");
            assert!((q - 5.0 / 14.0).abs() < 1e-12, "{scale}");
            let again = modularity(6, &scaled, &communities, 1.0).unwrap();
            assert!((again - q).abs() < 1e-12, "{scale}");
        }
    }

    #[test]
    fn louvain_without_weight_leaves_every_node_alone() {
        let zero = [(0, 1, 0.0), (1, 2, 0.0)];
        assert_eq!(
            louvain(3, &zero, 1.0, 0, &mut || Ok(())).unwrap(),
            (vec![vec![0], vec![1], vec![2]], 0.0)
        );
        assert_eq!(
            louvain(0, &[], 1.0, 0, &mut || Ok(())).unwrap(),
            (vec![], 0.0)
        );
    }

    #[test]
    fn a_failing_check_stops_the_run_with_its_error() {
        let stop = crate::errors::CoreError::Runtime("stop".into());
        let mut calls = 0;
        let mut check = || {
            calls += 1;
            Err(stop.clone())
        };
        assert_eq!(
            louvain(6, &two_triangles(), 1.0, 7, &mut check).err(),
            Some(stop.clone())
        );
        assert_eq!(
            label_propagation(6, &two_triangles(), 3, 100, &mut check).err(),
            Some(stop.clone())
        );
        assert_eq!(calls, 2);
    }

    #[test]
    fn label_propagation_partitions_every_node() {
        let communities = label_propagation(6, &two_triangles(), 3, 100, &mut || Ok(())).unwrap();
        let mut all: Vec<u32> = communities.concat();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
    }
}
