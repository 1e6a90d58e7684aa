//! The step graph of a definition. Edges point from a dependency to its
//! dependent, so "descendants" are the steps affected by a change and
//! "ancestors" the steps that must have succeeded first. Every operation is
//! linear (or `n log n`) in the graph size: definitions may hold 10,000 steps.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};

use petgraph::algo::kosaraju_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

#[derive(Debug, Clone, Default)]
pub struct Dag {
    graph: DiGraph<String, ()>,
    index: HashMap<String, NodeIndex>,
}

impl Dag {
    /// Builds the graph from `(step, dependencies)` pairs in definition order.
    /// Dependencies naming no node are ignored (the definition reports them).
    /// On failure returns every cycle, each as the names in dependency order
    /// (`[A, B]` means A depends on B, which depends on A), starting from the
    /// member that comes first in `nodes`.
    pub fn build(nodes: &[(String, Vec<String>)]) -> Result<Dag, Vec<Vec<String>>> {
        let mut graph = DiGraph::with_capacity(nodes.len(), nodes.len());
        let mut index = HashMap::with_capacity(nodes.len());
        for (name, _) in nodes {
            index
                .entry(name.clone())
                .or_insert_with(|| graph.add_node(name.clone()));
        }
        let mut self_loops = Vec::new();
        for (name, deps) in nodes {
            let to = index[name];
            // Dedupe here rather than with `update_edge`, which scans the
            // source's edges and would make a wide fan-out quadratic.
            let mut seen = HashSet::with_capacity(deps.len());
            for dep in deps {
                let Some(&from) = index.get(dep) else { continue };
                if seen.insert(from) {
                    graph.add_edge(from, to, ());
                    if from == to {
                        self_loops.push(to);
                    }
                }
            }
        }
        let dag = Dag { graph, index };
        let cycles = dag.cycles(&self_loops);
        if cycles.is_empty() {
            Ok(dag)
        } else {
            Err(cycles)
        }
    }

    fn cycles(&self, self_loops: &[NodeIndex]) -> Vec<Vec<String>> {
        let mut found: Vec<(NodeIndex, Vec<String>)> = Vec::new();
        // Kosaraju rather than Tarjan: petgraph's Tarjan recurses once per
        // node and overflows a 2 MiB thread stack on a 10,000-step chain.
        for scc in kosaraju_scc(&self.graph) {
            if scc.len() == 1 {
                if self_loops.contains(&scc[0]) {
                    found.push((scc[0], vec![self.graph[scc[0]].clone()]));
                }
                continue;
            }
            let start = *scc.iter().min().expect("an SCC is never empty");
            found.push((start, self.cycle_through(start, &scc)));
        }
        found.sort_by_key(|(start, _)| *start);
        found.into_iter().map(|(_, c)| c).collect()
    }

    /// The shortest cycle through `start` inside its strongly connected
    /// component, walking from dependent to dependency (breadth first).
    fn cycle_through(&self, start: NodeIndex, scc: &[NodeIndex]) -> Vec<String> {
        let members: HashSet<NodeIndex> = scc.iter().copied().collect();
        let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        let mut last = None;
        'search: while let Some(n) = queue.pop_front() {
            for dep in self.graph.neighbors_directed(n, Direction::Incoming) {
                if dep == start {
                    last = Some(n);
                    break 'search;
                }
                if members.contains(&dep) && !prev.contains_key(&dep) {
                    prev.insert(dep, n);
                    queue.push_back(dep);
                }
            }
        }
        // Every node of a non-trivial SCC lies on a cycle, so `last` is set.
        let mut path = Vec::new();
        let mut cur = last.unwrap_or(start);
        while cur != start {
            path.push(cur);
            cur = prev[&cur];
        }
        path.push(start);
        path.reverse();
        path.into_iter().map(|n| self.graph[n].clone()).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Every step `name` depends on, directly or transitively.
    pub fn ancestors(&self, name: &str) -> BTreeSet<String> {
        self.reach(name, Direction::Incoming)
    }

    /// Every step that depends on `name`, directly or transitively.
    pub fn descendants(&self, name: &str) -> BTreeSet<String> {
        self.reach(name, Direction::Outgoing)
    }

    fn reach(&self, name: &str, dir: Direction) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let Some(&start) = self.index.get(name) else {
            return out;
        };
        let mut seen = HashSet::from([start]);
        let mut stack = vec![start];
        while let Some(n) = stack.pop() {
            for m in self.graph.neighbors_directed(n, dir) {
                if seen.insert(m) {
                    out.insert(self.graph[m].clone());
                    stack.push(m);
                }
            }
        }
        out
    }

    /// Direct dependencies of `name`, in definition order.
    pub fn parents(&self, name: &str) -> Vec<String> {
        self.neighbors(name, Direction::Incoming)
    }

    /// Direct dependents of `name`, in definition order.
    pub fn children(&self, name: &str) -> Vec<String> {
        self.neighbors(name, Direction::Outgoing)
    }

    fn neighbors(&self, name: &str, dir: Direction) -> Vec<String> {
        let Some(&n) = self.index.get(name) else {
            return Vec::new();
        };
        let mut ns: Vec<NodeIndex> = self.graph.neighbors_directed(n, dir).collect();
        ns.sort();
        ns.into_iter().map(|m| self.graph[m].clone()).collect()
    }

    /// All steps, dependencies first; among steps that are ready together,
    /// definition order wins, so the order is stable for a given definition.
    pub fn topological_order(&self) -> Vec<String> {
        let mut indegree: Vec<usize> = self
            .graph
            .node_indices()
            .map(|n| self.graph.neighbors_directed(n, Direction::Incoming).count())
            .collect();
        let mut ready: BinaryHeap<Reverse<NodeIndex>> = self
            .graph
            .node_indices()
            .filter(|n| indegree[n.index()] == 0)
            .map(Reverse)
            .collect();
        let mut out = Vec::with_capacity(self.graph.node_count());
        while let Some(Reverse(n)) = ready.pop() {
            out.push(self.graph[n].clone());
            for m in self.graph.neighbors_directed(n, Direction::Outgoing) {
                indegree[m.index()] -= 1;
                if indegree[m.index()] == 0 {
                    ready.push(Reverse(m));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(spec: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        spec.iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn relations() {
        let dag = Dag::build(&nodes(&[
            ("A", &[]),
            ("B", &["A"]),
            ("C", &["A", "A"]),
            ("D", &["B", "C"]),
            ("E", &[]),
            ("F", &["Unknown"]),
        ]))
        .unwrap();
        assert_eq!(dag.ancestors("D"), set(&["A", "B", "C"]));
        assert_eq!(dag.descendants("A"), set(&["B", "C", "D"]));
        assert_eq!(dag.descendants("D"), set(&[]));
        assert_eq!(dag.parents("D"), ["B", "C"]);
        assert_eq!(dag.children("A"), ["B", "C"]);
        assert_eq!(dag.topological_order(), ["A", "B", "C", "D", "E", "F"]);
        assert!(dag.contains("E") && !dag.contains("Z"));
        assert_eq!(dag.len(), 6);
        assert!(dag.ancestors("Z").is_empty());
    }

    #[test]
    fn topological_order_puts_dependencies_first() {
        let dag = Dag::build(&nodes(&[("C", &["B"]), ("B", &["A"]), ("A", &[])])).unwrap();
        assert_eq!(dag.topological_order(), ["A", "B", "C"]);
    }

    #[test]
    fn cycles_are_reported_in_order() {
        let err = Dag::build(&nodes(&[
            ("A", &["C"]),
            ("B", &["A"]),
            ("C", &["B"]),
            ("D", &["D"]),
            ("E", &[]),
            ("F", &["G"]),
            ("G", &["F", "E"]),
        ]))
        .unwrap_err();
        assert_eq!(
            err,
            vec![
                vec!["A".to_string(), "C".into(), "B".into()],
                vec!["D".to_string()],
                vec!["F".to_string(), "G".into()],
            ]
        );
    }

    #[test]
    fn ten_thousand_nodes_fan_out_and_chain() {
        let n = 10_000;
        let mut spec: Vec<(String, Vec<String>)> = vec![("root".into(), vec![])];
        spec.extend((0..n).map(|i| (format!("s{i}"), vec!["root".to_string()])));
        let dag = Dag::build(&spec).unwrap();
        assert_eq!(dag.descendants("root").len(), n);
        assert_eq!(dag.children("root").len(), n);
        let chain: Vec<(String, Vec<String>)> = (0..n)
            .map(|i| {
                (
                    format!("c{i}"),
                    if i == 0 { vec![] } else { vec![format!("c{}", i - 1)] },
                )
            })
            .collect();
        let dag = Dag::build(&chain).unwrap();
        assert_eq!(dag.ancestors(&format!("c{}", n - 1)).len(), n - 1);
        assert_eq!(dag.topological_order().len(), n);
    }
}
