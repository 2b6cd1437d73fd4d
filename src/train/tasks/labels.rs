//! Label definitions, written as directly as possible (plain loops over the definition) so
//! that the generators can be checked against them and against brute force.

/// Match3: position i is positive when some j, k give `x_i + x_j + x_k ≡ 0 (mod m)`.
pub fn match3_labels(x: &[usize], m: usize) -> Vec<bool> {
    let mut pair_sums = vec![false; m];
    for &a in x {
        for &b in x {
            pair_sums[(a + b) % m] = true;
        }
    }
    x.iter().map(|&a| pair_sums[(m - a % m) % m]).collect()
}

/// Edge Match2: each present edge (value `Some(v)`, v a nonzero residue) is positive when some
/// other present edge carries `-v (mod m)`; absent edges (`None`) have no label.
pub fn edge_match2_labels(values: &[Option<usize>], m: usize) -> Vec<Option<bool>> {
    values
        .iter()
        .enumerate()
        .map(|(e, v)| {
            let v = (*v)?;
            let hit = values
                .iter()
                .enumerate()
                .any(|(f, w)| f != e && w.is_some_and(|w| (v + w) % m == 0));
            Some(hit)
        })
        .collect()
}

/// The composition A∘A: `(i, j)` when some u has A[i, u] and A[u, j].
pub fn compose(a: &[Vec<bool>]) -> Vec<Vec<bool>> {
    let n = a.len();
    (0..n)
        .map(|i| (0..n).map(|j| (0..n).any(|u| a[i][u] && a[u][j])).collect())
        .collect()
}

/// Quotient composition on coloured nodes: `(i, j)` when some u ∈ N(i), v ∈ N(j), u ≠ v have
/// the same colour, where N(x) = {u : A[x, u]}.
pub fn quotient_compose(a: &[Vec<bool>], colours: &[usize]) -> Vec<Vec<bool>> {
    let n = a.len();
    let hit = |i: usize, j: usize| {
        (0..n).any(|u| a[i][u] && (0..n).any(|v| u != v && a[j][v] && colours[u] == colours[v]))
    };
    (0..n)
        .map(|i| (0..n).map(|j| hit(i, j)).collect())
        .collect()
}

/// Function composition: is `x[x[0]] == 0`.
pub fn function_composition_label(x: &[usize]) -> bool {
    x[x[0]] == 0
}

/// The symmetric group S3 as the permutations of (0, 1, 2), numbered in lexicographic order.
pub const S3: [[usize; 3]; 6] = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
];

/// `g ∘ f` in S3 (apply f, then g), as element numbers.
pub fn s3_then(f: usize, g: usize) -> usize {
    let p = [S3[g][S3[f][0]], S3[g][S3[f][1]], S3[g][S3[f][2]]];
    S3.iter().position(|q| *q == p).expect("S3 is closed")
}

/// The label of a path whose edges carry `labels` in walking order: the first edge's label is
/// applied first.
pub fn path_label(labels: &[usize]) -> usize {
    labels.iter().fold(0, |acc, &g| s3_then(acc, g))
}

/// Triangles: node i is on a triangle of the undirected graph `adj`.
pub fn on_triangle(adj: &[Vec<bool>]) -> Vec<bool> {
    let n = adj.len();
    (0..n)
        .map(|i| (0..n).any(|a| (0..n).any(|b| a != b && adj[i][a] && adj[i][b] && adj[a][b])))
        .collect()
}

/// One hop from position i: the position right after the latest earlier occurrence of `x[i]`.
pub fn hop(x: &[usize], i: usize) -> Option<usize> {
    (0..i).rev().find(|&j| x[j] == x[i]).map(|j| j + 1)
}

/// k-hop induction: the symbol reached from position i after k hops, if every hop exists.
pub fn k_hop(x: &[usize], i: usize, k: usize) -> Option<usize> {
    let mut at = i;
    for _ in 0..k {
        at = hop(x, at)?;
    }
    Some(x[at])
}
