//! Compact adjacency (CSR) snapshots the algorithms run on, rebuilt only after a mutation.
//!
//! Parallel relationships collapse into one neighbour with the smallest weight (what shortest
//! paths and path counting see, as in networkx on a multigraph); neighbours keep the order of
//! first insertion, so traversals are deterministic and match networkx's adjacency order.

use super::store::Store;

/// One direction of adjacency in compressed sparse row form.
#[derive(Debug, Default, Clone)]
pub struct Adjacency {
    offsets: Vec<u32>,
    targets: Vec<u32>,
    weights: Vec<f64>,
}

impl Adjacency {
    /// Builds from half-edges `(source, target, weight)` over `n` nodes, in the given order.
    fn build(n: usize, half_edges: &[(u32, u32, f64)]) -> Adjacency {
        // Stable counting sort by source keeps insertion order within each row.
        let mut counts = vec![0u32; n + 1];
        for &(s, _, _) in half_edges {
            counts[s as usize + 1] += 1;
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let mut fill = counts.clone();
        let mut sorted = vec![(0u32, 0f64); half_edges.len()];
        for &(s, t, w) in half_edges {
            let slot = &mut fill[s as usize];
            sorted[*slot as usize] = (t, w);
            *slot += 1;
        }
        // Collapse parallel edges per row: `seen[t]` holds the row that last saw `t` and
        // `position[t]` where it was written.
        let mut seen = vec![u32::MAX; n];
        let mut position = vec![0u32; n];
        let mut offsets = Vec::with_capacity(n + 1);
        let mut targets = Vec::with_capacity(sorted.len());
        let mut weights = Vec::with_capacity(sorted.len());
        offsets.push(0);
        for row in 0..n {
            for &(t, w) in &sorted[counts[row] as usize..counts[row + 1] as usize] {
                if seen[t as usize] == row as u32 {
                    let at = position[t as usize] as usize;
                    if w < weights[at] {
                        weights[at] = w;
                    }
                } else {
                    seen[t as usize] = row as u32;
                    position[t as usize] = targets.len() as u32;
                    targets.push(t);
                    weights.push(w);
                }
            }
            offsets.push(targets.len() as u32);
        }
        Adjacency {
            offsets,
            targets,
            weights,
        }
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

/// Every view of the graph an algorithm may need, built together after a mutation.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Number of entities.
    pub n: usize,
    /// Outgoing neighbours.
    pub out: Adjacency,
    /// Incoming neighbours.
    pub incoming: Adjacency,
    /// Neighbours ignoring direction.
    pub undirected: Adjacency,
    /// Whether any relationship has a negative weight (Dijkstra refuses them).
    pub has_negative_weight: bool,
    /// Whether every weight equals 1 (weighted algorithms may then take the BFS path).
    pub unit_weights: bool,
}

impl Snapshot {
    /// Builds the snapshot of `store`.
    pub fn build(store: &Store) -> Snapshot {
        let n = store.entity_count();
        let rels = store.relationships();
        let forward: Vec<(u32, u32, f64)> = rels.iter().map(|r| (r.from, r.to, r.weight)).collect();
        let backward: Vec<(u32, u32, f64)> =
            rels.iter().map(|r| (r.to, r.from, r.weight)).collect();
        let mut both = Vec::with_capacity(rels.len() * 2);
        for r in rels {
            both.push((r.from, r.to, r.weight));
            if r.from != r.to {
                both.push((r.to, r.from, r.weight));
            }
        }
        Snapshot {
            n,
            out: Adjacency::build(n, &forward),
            incoming: Adjacency::build(n, &backward),
            undirected: Adjacency::build(n, &both),
            has_negative_weight: rels.iter().any(|r| r.weight < 0.0),
            unit_weights: rels.iter().all(|r| r.weight == 1.0),
        }
    }

    /// The forward adjacency of the requested view.
    pub fn view(&self, directed: bool) -> &Adjacency {
        if directed {
            &self.out
        } else {
            &self.undirected
        }
    }

    /// The adjacency a predecessor walk uses (reverse of `view`).
    pub fn reverse_view(&self, directed: bool) -> &Adjacency {
        if directed {
            &self.incoming
        } else {
            &self.undirected
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_edges_collapse_to_the_lightest_in_first_seen_order() {
        let adj = Adjacency::build(
            3,
            &[
                (0, 2, 5.0),
                (0, 1, 1.0),
                (0, 2, 2.0),
                (1, 0, 1.0),
                (0, 1, 3.0),
            ],
        );
        assert_eq!(adj.neighbors(0), (&[2u32, 1][..], &[2.0, 1.0][..]));
        assert_eq!(adj.neighbors(1), (&[0u32][..], &[1.0][..]));
        assert_eq!(adj.degree(2), 0);
        assert_eq!(adj.edge_count(), 3);
    }
}
