//! Closure graph -> at most `budget` layers of store paths.
//!
//! The default, [`group_layers`], combines the two anchors studied in
//! `research/`: nixpkgs' auto-layer (the largest paths become *primaries*;
//! every path goes into the group of paths needed by exactly the same set of
//! primaries) seeded with the image's roots, which gives Nixery's dominator
//! effect (a package travels with what only it needs). Groups needed by more
//! primaries come first, so related images share a common prefix of layers
//! (Docker reuses layers by chain, not only by digest).
//!
//! [`popularity`] is the previous scheme (the most depended-upon paths get a
//! layer each, the tail shares one), kept as the baseline that
//! `benches/layering.rs` measures against.

use super::GraphNode;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Indexed view of a closure graph: nodes sorted by path, so every index and
/// tie-break is deterministic.
struct Graph<'a> {
    nodes: Vec<&'a GraphNode>,
    refs: Vec<Vec<usize>>,
}

impl<'a> Graph<'a> {
    fn new(graph: &'a [GraphNode]) -> Graph<'a> {
        let mut nodes: Vec<&GraphNode> = graph.iter().collect();
        nodes.sort_by(|a, b| a.path.cmp(&b.path));
        nodes.dedup_by(|a, b| a.path == b.path);
        let index: HashMap<&Path, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.path.as_path(), i))
            .collect();
        let refs = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut r: Vec<usize> = n
                    .references
                    .iter()
                    .filter_map(|p| index.get(p.as_path()).copied())
                    .filter(|&j| j != i)
                    .collect();
                r.sort_unstable();
                r.dedup();
                r
            })
            .collect();
        Graph { nodes, refs }
    }

    fn index_of(&self, p: &Path) -> Option<usize> {
        self.nodes
            .binary_search_by(|n| n.path.as_path().cmp(p))
            .ok()
    }

    /// `start` and everything it references, transitively.
    fn closure(&self, start: impl IntoIterator<Item = usize>) -> Vec<usize> {
        let mut seen = vec![false; self.nodes.len()];
        let mut stack: Vec<usize> = start.into_iter().collect();
        let mut out = Vec::new();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut seen[i], true) {
                out.push(i);
                stack.extend(&self.refs[i]);
            }
        }
        out
    }

    fn paths(&self, members: &[usize]) -> Vec<PathBuf> {
        let mut p: Vec<PathBuf> = members
            .iter()
            .map(|&i| self.nodes[i].path.clone())
            .collect();
        p.sort();
        p
    }

    /// Explicit groups first, each its closure minus what earlier groups
    /// took. Returns the layers and which nodes they took.
    fn explicit_layers(
        &self,
        explicit: &[Vec<PathBuf>],
        budget: usize,
    ) -> (Vec<Vec<PathBuf>>, Vec<bool>) {
        let mut taken = vec![false; self.nodes.len()];
        let mut layers = Vec::new();
        for group in explicit {
            if layers.len() + 1 >= budget {
                break;
            }
            let members: Vec<usize> = self
                .closure(group.iter().filter_map(|p| self.index_of(p)))
                .into_iter()
                .filter(|&i| !taken[i])
                .collect();
            if !members.is_empty() {
                for &i in &members {
                    taken[i] = true;
                }
                layers.push(self.paths(&members));
            }
        }
        (layers, taken)
    }
}

/// The default layering (see the module docs). `roots` are the image's
/// top-level paths (its contents); with none, paths nothing depends on are
/// the roots.
pub fn group_layers(
    graph: &[GraphNode],
    roots: &[PathBuf],
    explicit: &[Vec<PathBuf>],
    budget: usize,
) -> Vec<Vec<PathBuf>> {
    shared_primaries(graph, roots, explicit, budget, true, true)
}

/// nixpkgs' auto-layer as it ships (no seeding with roots), for comparison.
pub fn auto_layer(
    graph: &[GraphNode],
    explicit: &[Vec<PathBuf>],
    budget: usize,
) -> Vec<Vec<PathBuf>> {
    shared_primaries(graph, &[], explicit, budget, false, false)
}

fn shared_primaries(
    graph: &[GraphNode],
    roots: &[PathBuf],
    explicit: &[Vec<PathBuf>],
    budget: usize,
    seed_roots: bool,
    isolate_large: bool,
) -> Vec<Vec<PathBuf>> {
    let budget = budget.max(1);
    let g = Graph::new(graph);
    let (mut layers, taken) = g.explicit_layers(explicit, budget);
    let rest: Vec<usize> = (0..g.nodes.len()).filter(|&i| !taken[i]).collect();
    if rest.is_empty() {
        return layers;
    }
    let budget = budget - layers.len();
    if rest.len() <= budget {
        // Room for every path: one layer each, shared libraries first.
        let mut order = rest.clone();
        let dependents = dependents(&g);
        order.sort_by(|&a, &b| dependents[b].cmp(&dependents[a]).then(a.cmp(&b)));
        layers.extend(order.into_iter().map(|i| vec![g.nodes[i].path.clone()]));
        return layers;
    }

    // owners[i]: the primaries (sorted) whose closure holds node i. Primaries
    // chosen for their size are `isolated`: alone in their layer, so a large
    // path keeps its digest whatever else the image holds.
    let mut owners: Vec<Vec<usize>> = vec![Vec::new(); g.nodes.len()];
    let mut isolated: Vec<bool> = vec![false; g.nodes.len()];
    let layer_count = |owners: &[Vec<usize>], isolated: &[bool]| {
        let grouped = rest
            .iter()
            .filter(|&&i| !isolated[i])
            .map(|&i| &owners[i])
            .collect::<HashSet<_>>()
            .len();
        grouped + isolated.iter().filter(|&&x| x).count()
    };
    let try_add =
        |owners: &mut Vec<Vec<usize>>, isolated: &mut Vec<bool>, p: usize, isolate: bool| -> bool {
            let mut next = owners.clone();
            for q in g.closure([p]) {
                if !taken[q] {
                    if let Err(pos) = next[q].binary_search(&p) {
                        next[q].insert(pos, p);
                    }
                }
            }
            let mut next_isolated = isolated.clone();
            next_isolated[p] = isolate;
            if layer_count(&next, &next_isolated) > budget {
                return false;
            }
            *owners = next;
            *isolated = next_isolated;
            true
        };

    let mut seeds: Vec<usize> = if seed_roots {
        let given: Vec<usize> = roots
            .iter()
            .filter_map(|r| g.index_of(r))
            .filter(|&i| !taken[i])
            .collect();
        if given.is_empty() {
            let d = dependents(&g);
            rest.iter().copied().filter(|&i| d[i] == 1).collect()
        } else {
            given
        }
    } else {
        Vec::new()
    };
    seeds.sort_unstable();
    seeds.dedup();
    let mut primaries = BTreeSet::new();
    let mut full = false;
    for s in seeds {
        if !try_add(&mut owners, &mut isolated, s, false) {
            full = true;
            break;
        }
        primaries.insert(s);
    }
    if !full {
        // Largest first; ties: more dependents, then path order.
        let d = dependents(&g);
        let mut candidates: Vec<usize> = rest
            .iter()
            .copied()
            .filter(|i| !primaries.contains(i))
            .collect();
        candidates.sort_by(|&a, &b| {
            g.nodes[b]
                .nar_size
                .cmp(&g.nodes[a].nar_size)
                .then(d[b].cmp(&d[a]))
                .then(a.cmp(&b))
        });
        for c in candidates {
            if !try_add(&mut owners, &mut isolated, c, isolate_large) {
                break;
            }
        }
    }

    let mut groups: BTreeMap<Vec<usize>, Vec<usize>> = BTreeMap::new();
    for &i in &rest {
        // An isolated path is keyed by itself alone.
        let key = if isolated[i] {
            vec![usize::MAX, i]
        } else {
            owners[i].clone()
        };
        groups.entry(key).or_default().push(i);
    }
    let mut ordered: Vec<(usize, u64, Vec<PathBuf>)> = groups
        .into_iter()
        .map(|(set, members)| {
            let shared = if set.first() == Some(&usize::MAX) {
                owners[set[1]].len()
            } else {
                set.len()
            };
            (
                shared,
                members.iter().map(|&i| g.nodes[i].nar_size).sum(),
                g.paths(&members),
            )
        })
        .collect();
    // Most shared first, then larger; paths break ties.
    ordered.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    layers.extend(ordered.into_iter().map(|(_, _, paths)| paths));
    layers
}

/// For each node, how many nodes have it in their closure (itself included).
fn dependents(g: &Graph) -> Vec<usize> {
    let mut d = vec![0usize; g.nodes.len()];
    for i in 0..g.nodes.len() {
        for j in g.closure([i]) {
            d[j] += 1;
        }
    }
    d
}

/// The previous scheme: the most depended-upon paths (ties: larger first)
/// get a layer each, the tail shares the last layer.
pub fn popularity(
    graph: &[GraphNode],
    explicit: &[Vec<PathBuf>],
    budget: usize,
) -> Vec<Vec<PathBuf>> {
    let budget = budget.max(1);
    let g = Graph::new(graph);
    let (mut layers, taken) = g.explicit_layers(explicit, budget);
    let d = dependents(&g);
    let mut rest: Vec<usize> = (0..g.nodes.len()).filter(|&i| !taken[i]).collect();
    rest.sort_by(|&a, &b| {
        d[b].cmp(&d[a])
            .then(g.nodes[b].nar_size.cmp(&g.nodes[a].nar_size))
            .then(a.cmp(&b))
    });
    let own = budget.saturating_sub(layers.len() + 1);
    let (singles, tail) = rest.split_at(own.min(rest.len()));
    layers.extend(singles.iter().map(|&i| vec![g.nodes[i].path.clone()]));
    if !tail.is_empty() {
        layers.push(g.paths(tail));
    }
    layers
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(p: &str, size: u64, refs: &[&str]) -> GraphNode {
        GraphNode {
            path: p.into(),
            nar_size: size,
            references: refs.iter().map(PathBuf::from).collect(),
        }
    }

    #[test]
    fn a_package_travels_with_what_only_it_needs() {
        let graph = vec![
            node("/s/libc", 30, &[]),
            node("/s/app-a", 5, &["/s/libc", "/s/liba"]),
            node("/s/liba", 2, &["/s/libc"]),
            node("/s/app-b", 5, &["/s/libc", "/s/libb"]),
            node("/s/libb", 2, &["/s/libc"]),
        ];
        let roots = [PathBuf::from("/s/app-a"), "/s/app-b".into()];
        let layers = group_layers(&graph, &roots, &[], 3);
        assert_eq!(
            layers,
            vec![
                vec![PathBuf::from("/s/libc")],
                vec!["/s/app-a".into(), "/s/liba".into()],
                vec!["/s/app-b".into(), "/s/libb".into()]
            ]
        );
        // With room for everything, one layer per path, most shared first.
        let all = group_layers(&graph, &roots, &[], 100);
        assert_eq!(all.len(), 5);
        assert_eq!(all[0], vec![PathBuf::from("/s/libc")]);
    }

    #[test]
    fn explicit_groups_come_first() {
        let graph = vec![
            node("/s/app", 10, &["/s/lib", "/s/tool"]),
            node("/s/tool", 3, &["/s/lib"]),
            node("/s/lib", 50, &[]),
            node("/s/doc", 1, &[]),
        ];
        let layers = group_layers(&graph, &[], &[vec!["/s/tool".into()]], 3);
        assert_eq!(layers[0], vec![PathBuf::from("/s/lib"), "/s/tool".into()]);
        assert!(layers.len() <= 3);
    }

    /// Random DAGs: edges only from higher to lower indices.
    fn arb_graph() -> impl Strategy<Value = (Vec<GraphNode>, Vec<PathBuf>, usize)> {
        (5usize..60, 2usize..20, any::<u64>()).prop_map(|(n, budget, seed)| {
            let mut x = seed | 1;
            let mut rnd = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let mut graph = Vec::new();
            for i in 0..n {
                let refs: Vec<PathBuf> = (0..i)
                    .filter(|_| rnd() % 4 == 0)
                    .map(|j| PathBuf::from(format!("/nix/store/h{j:03}-p{j}")))
                    .collect();
                graph.push(GraphNode {
                    path: format!("/nix/store/h{i:03}-p{i}").into(),
                    nar_size: rnd() % 1_000_000,
                    references: refs,
                });
            }
            // Roots: nodes nothing references.
            let referenced: HashSet<PathBuf> =
                graph.iter().flat_map(|n| n.references.clone()).collect();
            let roots = graph
                .iter()
                .map(|n| n.path.clone())
                .filter(|p| !referenced.contains(p))
                .collect();
            (graph, roots, budget)
        })
    }

    proptest! {
        #[test]
        fn every_path_once_within_budget_and_deterministic((graph, roots, budget) in arb_graph()) {
            for layers in [group_layers(&graph, &roots, &[], budget), popularity(&graph, &[], budget)] {
                prop_assert!(layers.len() <= budget);
                let mut all: Vec<PathBuf> = layers.concat();
                all.sort();
                let mut expected: Vec<PathBuf> = graph.iter().map(|n| n.path.clone()).collect();
                expected.sort();
                prop_assert_eq!(all, expected);
            }
            prop_assert_eq!(group_layers(&graph, &roots, &[], budget), group_layers(&graph, &roots, &[], budget));
            let mut shuffled = graph.clone();
            shuffled.reverse();
            prop_assert_eq!(group_layers(&shuffled, &roots, &[], budget), group_layers(&graph, &roots, &[], budget));
        }

        /// A new version of one leaf package (a root nothing else needs):
        /// every layer that does not hold it keeps its contents, so its key.
        #[test]
        fn changing_one_leaf_keeps_the_other_layers((graph, roots, budget) in arb_graph(), pick in any::<prop::sample::Index>()) {
            prop_assume!(roots.len() < budget);
            let leaf = roots[pick.index(roots.len())].clone();
            let renamed = PathBuf::from(format!("{}-v2", leaf.display()));
            let changed: Vec<GraphNode> = graph
                .iter()
                .map(|n| if n.path == leaf { GraphNode { path: renamed.clone(), ..n.clone() } } else { n.clone() })
                .collect();
            let new_roots: Vec<PathBuf> = roots.iter().map(|r| if *r == leaf { renamed.clone() } else { r.clone() }).collect();
            let before: HashSet<Vec<PathBuf>> = group_layers(&graph, &roots, &[], budget).into_iter().filter(|l| !l.contains(&leaf)).collect();
            let after: HashSet<Vec<PathBuf>> = group_layers(&changed, &new_roots, &[], budget).into_iter().filter(|l| !l.contains(&renamed)).collect();
            prop_assert_eq!(before, after);
        }
    }
}
