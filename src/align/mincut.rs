//! A binary labelling of a pixel grid by minimum cut (the photomontage's seam): each pixel
//! pays a cost for either label, and each pair of 4-neighbours with different labels pays the
//! pair's cost. Exact for two labels (the energy is submodular when pair costs are ≥ 0). The
//! max-flow is Dinic's algorithm on the grid graph: breadth-first levels, then blocking flows
//! by depth-first search with per-node edge cursors (iterative, so no deep recursion).

/// One directed edge; its reverse is the edge at `index ^ 1`.
struct Edge {
    to: u32,
    cap: f32,
}

struct Graph {
    /// Per node, the indices of its edges.
    first: Vec<u32>,
    next: Vec<u32>,
    edges: Vec<Edge>,
}

const NONE: u32 = u32::MAX;

impl Graph {
    fn new(nodes: usize) -> Graph {
        Graph { first: vec![NONE; nodes], next: Vec::new(), edges: Vec::new() }
    }

    /// An edge a → b of capacity `ab` and its reverse of capacity `ba`.
    fn add(&mut self, a: usize, b: usize, ab: f32, ba: f32) {
        for (from, to, cap) in [(a, b, ab), (b, a, ba)] {
            self.edges.push(Edge { to: to as u32, cap });
            self.next.push(self.first[from]);
            self.first[from] = (self.edges.len() - 1) as u32;
        }
    }

    /// Max flow from `s` to `t`; afterwards the residual graph tells the cut.
    fn max_flow(&mut self, s: usize, t: usize) {
        let n = self.first.len();
        let mut level = vec![u32::MAX; n];
        let mut cursor = vec![NONE; n];
        let mut queue = Vec::with_capacity(n);
        loop {
            level.fill(u32::MAX);
            level[s] = 0;
            queue.clear();
            queue.push(s as u32);
            let mut head = 0;
            while head < queue.len() {
                let v = queue[head] as usize;
                head += 1;
                let mut e = self.first[v];
                while e != NONE {
                    let edge = &self.edges[e as usize];
                    if edge.cap > 1e-9 && level[edge.to as usize] == u32::MAX {
                        level[edge.to as usize] = level[v] + 1;
                        queue.push(edge.to);
                    }
                    e = self.next[e as usize];
                }
            }
            if level[t] == u32::MAX {
                return;
            }
            cursor.copy_from_slice(&self.first);
            // Blocking flow: walk forward along level-increasing edges with capacity; at the
            // sink push the path's bottleneck; at a dead end retreat and skip that edge.
            let mut path: Vec<u32> = Vec::new();
            let mut v = s;
            loop {
                if v == t {
                    let push = path.iter().map(|&e| self.edges[e as usize].cap).fold(f32::MAX, f32::min);
                    let mut cut_at = None;
                    for (k, &e) in path.iter().enumerate() {
                        self.edges[e as usize].cap -= push;
                        self.edges[(e ^ 1) as usize].cap += push;
                        if cut_at.is_none() && self.edges[e as usize].cap <= 1e-9 {
                            cut_at = Some(k);
                        }
                    }
                    // Resume from the tail of the first saturated edge.
                    let k = cut_at.unwrap_or(0);
                    path.truncate(k);
                    v = path.last().map_or(s, |&e| self.edges[e as usize].to as usize);
                    continue;
                }
                let mut advanced = false;
                while cursor[v] != NONE {
                    let e = cursor[v];
                    let edge = &self.edges[e as usize];
                    let to = edge.to as usize;
                    if edge.cap > 1e-9 && level[to] == level[v] + 1 {
                        path.push(e);
                        v = to;
                        advanced = true;
                        break;
                    }
                    cursor[v] = self.next[e as usize];
                }
                if !advanced {
                    // Dead end: no path to the sink through v this phase.
                    level[v] = u32::MAX;
                    match path.pop() {
                        None => break,
                        Some(e) => {
                            let from = self.edges[(e ^ 1) as usize].to as usize;
                            cursor[from] = self.next[e as usize];
                            v = from;
                        }
                    }
                }
            }
        }
    }

    /// Nodes reachable from `s` in the residual graph (the source side of the minimum cut).
    fn source_side(&self, s: usize) -> Vec<bool> {
        let mut seen = vec![false; self.first.len()];
        let mut stack = vec![s];
        seen[s] = true;
        while let Some(v) = stack.pop() {
            let mut e = self.first[v];
            while e != NONE {
                let edge = &self.edges[e as usize];
                if edge.cap > 1e-9 && !seen[edge.to as usize] {
                    seen[edge.to as usize] = true;
                    stack.push(edge.to as usize);
                }
                e = self.next[e as usize];
            }
        }
        seen
    }
}

/// The labelling of a `w`×`h` grid that minimises Σ cost of each pixel's label + Σ over
/// 4-neighbours p, q with different labels of `pair(p, q)`. `cost[0][i]`, `cost[1][i]`: pixel
/// i's cost of label 0 and label 1 (use a large value to fix a label). Returns true where a
/// pixel takes label 1.
pub fn label(w: usize, h: usize, cost: [&[f32]; 2], pair: &(dyn Fn(usize, usize) -> f32 + Sync)) -> Vec<bool> {
    let n = w * h;
    assert!(cost[0].len() == n && cost[1].len() == n, "costs of another size");
    let (s, t) = (n, n + 1);
    let mut g = Graph::new(n + 2);
    // Source side = label 0. Cutting s→i (capacity: label 1's cost) puts i on the sink side.
    for i in 0..n {
        let (c0, c1) = (cost[0][i], cost[1][i]);
        let m = c0.min(c1);
        if c1 - m > 0.0 {
            g.add(s, i, c1 - m, 0.0);
        }
        if c0 - m > 0.0 {
            g.add(i, t, c0 - m, 0.0);
        }
    }
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if x + 1 < w {
                let c = pair(i, i + 1).max(0.0);
                g.add(i, i + 1, c, c);
            }
            if y + 1 < h {
                let c = pair(i, i + w).max(0.0);
                g.add(i, i + w, c, c);
            }
        }
    }
    g.max_flow(s, t);
    let side = g.source_side(s);
    (0..n).map(|i| !side[i]).collect()
}

/// The labelling of an arbitrary graph's `cost[0].len()` nodes that minimises Σ cost of each
/// node's label + Σ over `pairs` (p, q, [E00, E01, E10, E11]) of the pair's energy for the two
/// labels (E01: p takes 0 and q takes 1). Exact when every pair is submodular
/// (E00 + E11 ≤ E01 + E10); a pair that is not is made so by lowering E00 (as an expansion
/// move does with a seam cost that is not a metric). Returns true where a node takes label 1.
pub fn label_pairs(cost: [&[f32]; 2], pairs: &[(u32, u32, [f32; 4])]) -> Vec<bool> {
    let n = cost[0].len();
    assert_eq!(cost[1].len(), n, "costs of another size");
    let (mut c0, mut c1) = (cost[0].to_vec(), cost[1].to_vec());
    // E(p, q) = A + (C − A)·x_p + (D − C)·x_q + (B + C − A − D)·(1 − x_p)·x_q.
    let mut edges = Vec::with_capacity(pairs.len());
    for &(p, q, [a, b, c, d]) in pairs {
        let a = a.min(b + c - d);
        c1[p as usize] += c - a;
        c1[q as usize] += d - c;
        edges.push((p, q, (b + c - a - d).max(0.0)));
    }
    let (s, t) = (n, n + 1);
    let mut g = Graph::new(n + 2);
    for i in 0..n {
        let m = c0[i].min(c1[i]);
        (c0[i], c1[i]) = (c0[i] - m, c1[i] - m);
        if c1[i] > 0.0 {
            g.add(s, i, c1[i], 0.0);
        }
        if c0[i] > 0.0 {
            g.add(i, t, c0[i], 0.0);
        }
    }
    for (p, q, cap) in edges {
        if cap > 0.0 {
            g.add(p as usize, q as usize, cap, 0.0);
        }
    }
    g.max_flow(s, t);
    let side = g.source_side(s);
    (0..n).map(|i| !side[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Energy of a labelling, for the brute-force check.
    fn energy(w: usize, h: usize, cost: [&[f32]; 2], pair: &dyn Fn(usize, usize) -> f32, l: &[bool]) -> f32 {
        let mut e: f32 = (0..w * h).map(|i| cost[l[i] as usize][i]).sum();
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if x + 1 < w && l[i] != l[i + 1] {
                    e += pair(i, i + 1);
                }
                if y + 1 < h && l[i] != l[i + w] {
                    e += pair(i, i + w);
                }
            }
        }
        e
    }

    #[test]
    fn the_cut_is_the_minimum_energy_labelling_on_small_grids() {
        // Every labelling of a 3×4 grid, against the cut, for random costs.
        let mut rng = crate::rng::Rng::new(5);
        let (w, h) = (4, 3);
        for _ in 0..40 {
            let c0: Vec<f32> = (0..w * h).map(|_| rng.range_f32(0.0, 1.0)).collect();
            let c1: Vec<f32> = (0..w * h).map(|_| rng.range_f32(0.0, 1.0)).collect();
            let pairs: Vec<f32> = (0..2 * w * h).map(|_| rng.range_f32(0.0, 0.6)).collect();
            let pair = |i: usize, j: usize| pairs[if j == i + 1 { 2 * i } else { 2 * i + 1 }];
            let l = label(w, h, [&c0, &c1], &pair);
            let best = (0u32..1 << (w * h))
                .map(|bits| {
                    let l: Vec<bool> = (0..w * h).map(|i| bits >> i & 1 == 1).collect();
                    energy(w, h, [&c0, &c1], &pair, &l)
                })
                .fold(f32::MAX, f32::min);
            let got = energy(w, h, [&c0, &c1], &pair, &l);
            assert!(got <= best + 1e-4, "cut energy {got}, best {best}");
        }
    }

    #[test]
    fn a_general_pair_cut_is_the_minimum_energy_labelling_of_a_small_graph() {
        // Random submodular pairs on 10 nodes (a ring and chords), against every labelling.
        let mut rng = crate::rng::Rng::new(9);
        let n = 10;
        for _ in 0..40 {
            let c0: Vec<f32> = (0..n).map(|_| rng.range_f32(0.0, 1.0)).collect();
            let c1: Vec<f32> = (0..n).map(|_| rng.range_f32(0.0, 1.0)).collect();
            let pairs: Vec<(u32, u32, [f32; 4])> = (0..n)
                .flat_map(|i| [(i, (i + 1) % n), (i, (i + 3) % n)])
                .map(|(p, q)| {
                    let (b, c) = (rng.range_f32(0.0, 0.6), rng.range_f32(0.0, 0.6));
                    let d = rng.range_f32(0.0, 0.5 * (b + c));
                    let a = rng.range_f32(0.0, b + c - d);
                    (p as u32, q as u32, [a, b, c, d])
                })
                .collect();
            let energy = |l: &[bool]| {
                let mut e: f32 = (0..n).map(|i| if l[i] { c1[i] } else { c0[i] }).sum();
                for &(p, q, v) in &pairs {
                    e += v[2 * l[p as usize] as usize + l[q as usize] as usize];
                }
                e
            };
            let got = energy(&label_pairs([&c0, &c1], &pairs));
            let best = (0u32..1 << n)
                .map(|bits| energy(&(0..n).map(|i| bits >> i & 1 == 1).collect::<Vec<_>>()))
                .fold(f32::MAX, f32::min);
            assert!(got <= best + 1e-4, "cut energy {got}, best {best}");
        }
    }

    #[test]
    fn a_seam_follows_the_cheap_column_between_two_fixed_sides() {
        // Left column fixed to label 0, right column to label 1; pairs are cheap only across
        // column 6 → 7: the seam goes there, a straight line, whatever the free pixels prefer
        // a little.
        let (w, h) = (12, 20);
        let big = 1e6;
        let c0: Vec<f32> = (0..w * h).map(|i| if i % w == w - 1 { big } else { 0.0 }).collect();
        let c1: Vec<f32> = (0..w * h).map(|i| if i % w == 0 { big } else { 0.01 * (i / w % 2) as f32 }).collect();
        let pair = |i: usize, j: usize| if j == i + 1 && i % w == 6 { 0.1 } else { 1.0 };
        let l = label(w, h, [&c0, &c1], &pair);
        for y in 0..h {
            for x in 0..w {
                assert_eq!(l[y * w + x], x >= 7, "pixel {x},{y}");
            }
        }
    }
}
