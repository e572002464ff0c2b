//! Betweenness centrality (Brandes), unweighted and weighted, exact or from sampled sources.
//!
//! Path counting follows networkx: parallel relationships count once (at their smallest
//! weight), and the normalization is `_rescale`'s. Sources are split across threads above
//! [`PARALLEL_SOURCES`]; each thread keeps its own scratch arrays and partial sums. A stop
//! flag, looked at before each source, lets a caller end a long run early.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::algo::PARALLEL_SOURCES;
use super::alloc::{collected, filled, with_capacity};
use super::csr::{Adjacency, Snapshot};
use crate::errors::{interrupted, CoreError, CoreResult};

/// Everything the passes know about one node, packed so one cache line serves a visit.
#[derive(Clone, Copy)]
struct NodeState {
    /// Shortest-path count from the source.
    sigma: f64,
    /// Dependency accumulated in the backward pass.
    delta: f64,
    /// Weighted distance (weighted runs).
    dist: f64,
    /// Hop distance (unweighted runs); in weighted runs [`QUEUED`] or [`SETTLED`] once seen
    /// (a weighted distance may be infinite: finite weights can sum past `f64::MAX`).
    hops: u32,
    /// Weighted runs: the node's place in the order nodes are settled in.
    rank: u32,
}

const UNSEEN: NodeState = NodeState {
    sigma: 0.0,
    delta: 0.0,
    dist: f64::INFINITY,
    hops: u32::MAX,
    rank: u32::MAX,
};

/// `hops` of a node a weighted run has reached but not settled.
const QUEUED: u32 = 1;
/// `hops` of a node a weighted run has settled.
const SETTLED: u32 = 0;

/// Per-thread buffers, reused across sources.
struct Scratch {
    nodes: Vec<NodeState>,
    order: Vec<u32>,
    touched: Vec<u32>,
    /// Shortest-path DAG edges `(parent, child)` in discovery order (unweighted runs).
    dag: Vec<(u32, u32)>,
    heap: BinaryHeap<Item>,
}

#[derive(PartialEq)]
struct Item(f64, u32);

impl Eq for Item {}

impl Ord for Item {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .0
            .total_cmp(&self.0)
            .then_with(|| other.1.cmp(&self.1))
    }
}

impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Scratch {
    /// Buffers for a graph of `n` nodes.
    ///
    /// # Errors
    /// [`CoreError::Graph`] when they do not fit in memory.
    fn new(n: usize) -> CoreResult<Scratch> {
        Ok(Scratch {
            nodes: filled(n, UNSEEN, "the betweenness scratch")?,
            order: with_capacity(n, "the betweenness scratch")?,
            touched: Vec::new(),
            dag: Vec::new(),
            heap: BinaryHeap::new(),
        })
    }

    /// Resets only what the last source touched.
    fn reset(&mut self) {
        for &v in self.order.iter().chain(&self.touched) {
            self.nodes[v as usize] = UNSEEN;
        }
        self.order.clear();
        self.touched.clear();
        self.dag.clear();
    }
}

/// Adds source `s`'s dependencies to `scores` (unweighted: BFS path counting).
///
/// The forward pass records the shortest-path DAG's edges in discovery order; walking that
/// list backwards meets every child's edges before its parents', so each dependency is final
/// when it is passed on, and no neighbour list is scanned twice.
fn accumulate_unweighted(fwd: &Adjacency, s: u32, sc: &mut Scratch, scores: &mut [f64]) {
    sc.reset();
    let nodes = &mut sc.nodes;
    nodes[s as usize].hops = 0;
    nodes[s as usize].sigma = 1.0;
    sc.order.push(s);
    let mut head = 0;
    while head < sc.order.len() {
        let v = sc.order[head];
        head += 1;
        let NodeState { hops, sigma, .. } = nodes[v as usize];
        let next = hops + 1;
        for &w in fwd.neighbors(v as usize).0 {
            let node = &mut nodes[w as usize];
            if node.hops == u32::MAX {
                node.hops = next;
                sc.order.push(w);
            }
            if node.hops == next {
                node.sigma += sigma;
                sc.dag.push((v, w));
            }
        }
    }
    for &(v, w) in sc.dag.iter().rev() {
        let child = nodes[w as usize];
        let parent = &mut nodes[v as usize];
        parent.delta += parent.sigma * ((1.0 + child.delta) / child.sigma);
    }
    for &w in &sc.order[1..] {
        scores[w as usize] += nodes[w as usize].delta;
    }
}

/// Adds source `s`'s dependencies to `scores` (weighted: Dijkstra path counting, with
/// networkx's rule that two paths tie only when their float lengths are exactly equal).
///
/// A node's shortest-path predecessors are the nodes settled before it whose distance plus
/// the weight between them equals its own: exactly the ones whose counts its `sigma` summed
/// (a distance is compared as a float, so a weight lost to rounding, or two paths that both
/// overflow to inf, do not make a node its own descendant's predecessor). `back` is the
/// reverse of `fwd`.
fn accumulate_weighted(
    fwd: &Adjacency,
    back: &Adjacency,
    s: u32,
    sc: &mut Scratch,
    scores: &mut [f64],
) {
    sc.reset();
    let nodes = &mut sc.nodes;
    nodes[s as usize].dist = 0.0;
    nodes[s as usize].sigma = 1.0;
    nodes[s as usize].hops = QUEUED;
    sc.touched.push(s);
    sc.heap.push(Item(0.0, s));
    while let Some(Item(d, v)) = sc.heap.pop() {
        let vi = v as usize;
        if nodes[vi].hops == SETTLED {
            continue; // settled already (a stale heap entry)
        }
        nodes[vi].hops = SETTLED;
        nodes[vi].rank = sc.order.len() as u32;
        sc.order.push(v);
        let sigma = nodes[vi].sigma;
        let (targets, weights) = fwd.neighbors(vi);
        for (&w, &weight) in targets.iter().zip(weights) {
            let node = &mut nodes[w as usize];
            if node.hops == SETTLED {
                continue;
            }
            let candidate = d + weight;
            // Seen is tracked apart from the distance: a path of cost inf is still a path.
            let unseen = node.hops == u32::MAX;
            if unseen || candidate < node.dist {
                if unseen {
                    node.hops = QUEUED;
                    sc.touched.push(w);
                }
                node.dist = candidate;
                node.sigma = sigma;
                sc.heap.push(Item(candidate, w));
            } else if candidate == node.dist {
                node.sigma += sigma;
            }
        }
    }
    for &w in sc.order.iter().rev() {
        let w = w as usize;
        if w == s as usize {
            continue;
        }
        let NodeState {
            sigma,
            delta,
            dist,
            rank,
            ..
        } = nodes[w];
        let coefficient = (1.0 + delta) / sigma;
        let (sources, weights) = back.neighbors(w);
        for (&v, &weight) in sources.iter().zip(weights) {
            let node = &mut nodes[v as usize];
            if node.hops == SETTLED && node.rank < rank && node.dist + weight == dist {
                node.delta += node.sigma * coefficient;
            }
        }
        scores[w] += delta;
    }
}

/// Runs with fewer steps than this (sources times nodes and relationships) end soon enough
/// that a way to stop them early would cost more than it saves.
const STOPPABLE_STEPS: usize = 1 << 20;

/// Whether a run from `sources` sources over `g` is long enough to be worth making stoppable
/// (see [`stoppable_betweenness`]).
pub fn worth_stopping(g: &Snapshot, sources: usize) -> bool {
    sources.saturating_mul(g.n.saturating_add(g.edges().len())) >= STOPPABLE_STEPS
}

/// Betweenness of every node: [`stoppable_betweenness`] run to its end.
///
/// # Errors
/// As [`stoppable_betweenness`], never interrupted.
pub fn betweenness(
    g: &Snapshot,
    directed: bool,
    weighted: bool,
    normalized: bool,
    sources: Option<&[u32]>,
) -> CoreResult<Vec<f64>> {
    let never = AtomicBool::new(false);
    stoppable_betweenness(g, directed, weighted, normalized, sources, &never)
}

/// Betweenness of every node, stopping before the next source once `stop` is set.
///
/// `sources` restricts the sum to those sources (a sample of at least one) and rescales the
/// estimate as networkx's `k=` does. The sources must be distinct, as networkx's sample is
/// (the caller checks): a repeated one would be summed twice but rescaled as two sources.
/// Weighted runs refuse non-positive weights.
///
/// # Errors
/// [`CoreError::Graph`] when `sources` is an empty sample, a weighted run meets a
/// non-positive weight, or the per-thread buffers (two rows of one slot per node) do not fit
/// in memory; [`interrupted`] when `stop` was set before the last source was done.
pub fn stoppable_betweenness(
    g: &Snapshot,
    directed: bool,
    weighted: bool,
    normalized: bool,
    sources: Option<&[u32]>,
    stop: &AtomicBool,
) -> CoreResult<Vec<f64>> {
    let n = g.n;
    if sources.is_some_and(<[u32]>::is_empty) {
        // The estimate rescales by the sample size: an empty sample has none to give.
        return Err(CoreError::Graph(
            "betweenness needs at least one source entity, got none".into(),
        ));
    }
    if weighted && g.has_negative_weight {
        return Err(CoreError::Graph(
            "weighted betweenness needs non-negative weights; the graph has a negative one".into(),
        ));
    }
    if weighted && g.edges().iter().any(|&(_, _, w)| w == 0.0) {
        return Err(CoreError::Graph(
            "weighted betweenness needs positive weights; the graph has a zero weight".into(),
        ));
    }
    // Unit weights give the same shortest paths as hop counts, at BFS cost.
    let weighted = weighted && !g.unit_weights;
    let sampled = sources.is_some();
    // The views are built here, once, rather than raced for by the parallel workers.
    let fwd = g.view(directed)?;
    let back = if weighted {
        Some(g.reverse_view(directed)?)
    } else {
        None
    };
    let all: Vec<u32>;
    let sources = match sources {
        Some(s) => s,
        None => {
            all = collected(0..n as u32, "the betweenness sources")?;
            &all
        }
    };
    // A source's passes are short, and the partial sums consistent between two of them.
    let stopped = || -> CoreResult<()> {
        if stop.load(Ordering::Relaxed) {
            Err(interrupted())
        } else {
            Ok(())
        }
    };
    let run = |sc: &mut Scratch, scores: &mut Vec<f64>, s: u32| -> CoreResult<()> {
        stopped()?;
        match back {
            Some(back) => accumulate_weighted(fwd, back, s, sc, scores),
            None => accumulate_unweighted(fwd, s, sc, scores),
        }
        Ok(())
    };
    let buffers = || -> CoreResult<(Scratch, Vec<f64>)> {
        stopped()?;
        Ok((Scratch::new(n)?, filled(n, 0.0, "the betweenness scores")?))
    };
    // Each worker's buffers are allocated as its share starts: a share whose buffers do not
    // fit (or that starts once stopped) skips its sources, and the run fails with that error.
    let parallel = || {
        sources
            .par_iter()
            .fold(buffers, |state, &s| {
                let (mut sc, mut scores) = state?;
                run(&mut sc, &mut scores, s)?;
                Ok((sc, scores))
            })
            .map(|state| state.map(|(_, scores)| scores))
            .reduce_with(|a, b| {
                let (mut a, b) = (a?, b?);
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                Ok(a)
            })
    };
    let partial = if sources.len() >= PARALLEL_SOURCES {
        crate::sync::parallel(|_| parallel())
    } else {
        None
    };
    // Small runs, and any run without a pool (threads cannot be spawned), go here.
    let mut scores = match partial {
        Some(Some(scores)) => scores?,
        Some(None) => filled(n, 0.0, "the betweenness scores")?,
        None => {
            let (mut sc, mut scores) = buffers()?;
            for &s in sources {
                run(&mut sc, &mut scores, s)?;
            }
            scores
        }
    };
    rescale(
        &mut scores,
        normalized,
        directed,
        sampled.then_some(sources),
    )?;
    Ok(scores)
}

/// networkx's `_rescale` (3.6, endpoints excluded): exact runs divide by the number of
/// ordered pairs; sampled runs scale source and non-source nodes differently, so that the
/// estimate is unbiased (a single source leaves its own score undefined: NaN, as there).
/// `sample` holds distinct nodes: its length is the `k` of the rescaling.
///
/// # Errors
/// [`CoreError::Graph`] when the marks of the sampled sources do not fit in memory.
fn rescale(
    scores: &mut [f64],
    normalized: bool,
    directed: bool,
    sample: Option<&[u32]>,
) -> CoreResult<()> {
    let n = scores.len();
    if n < 3 {
        return Ok(()); // every score is 0
    }
    let pairs_per_source = (n - 2) as f64; // N - 1 with N = n - 1
    let correction = if directed { 1.0 } else { 2.0 };
    let Some(sample) = sample else {
        let scale = if normalized {
            1.0 / ((n - 1) as f64 * pairs_per_source)
        } else {
            1.0 / correction
        };
        scores.iter_mut().for_each(|x| *x *= scale);
        return Ok(());
    };
    let k = sample.len() as f64;
    let (source_scale, other_scale) = if normalized {
        (
            1.0 / ((k - 1.0) * pairs_per_source),
            1.0 / (k * pairs_per_source),
        )
    } else {
        let big_n = (n - 1) as f64;
        (big_n / ((k - 1.0) * correction), big_n / (k * correction))
    };
    let source_scale = if sample.len() > 1 {
        source_scale
    } else {
        f64::NAN
    };
    let mut is_source = filled(n, false, "the sampled sources' marks")?;
    for &s in sample {
        is_source[s as usize] = true;
    }
    for (x, source) in scores.iter_mut().zip(is_source) {
        *x *= if source { source_scale } else { other_scale };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::store::Store;
    use serde_json::Value;

    fn path_graph(n: usize, w: f64) -> Snapshot {
        let mut s = Store::default();
        for i in 0..n {
            s.add_entity(i.to_string(), String::new(), Value::Null)
                .unwrap();
        }
        for i in 0..n - 1 {
            let k = s.intern("k");
            s.push_relationship(i as u32, i as u32 + 1, k, w);
        }
        Snapshot::build(&s).unwrap()
    }

    #[test]
    fn path_graph_matches_the_closed_form() {
        // Undirected path 0-1-2-3: unnormalized scores are 0, 2, 2, 0.
        for weight in [1.0, 2.5] {
            let g = path_graph(4, weight);
            let b = betweenness(&g, false, weight != 1.0, false, None).unwrap();
            assert_eq!(b, vec![0.0, 2.0, 2.0, 0.0]);
            let normalized = betweenness(&g, false, true, true, None).unwrap();
            assert!((normalized[1] - 2.0 / 3.0).abs() < 1e-12);
        }
        let directed = betweenness(&path_graph(4, 1.0), true, false, false, None).unwrap();
        assert_eq!(directed, vec![0.0, 2.0, 2.0, 0.0]);
    }

    #[test]
    fn paths_whose_length_overflows_to_inf_still_count() {
        // 0 -> 1 -> 2 at 1e308 a step: the 0 -> 2 path passes through 1 (networkx: 1.0).
        let mut s = Store::default();
        for i in 0..4 {
            s.add_entity(i.to_string(), String::new(), Value::Null)
                .unwrap();
        }
        let k = s.intern("k");
        s.push_relationship(0, 1, k, 1e308);
        s.push_relationship(1, 2, k, 1e308);
        let g = Snapshot::build(&s).unwrap();
        let b = betweenness(&g, true, true, false, None).unwrap();
        assert_eq!(b, vec![0.0, 1.0, 0.0, 0.0]);
        // Two such paths to 3, through 1 and through 2: each carries half.
        let mut s = Store::default();
        for i in 0..4 {
            s.add_entity(i.to_string(), String::new(), Value::Null)
                .unwrap();
        }
        let k = s.intern("k");
        for (a, b) in [(0, 1), (0, 2), (1, 3), (2, 3)] {
            s.push_relationship(a, b, k, 1e308);
        }
        let g = Snapshot::build(&s).unwrap();
        let b = betweenness(&g, true, true, false, None).unwrap();
        assert_eq!(b, vec![0.0, 0.5, 0.5, 0.0]);
    }

    #[test]
    fn an_empty_sample_is_refused() {
        let g = path_graph(4, 1.0);
        for normalized in [true, false] {
            let err = betweenness(&g, true, false, normalized, Some(&[])).unwrap_err();
            assert!(matches!(err, CoreError::Graph(_)), "{err:?}");
        }
        assert!(betweenness(&g, true, false, true, Some(&[1])).is_ok());
    }

    #[test]
    fn parallel_and_serial_agree() {
        let n = PARALLEL_SOURCES + 50;
        let g = path_graph(n, 1.0);
        let all: Vec<u32> = (0..n as u32).collect();
        let parallel = betweenness(&g, false, false, true, None).unwrap();
        let serial_part = betweenness(&g, false, false, true, Some(&all[..10])).unwrap();
        assert!(parallel.iter().all(|x| x.is_finite()));
        assert!(serial_part.iter().all(|x| x.is_finite()));
        assert!((parallel[n / 2] - 0.5).abs() < 0.01);
    }

    #[test]
    fn a_set_stop_flag_ends_serial_and_parallel_runs() {
        let stop = AtomicBool::new(true);
        for n in [10, PARALLEL_SOURCES + 50] {
            for weighted in [false, true] {
                let g = path_graph(n, if weighted { 2.5 } else { 1.0 });
                let run = |stop| stoppable_betweenness(&g, false, weighted, true, None, stop);
                assert_eq!(run(&stop), Err(interrupted()));
                assert_eq!(
                    run(&AtomicBool::new(false)),
                    betweenness(&g, false, weighted, true, None)
                );
            }
        }
    }

    #[test]
    fn only_long_runs_are_worth_stopping() {
        let g = path_graph(1000, 1.0); // 1000 nodes, 999 relationships
        assert!(!worth_stopping(&g, 10));
        assert!(worth_stopping(&g, 1000));
        assert!(worth_stopping(&g, usize::MAX));
    }
}
