//! Compact adjacency (CSR) snapshots the algorithms run on, rebuilt only after a mutation.
//!
//! Parallel relationships collapse into one neighbour with the smallest weight (what shortest
//! paths and path counting see, as in networkx on a multigraph); neighbours keep the order of
//! first insertion, so traversals are deterministic and match networkx's adjacency order.
//!
//! A [`Snapshot`] holds the relationship list and the degree counts, gathered in one pass
//! (or while `from_edge_list` reads its input); each adjacency view is built from them on
//! first use, in O(n + m) with no hashing and no sort: the degrees give the row offsets, a
//! placing pass writes every half-edge into its row (a stable counting sort, so insertion
//! order holds within a row), and a last pass collapses parallel edges in place, writing
//! nothing while it has found none. (Per-entity queries such as `edges_from` read the
//! store's own links, [`crate::graph::store::Links`], and need no snapshot.)

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::alloc::{filled, reserve};
use super::store::{EdgeList, Store};
use crate::errors::CoreResult;

/// One direction of adjacency in compressed sparse row form.
#[derive(Debug, Default, Clone)]
pub struct Adjacency {
    offsets: Vec<u32>,
    targets: Vec<u32>,
    weights: Vec<f64>,
}

impl Adjacency {
    /// Builds the `direction` view of `edges` (`(from, to, weight)`, every index below `n`),
    /// whose degrees are `degrees`.
    ///
    /// # Errors
    /// [`crate::errors::CoreError::Graph`] when the view does not fit in memory.
    fn build(
        n: usize,
        edges: &[(u32, u32, f64)],
        degrees: &Degrees,
        direction: Direction,
    ) -> CoreResult<Adjacency> {
        // The half-edges leaving each row, then (exclusive prefix sum) where each row starts.
        let mut offsets = filled(n + 1, 0u32, "an adjacency view's row offsets")?;
        match direction {
            Direction::Out => offsets[..n].copy_from_slice(&degrees.out),
            Direction::In => offsets[..n].copy_from_slice(&degrees.incoming),
            Direction::Both => {
                for ((count, &out), &incoming) in
                    offsets.iter_mut().zip(&degrees.out).zip(&degrees.incoming)
                {
                    *count = out + incoming;
                }
                for &v in &degrees.loops {
                    offsets[v as usize] -= 1; // a self-loop is one undirected half-edge
                }
            }
        }
        let mut sum = 0;
        for offset in &mut offsets[..n] {
            let count = *offset;
            *offset = sum;
            sum += count;
        }
        offsets[n] = sum;
        // Stable placement: each row fills in the order its half-edges come. The row starts
        // serve as cursors, which end where the next row starts: shifted back afterwards.
        let mut targets = filled(sum as usize, 0u32, "an adjacency view's neighbours")?;
        let mut weights = filled(sum as usize, 0f64, "an adjacency view's weights")?;
        for_each_half_edge(edges, direction, |s, t, w| {
            let slot = &mut offsets[s as usize];
            targets[*slot as usize] = t;
            weights[*slot as usize] = w;
            *slot += 1;
        });
        offsets.copy_within(0..n, 1);
        offsets[0] = 0;
        collapse_parallel(&mut offsets, &mut targets, &mut weights)?;
        Ok(Adjacency {
            offsets,
            targets,
            weights,
        })
    }

    /// Neighbours of `v` and the (smallest) weight to each.
    #[inline]
    pub fn neighbors(&self, v: usize) -> (&[u32], &[f64]) {
        let (a, b) = (self.offsets[v] as usize, self.offsets[v + 1] as usize);
        (&self.targets[a..b], &self.weights[a..b])
    }

    /// Number of distinct neighbours of `v`.
    #[inline]
    pub fn degree(&self, v: usize) -> usize {
        (self.offsets[v + 1] - self.offsets[v]) as usize
    }

    /// Number of stored (collapsed) edges.
    pub fn edge_count(&self) -> usize {
        self.targets.len()
    }
}

/// Collapses the repeated targets of each row into their first position with the smallest
/// weight, and closes the gaps. In place: a row only ever moves towards the front, and
/// nothing is written before the first repeat.
///
/// # Errors
/// [`crate::errors::CoreError::Graph`] when its scratch row (one slot per node) does not fit
/// in memory.
fn collapse_parallel(
    offsets: &mut [u32],
    targets: &mut Vec<u32>,
    weights: &mut Vec<f64>,
) -> CoreResult<()> {
    let n = offsets.len() - 1;
    // written[t] is 1 + where `t` was last written (0: never). Positions only grow, so `t` is
    // already in the current row exactly when that position is at or past the row's start.
    let mut written = filled(n, 0u32, "the parallel-relationship scan")?;
    // Scan the targets alone until a row repeats one: the rows before it are final as they
    // are (most graphs have no parallel edges at all, and end here).
    let (mut row, mut read) = (0usize, 0usize);
    'scan: while row < n {
        let (row_start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
        while read < end {
            let last = &mut written[targets[read] as usize];
            if *last as usize > row_start {
                break 'scan;
            }
            *last = read as u32 + 1;
            read += 1;
        }
        row += 1;
    }
    if row == n {
        return Ok(());
    }
    // From the first repeat on, compact: `write` trails `read`.
    let mut write = read;
    let mut row_start = offsets[row] as usize;
    while row < n {
        let end = offsets[row + 1] as usize;
        while read < end {
            let (t, w) = (targets[read], weights[read]);
            read += 1;
            let last = &mut written[t as usize];
            if *last as usize > row_start {
                let at = *last as usize - 1;
                if w < weights[at] {
                    weights[at] = w;
                }
            } else {
                *last = write as u32 + 1;
                targets[write] = t;
                weights[write] = w;
                write += 1;
            }
        }
        offsets[row + 1] = write as u32;
        row_start = write;
        row += 1;
    }
    targets.truncate(write);
    weights.truncate(write);
    Ok(())
}

/// Which half-edges of a relationship list a view is made of.
#[derive(Clone, Copy)]
enum Direction {
    /// `from -> to`.
    Out,
    /// `to -> from`.
    In,
    /// Both, a self-loop once.
    Both,
}

/// Calls `f` on every half-edge `(source, target, weight)` of `direction`, in relationship
/// order.
#[inline]
fn for_each_half_edge(
    edges: &[(u32, u32, f64)],
    direction: Direction,
    mut f: impl FnMut(u32, u32, f64),
) {
    match direction {
        Direction::Out => edges.iter().for_each(|&(a, b, w)| f(a, b, w)),
        Direction::In => edges.iter().for_each(|&(a, b, w)| f(b, a, w)),
        Direction::Both => edges.iter().for_each(|&(a, b, w)| {
            f(a, b, w);
            if a != b {
                f(b, a, w);
            }
        }),
    }
}

/// Relationship counts per entity, from which every view's row offsets follow.
#[derive(Debug, Default)]
struct Degrees {
    out: Vec<u32>,
    incoming: Vec<u32>,
    /// The entity of every self-loop (counted once, not twice, in the undirected view).
    loops: Vec<u32>,
}

/// Gathers a [`Snapshot`] relationship by relationship: the list, the degrees and the weight
/// flags in one pass (`from_edge_list` feeds it as it reads its input).
#[derive(Debug)]
pub struct SnapshotBuilder {
    n: usize,
    edges: Vec<(u32, u32, f64)>,
    degrees: Degrees,
    has_negative_weight: bool,
    unit_weights: bool,
}

impl SnapshotBuilder {
    /// A builder for `n` entities, with room for `relationships` relationships.
    ///
    /// # Errors
    /// [`crate::errors::CoreError::Graph`] when that does not fit in memory.
    pub fn new(n: usize, relationships: usize) -> CoreResult<SnapshotBuilder> {
        let mut edges = Vec::new();
        reserve(&mut edges, relationships, "graph snapshot")?;
        Ok(SnapshotBuilder {
            n,
            edges,
            degrees: Degrees {
                out: filled(n, 0, "graph snapshot")?,
                incoming: filled(n, 0, "graph snapshot")?,
                loops: Vec::new(),
            },
            has_negative_weight: false,
            unit_weights: true,
        })
    }

    /// Adds the relationship `from -> to` (both below `n`) of weight `weight`.
    #[inline(always)]
    pub fn push(&mut self, from: u32, to: u32, weight: f64) {
        self.edges.push((from, to, weight));
        self.count(from, to, weight);
    }

    /// Counts the relationship `from -> to` of weight `weight` in the degrees and flags.
    #[inline(always)]
    fn count(&mut self, from: u32, to: u32, weight: f64) {
        self.degrees.out[from as usize] += 1;
        self.degrees.incoming[to as usize] += 1;
        if from == to {
            self.degrees.loops.push(from);
        }
        self.has_negative_weight |= weight < 0.0;
        self.unit_weights &= weight == 1.0;
    }

    /// The snapshot of the relationships pushed, in that order. O(1): the views come on
    /// first use.
    pub fn finish(mut self) -> Snapshot {
        let edges = Arc::new(std::mem::take(&mut self.edges));
        self.finish_with(edges)
    }

    /// The snapshot of `edges`, which this builder has counted (and not pushed).
    fn finish_with(self, edges: EdgeList) -> Snapshot {
        Snapshot {
            n: self.n,
            edges,
            degrees: self.degrees,
            out: OnceLock::new(),
            incoming: OnceLock::new(),
            undirected: OnceLock::new(),
            building: Mutex::new(()),
            has_negative_weight: self.has_negative_weight,
            unit_weights: self.unit_weights,
        }
    }
}

/// The graph as algorithms read it, for one mutation generation: the relationship list, and
/// each adjacency view built from it on first use (a query pays only for the view it reads;
/// a view, once built, serves every later query of the generation).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Number of entities.
    pub n: usize,
    /// `(from, to, weight)` of every relationship, in insertion order.
    edges: EdgeList,
    degrees: Degrees,
    out: OnceLock<Adjacency>,
    incoming: OnceLock<Adjacency>,
    undirected: OnceLock<Adjacency>,
    /// Held while a view is built: a view is built once, by the first query that needs it,
    /// while later ones wait for it (a failed build leaves the cell empty for the next try).
    building: Mutex<()>,
    /// Whether any relationship has a negative weight (Dijkstra refuses them).
    pub has_negative_weight: bool,
    /// Whether every weight equals 1 (weighted algorithms may then take the BFS path).
    pub unit_weights: bool,
}

impl Snapshot {
    /// Builds the snapshot of `store`. O(n + m); the views come on first use.
    ///
    /// # Errors
    /// [`crate::errors::CoreError::Graph`] when it does not fit in memory.
    pub fn build(store: &Store) -> CoreResult<Snapshot> {
        let n = store.entity_count();
        if let Some(edges) = store.plain_edges() {
            // Shared with the store, not copied: only the degrees are counted.
            let mut builder = SnapshotBuilder::new(n, 0)?;
            for &(from, to, weight) in edges.iter() {
                builder.count(from, to, weight);
            }
            return Ok(builder.finish_with(edges.clone()));
        }
        let relationships = store.relationships();
        let mut builder = SnapshotBuilder::new(n, relationships.len())?;
        for r in relationships {
            builder.push(r.from, r.to, r.weight);
        }
        Ok(builder.finish())
    }

    /// The relationship list, shared.
    pub fn shared_edges(&self) -> EdgeList {
        self.edges.clone()
    }

    /// `(from, to, weight)` of every relationship, in insertion order.
    pub fn edges(&self) -> &[(u32, u32, f64)] {
        &self.edges
    }

    /// Outgoing neighbours (built on first use).
    ///
    /// # Errors
    /// [`crate::errors::CoreError::Graph`] when the view does not fit in memory.
    pub fn out(&self) -> CoreResult<&Adjacency> {
        self.view_of(&self.out, Direction::Out)
    }

    /// Incoming neighbours (built on first use).
    ///
    /// # Errors
    /// As [`Snapshot::out`].
    pub fn incoming(&self) -> CoreResult<&Adjacency> {
        self.view_of(&self.incoming, Direction::In)
    }

    /// Neighbours ignoring direction (built on first use).
    ///
    /// # Errors
    /// As [`Snapshot::out`].
    pub fn undirected(&self) -> CoreResult<&Adjacency> {
        self.view_of(&self.undirected, Direction::Both)
    }

    /// Number of relationships touching `v`, a self-loop once: its degree in the undirected
    /// view before parallel relationships collapse.
    pub fn relationships_touching(&self, v: usize) -> usize {
        let loops = self
            .degrees
            .loops
            .iter()
            .filter(|&&u| u as usize == v)
            .count();
        self.degrees.out[v] as usize + self.degrees.incoming[v] as usize - loops
    }

    fn view_of<'a>(
        &'a self,
        cell: &'a OnceLock<Adjacency>,
        direction: Direction,
    ) -> CoreResult<&'a Adjacency> {
        self.built_once(cell, || {
            Adjacency::build(self.n, &self.edges, &self.degrees, direction)
        })
    }

    /// The value of `cell`, built by `build` on first use. A build that fails (out of
    /// memory) leaves the cell empty, so a later query tries again rather than inheriting
    /// the error; concurrent first uses wait for one build instead of each making its own.
    fn built_once<'a, T>(
        &'a self,
        cell: &'a OnceLock<T>,
        build: impl FnOnce() -> CoreResult<T>,
    ) -> CoreResult<&'a T> {
        if let Some(value) = cell.get() {
            return Ok(value);
        }
        let _building = self.building.lock();
        if let Some(value) = cell.get() {
            return Ok(value); // built by the query this one waited for
        }
        let built = build()?;
        Ok(cell.get_or_init(|| built))
    }

    /// The forward adjacency of the requested view.
    ///
    /// # Errors
    /// As [`Snapshot::out`].
    pub fn view(&self, directed: bool) -> CoreResult<&Adjacency> {
        if directed {
            self.out()
        } else {
            self.undirected()
        }
    }

    /// The adjacency a predecessor walk uses (reverse of `view`).
    ///
    /// # Errors
    /// As [`Snapshot::out`].
    pub fn reverse_view(&self, directed: bool) -> CoreResult<&Adjacency> {
        if directed {
            self.incoming()
        } else {
            self.undirected()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(n: usize, edges: &[(u32, u32, f64)]) -> Snapshot {
        let mut builder = SnapshotBuilder::new(n, edges.len()).unwrap();
        for &(a, b, w) in edges {
            builder.push(a, b, w);
        }
        builder.finish()
    }

    /// The view by definition: each row's half-edges in relationship order, a repeated
    /// target kept at its first place with the smallest weight.
    fn reference(
        n: usize,
        edges: &[(u32, u32, f64)],
        direction: Direction,
    ) -> Vec<Vec<(u32, f64)>> {
        let mut rows: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
        for_each_half_edge(edges, direction, |s, t, w| {
            let row = &mut rows[s as usize];
            match row.iter_mut().find(|(u, _)| *u == t) {
                Some((_, weight)) => *weight = weight.min(w),
                None => row.push((t, w)),
            }
        });
        rows
    }

    fn rows(adj: &Adjacency, n: usize) -> Vec<Vec<(u32, f64)>> {
        (0..n)
            .map(|v| {
                let (targets, weights) = adj.neighbors(v);
                targets
                    .iter()
                    .copied()
                    .zip(weights.iter().copied())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn parallel_edges_collapse_to_the_lightest_in_first_seen_order() {
        let g = snapshot(
            3,
            &[
                (0, 2, 5.0),
                (0, 1, 1.0),
                (0, 2, 2.0),
                (1, 0, 1.0),
                (0, 1, 3.0),
            ],
        );
        let adj = g.out().unwrap();
        assert_eq!(adj.neighbors(0), (&[2u32, 1][..], &[2.0, 1.0][..]));
        assert_eq!(adj.neighbors(1), (&[0u32][..], &[1.0][..]));
        assert_eq!(adj.degree(2), 0);
        assert_eq!(adj.edge_count(), 3);
        // Undirected: 0-1 three times (weights 1, 1, 3), 0-2 twice.
        assert_eq!(
            g.undirected().unwrap().neighbors(0),
            (&[2u32, 1][..], &[2.0, 1.0][..])
        );
        assert_eq!(
            g.undirected().unwrap().neighbors(1),
            (&[0u32][..], &[1.0][..])
        );
    }

    #[test]
    fn every_view_matches_its_definition() {
        // Pseudo-random multigraphs with self-loops, repeats early, late or nowhere.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        for case in 0..200 {
            let n = 1 + next(12) as usize;
            let m = next(40) as usize;
            let edges: Vec<(u32, u32, f64)> = (0..m)
                .map(|_| {
                    let a = next(n as u64) as u32;
                    let b = if case % 3 == 0 {
                        a
                    } else {
                        next(n as u64) as u32
                    };
                    (a, b, next(5) as f64 - 1.0)
                })
                .collect();
            let g = snapshot(n, &edges);
            assert_eq!(
                rows(g.out().unwrap(), n),
                reference(n, &edges, Direction::Out)
            );
            assert_eq!(
                rows(g.incoming().unwrap(), n),
                reference(n, &edges, Direction::In)
            );
            assert_eq!(
                rows(g.undirected().unwrap(), n),
                reference(n, &edges, Direction::Both)
            );
            for v in 0..n {
                let touching = edges
                    .iter()
                    .filter(|e| e.0 == v as u32 || e.1 == v as u32)
                    .count();
                assert_eq!(g.relationships_touching(v), touching);
            }
            assert_eq!(g.has_negative_weight, edges.iter().any(|e| e.2 < 0.0));
            assert_eq!(g.unit_weights, edges.iter().all(|e| e.2 == 1.0));
        }
    }
}
