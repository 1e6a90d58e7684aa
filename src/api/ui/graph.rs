//! The shape of a pipeline as the web UI draws it, read from a definition
//! document: every step with its dependencies, Condition branches as
//! labelled edges, and ForEach bodies (`Arguments.ForEachBody`) as groups.
//!
//! The dependencies come from the domain's own parse when the document
//! parses (DependsOn and every reference in Arguments); a document it does
//! not accept (a step type this build does not run, such as ForEach before
//! the engine supports it) is still drawn, with the dependencies found by
//! reading DependsOn and the `Steps.NAME` references directly.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::Value;

use crate::domain::definition::parse_definition;

/// One step as drawn.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub kind: String,
    /// The ForEach step whose body holds this step.
    pub group: Option<String>,
}

/// `from` must finish before `to`; `label` names a Condition's branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub label: Option<&'static str>,
}

#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// In document order, each ForEach step before its body.
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

impl Graph {
    /// The graph of a definition document (or its string form).
    pub fn from_definition(definition: &Value) -> Graph {
        let document = match definition {
            Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            other => other.clone(),
        };
        let mut walk = Walk::default();
        if let Some(steps) = document.get("Steps").and_then(Value::as_array) {
            walk.steps(steps, None, None);
        }
        let parsed = parse_definition(&document).ok();
        let deps_of: HashMap<&str, &Vec<String>> = parsed
            .as_ref()
            .map(|d| d.steps.iter().map(|s| (s.name.as_str(), &s.depends_on)).collect())
            .unwrap_or_default();
        let names: HashSet<String> = walk.nodes.iter().map(|n| n.name.clone()).collect();
        let mut edges = Vec::new();
        let mut seen = HashSet::new();
        for (node, raw) in walk.nodes.iter().zip(&walk.raw) {
            let branch = walk.branch.get(&node.name);
            let deps: Vec<String> = match deps_of.get(node.name.as_str()) {
                Some(deps) => (*deps).clone(),
                None => raw_dependencies(raw),
            };
            let mut all = deps;
            if let Some((condition, _)) = branch {
                all.push(condition.clone());
            }
            for dep in all {
                if dep == node.name || !names.contains(&dep) || !seen.insert((dep.clone(), node.name.clone())) {
                    continue;
                }
                let label = match branch {
                    Some((condition, if_branch)) if *condition == dep => Some(if *if_branch { "if" } else { "else" }),
                    _ => None,
                };
                edges.push(Edge {
                    from: dep,
                    to: node.name.clone(),
                    label,
                });
            }
        }
        Graph {
            nodes: walk.nodes,
            edges,
        }
    }

    /// The names of the steps in `group`'s body (or the top level for None).
    pub fn members<'a>(&'a self, group: Option<&'a str>) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes.iter().filter(move |n| n.group.as_deref() == group)
    }
}

#[derive(Default)]
struct Walk {
    nodes: Vec<Node>,
    raw: Vec<Value>,
    /// A branch step's Condition and whether it is in IfSteps.
    branch: HashMap<String, (String, bool)>,
    names: HashSet<String>,
}

impl Walk {
    fn steps(&mut self, list: &[Value], group: Option<&str>, branch: Option<(&str, bool)>) {
        for step in list {
            let Some(name) = step.get("Name").and_then(Value::as_str) else {
                continue;
            };
            // The first step of a name wins, as in the domain's graph.
            if !self.names.insert(name.to_string()) {
                continue;
            }
            let kind = step.get("Type").and_then(Value::as_str).unwrap_or("?").to_string();
            if let Some((condition, if_branch)) = branch {
                self.branch.insert(name.to_string(), (condition.to_string(), if_branch));
            }
            self.nodes.push(Node {
                name: name.to_string(),
                kind: kind.clone(),
                group: group.map(String::from),
            });
            self.raw.push(step.clone());
            let arguments = step.get("Arguments");
            match kind.as_str() {
                "Condition" => {
                    for (key, if_branch) in [("IfSteps", true), ("ElseSteps", false)] {
                        if let Some(list) = arguments.and_then(|a| a.get(key)).and_then(Value::as_array) {
                            self.steps(list, group, Some((name, if_branch)));
                        }
                    }
                }
                "ForEach" => {
                    if let Some(body) = arguments.and_then(|a| a.get("ForEachBody")).and_then(Value::as_array) {
                        self.steps(body, Some(name), None);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The steps a step object names: its DependsOn entries (names or
/// `{"Step": NAME}`) and every `Steps.NAME...` reference in its Arguments
/// (outside nested branch and body lists, whose steps are drawn on their own).
fn raw_dependencies(step: &Value) -> Vec<String> {
    let mut out = BTreeSet::new();
    if let Some(list) = step.get("DependsOn").and_then(Value::as_array) {
        for entry in list {
            let name = entry.as_str().or_else(|| entry.get("Step").and_then(Value::as_str));
            if let Some(name) = name {
                out.insert(name.to_string());
            }
        }
    }
    if let Some(arguments) = step.get("Arguments").and_then(Value::as_object) {
        for (key, value) in arguments {
            if !matches!(key.as_str(), "IfSteps" | "ElseSteps" | "ForEachBody") {
                references(value, &mut out);
            }
        }
    }
    out.into_iter().collect()
}

fn references(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) => {
            if let Some(rest) = s.strip_prefix("Steps.") {
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                if end > 0 {
                    out.insert(rest[..end].to_string());
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        Value::Object(map) => map.values().for_each(|v| references(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_branch_and_foreach_bodies_group() {
        let definition = json!({
            "Version": "2020-12-01",
            "Steps": [
                {"Name": "Prepare", "Type": "Pass"},
                {"Name": "Check", "Type": "Condition", "Arguments": {
                    "Conditions": [{"Type": "Equals", "LeftValue": {"Get": "Steps.Prepare.Outputs.x"}, "RightValue": 1}],
                    "IfSteps": [{"Name": "Train", "Type": "Pass"}],
                    "ElseSteps": [{"Name": "Give", "Type": "Fail", "Arguments": {"ErrorMessage": "no"}}]}},
                {"Name": "FanOut", "Type": "ForEach", "DependsOn": ["Train"], "Arguments": {
                    "IterableItems": [1, 2],
                    "ForEachBody": [
                        {"Name": "Score", "Type": "Pass"},
                        {"Name": "Sum", "Type": "Pass", "DependsOn": [{"Step": "Score"}]}]}}
            ]
        });
        let graph = Graph::from_definition(&definition);
        let names: Vec<_> = graph.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["Prepare", "Check", "Train", "Give", "FanOut", "Score", "Sum"]);
        assert_eq!(graph.nodes[5].group.as_deref(), Some("FanOut"));
        let edge = |from: &str, to: &str, label| Edge {
            from: from.into(),
            to: to.into(),
            label,
        };
        assert!(graph.edges.contains(&edge("Prepare", "Check", None)));
        assert!(graph.edges.contains(&edge("Check", "Train", Some("if"))));
        assert!(graph.edges.contains(&edge("Check", "Give", Some("else"))));
        assert!(graph.edges.contains(&edge("Train", "FanOut", None)));
        assert!(graph.edges.contains(&edge("Score", "Sum", None)));
        assert_eq!(graph.members(Some("FanOut")).count(), 2);
    }
}
