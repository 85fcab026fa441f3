//! Layering strategies compared on generated closures shaped like nixpkgs
//! ones: a glibc-like base every path needs, hundreds of small libraries,
//! a few large leaves, and applications as roots. Prints a table.
//!
//!   cargo bench --bench layering
//!
//! For each strategy, averaged over seeds:
//! - layers: how many layers the image has (budget 99 + root layer);
//! - update MiB / %: bytes re-downloaded when one library changes (it and
//!   everything depending on it get new store paths, as in Nix);
//! - leaf MiB: the same when only one application changes;
//! - related MiB / %: bytes of a second image (two of three apps in common)
//!   not already present from the first.

use flakeport::image::plan::layering::{auto_layer, group_layers, popularity};
use flakeport::image::plan::GraphNode;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

const BUDGET: usize = 99;
const MIB: f64 = 1024.0 * 1024.0;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A package universe: name -> (size, dependencies by name).
struct Universe {
    pkgs: Vec<(String, u64, Vec<usize>)>,
    apps: Vec<usize>,
}

fn universe(seed: u64) -> Universe {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // Base: glibc and friends, needed by everything.
    let mut pkgs: Vec<(String, u64, Vec<usize>)> = vec![
        ("libunistring".into(), 2_000_000, vec![]),
        ("libidn2".into(), 400_000, vec![0]),
        ("glibc".into(), 30_000_000, vec![1]),
        ("gcc-lib".into(), 8_000_000, vec![2]),
    ];
    // 400 small libraries, each on glibc and up to 3 earlier libraries.
    for i in 0..400 {
        let mut deps = vec![2];
        for _ in 0..r.below(4) {
            deps.push(4 + r.below(i.max(1) as u64) as usize);
        }
        if r.below(3) == 0 {
            deps.push(3);
        }
        deps.sort();
        deps.dedup();
        deps.retain(|&d| d < pkgs.len());
        pkgs.push((format!("lib{i}"), 20_000 + r.below(2_000_000), deps));
    }
    // A few large leaves (an LLVM, a Python environment, CUDA-like blobs).
    let libs = pkgs.len();
    for i in 0..4 {
        let deps: Vec<usize> = (0..6)
            .map(|_| 4 + r.below(400) as usize)
            .chain([2])
            .collect();
        pkgs.push((
            format!("large{i}"),
            100_000_000 + r.below(200_000_000),
            deps,
        ));
    }
    // Applications: each needs 10-40 libraries and maybe a large leaf.
    let mut apps = Vec::new();
    for i in 0..12 {
        let mut deps: Vec<usize> = (0..30 + r.below(60))
            .map(|_| 4 + r.below(400) as usize)
            .collect();
        if r.below(2) == 0 {
            deps.push(libs + r.below(4) as usize);
        }
        deps.push(2);
        deps.sort();
        deps.dedup();
        apps.push(pkgs.len());
        pkgs.push((format!("app{i}"), 1_000_000 + r.below(20_000_000), deps));
    }
    Universe { pkgs, apps }
}

/// Store paths of the closure of `roots`; `changed` packages (and so all
/// their dependents) get a new hash.
fn closure_graph(
    u: &Universe,
    roots: &[usize],
    changed: &HashSet<usize>,
) -> (Vec<GraphNode>, Vec<PathBuf>) {
    // A package's path changes when it or anything it depends on changed.
    let mut dirty: HashMap<usize, bool> = HashMap::new();
    fn is_dirty(
        u: &Universe,
        i: usize,
        changed: &HashSet<usize>,
        memo: &mut HashMap<usize, bool>,
    ) -> bool {
        if let Some(&d) = memo.get(&i) {
            return d;
        }
        let d = changed.contains(&i) || u.pkgs[i].2.iter().any(|&j| is_dirty(u, j, changed, memo));
        memo.insert(i, d);
        d
    }
    let mut seen = HashSet::new();
    let mut stack: Vec<usize> = roots.to_vec();
    while let Some(i) = stack.pop() {
        if seen.insert(i) {
            stack.extend(&u.pkgs[i].2);
        }
    }
    let path = |i: usize, dirty: &mut HashMap<usize, bool>| {
        let v = if is_dirty(u, i, changed, dirty) {
            "new"
        } else {
            "old"
        };
        PathBuf::from(format!("/nix/store/{v}{i:05}-{}", u.pkgs[i].0))
    };
    let mut graph = Vec::new();
    for &i in &seen {
        let references = u.pkgs[i].2.iter().map(|&j| path(j, &mut dirty)).collect();
        graph.push(GraphNode {
            path: path(i, &mut dirty),
            nar_size: u.pkgs[i].1,
            references,
        });
    }
    let roots = roots.iter().map(|&i| path(i, &mut dirty)).collect();
    (graph, roots)
}

type Strategy = fn(&[GraphNode], &[PathBuf]) -> Vec<Vec<PathBuf>>;

fn layer_bytes(graph: &[GraphNode], layers: &[Vec<PathBuf>]) -> Vec<(Vec<PathBuf>, u64)> {
    let size: HashMap<&PathBuf, u64> = graph.iter().map(|n| (&n.path, n.nar_size)).collect();
    layers
        .iter()
        .map(|l| (l.clone(), l.iter().map(|p| size[p]).sum()))
        .collect()
}

/// Bytes of paths in `new` that are not in `old`: what any layering must send.
fn ideal(old: &[GraphNode], new: &[GraphNode]) -> u64 {
    let have: HashSet<&PathBuf> = old.iter().map(|n| &n.path).collect();
    new.iter()
        .filter(|n| !have.contains(&n.path))
        .map(|n| n.nar_size)
        .sum()
}

/// Bytes of `new` layers whose contents (so key) are not among `old`'s.
fn missing(old: &[(Vec<PathBuf>, u64)], new: &[(Vec<PathBuf>, u64)]) -> u64 {
    let have: HashSet<&Vec<PathBuf>> = old.iter().map(|(l, _)| l).collect();
    new.iter()
        .filter(|(l, _)| !have.contains(l))
        .map(|(_, b)| b)
        .sum()
}

fn main() {
    let strategies: [(&str, Strategy); 3] = [
        ("roots + auto-layer (flakeport)", |g, r| {
            group_layers(g, r, &[], BUDGET)
        }),
        ("auto-layer (nixpkgs)", |g, _| auto_layer(g, &[], BUDGET)),
        ("popularity (buildLayeredImage)", |g, _| {
            popularity(g, &[], BUDGET)
        }),
    ];
    let seeds = 1..=8u64;
    println!(
        "layering strategies, budget {BUDGET} store layers, {} generated universes",
        seeds.clone().count()
    );
    println!(
        "{:<32} {:>6} {:>7} {:>11} {:>9} {:>9} {:>12} {:>10}",
        "strategy",
        "paths",
        "layers",
        "update MiB",
        "update %",
        "leaf MiB",
        "related MiB",
        "related %"
    );
    let (mut i_upd, mut i_leaf, mut i_rel) = (0.0, 0.0, 0.0);
    for (name, strategy) in strategies {
        let (mut paths, mut layers, mut upd, mut upd_pct, mut leaf, mut rel, mut rel_pct) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let n = seeds.clone().count() as f64;
        for seed in seeds.clone() {
            let u = universe(seed);
            let mut r = Rng(seed + 77);
            let image_a = vec![u.apps[0], u.apps[1], u.apps[2]];
            let image_b = vec![u.apps[0], u.apps[1], u.apps[3]];
            let (ga, ra) = closure_graph(&u, &image_a, &HashSet::new());
            let la = layer_bytes(&ga, &strategy(&ga, &ra));
            let total: u64 = la.iter().map(|(_, b)| b).sum();
            paths += ga.len() as f64 / n;
            layers += la.len() as f64 / n;
            // One library of the image changes.
            let libs_in_a: Vec<usize> = (4..404)
                .filter(|i| {
                    ga.iter().any(|g| {
                        g.path
                            .to_string_lossy()
                            .ends_with(&format!("-lib{}", i - 4))
                    })
                })
                .collect();
            let lib = libs_in_a[r.below(libs_in_a.len() as u64) as usize];
            let (gu, ru) = closure_graph(&u, &image_a, &HashSet::from([lib]));
            let lu = layer_bytes(&gu, &strategy(&gu, &ru));
            let m = missing(&la, &lu) as f64;
            i_upd += ideal(&ga, &gu) as f64 / MIB / n / 3.0;
            upd += m / MIB / n;
            upd_pct += 100.0 * m / total as f64 / n;
            // One application changes.
            let (gl, rl) = closure_graph(&u, &image_a, &HashSet::from([u.apps[2]]));
            leaf += missing(&la, &layer_bytes(&gl, &strategy(&gl, &rl))) as f64 / MIB / n;
            i_leaf += ideal(&ga, &gl) as f64 / MIB / n / 3.0;
            // A related image.
            let (gb, rb) = closure_graph(&u, &image_b, &HashSet::new());
            let lb = layer_bytes(&gb, &strategy(&gb, &rb));
            let mb = missing(&la, &lb) as f64;
            i_rel += ideal(&ga, &gb) as f64 / MIB / n / 3.0;
            rel += mb / MIB / n;
            rel_pct += 100.0 * mb / lb.iter().map(|(_, b)| *b).sum::<u64>() as f64 / n;
        }
        println!(
            "{:<32} {:>6.0} {:>7.1} {:>11.1} {:>9.1} {:>9.1} {:>12.1} {:>10.1}",
            name, paths, layers, upd, upd_pct, leaf, rel, rel_pct
        );
    }
    println!(
        "{:<32} {:>6} {:>7} {:>11.1} {:>9} {:>9.1} {:>12.1} {:>10}",
        "ideal (changed paths only)", "", "", i_upd, "", i_leaf, i_rel, ""
    );
}
