use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::domain::definition::{parse_definition, VERSION};

fn parse(params: Value, steps: Value) -> Definition {
    parse_definition(&json!({"Version": VERSION, "Parameters": params, "Steps": steps})).expect("valid definition")
}

fn pass(name: &str, deps: &[&str]) -> Value {
    json!({"Name": name, "Type": "Pass", "Arguments": {}, "DependsOn": deps})
}

fn names(ns: &[&str]) -> Vec<String> {
    ns.iter().map(|s| s.to_string()).collect()
}

fn set(ns: &[&str]) -> BTreeSet<String> {
    ns.iter().map(|s| s.to_string()).collect()
}

fn source(entries: &[(&str, &str, Option<bool>)]) -> HashMap<String, SourceStep> {
    entries
        .iter()
        .map(|(n, status, outcome)| {
            (
                n.to_string(),
                SourceStep {
                    status: status.to_string(),
                    outcome: *outcome,
                    raw: Some(json!({})),
                },
            )
        })
        .collect()
}

/// A -> B -> C -> D, plus E -> C and an unrelated F.
fn line() -> Definition {
    parse(
        json!([]),
        json!([
            pass("A", &[]),
            pass("B", &["A"]),
            pass("E", &[]),
            pass("C", &["B", "E"]),
            pass("D", &["C"]),
            pass("F", &[])
        ]),
    )
}

#[test]
fn selection_partitions_the_steps() {
    let sel = select(&line(), &names(&["C", "B", "C"])).unwrap();
    assert_eq!(sel.selected, set(&["B", "C"]));
    assert_eq!(sel.upstream, set(&["A", "E"]));
    assert_eq!(sel.downstream, set(&["D"]));
    assert_eq!(sel.others, set(&["F"]));
}

#[test]
fn unknown_names_are_listed_together() {
    let err = select(&line(), &names(&["X", "A", "Y", "X"])).unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].path, SELECTED_STEPS_PATH);
    assert_eq!(
        err[0].message,
        r#"unknown steps in selected_steps: ["X", "Y"]; the pipeline has: A, B, E, C, D, F"#
    );
}

#[test]
fn unknown_names_message_caps_the_known_list() {
    let steps: Vec<Value> = (0..25).map(|i| pass(&format!("s{i}"), &[])).collect();
    let def = parse(json!([]), Value::Array(steps));
    let err = select(&def, &names(&["nope"])).unwrap_err();
    assert!(err[0].message.ends_with("s18, s19, ... (5 more)"), "{}", err[0].message);
}

#[test]
fn empty_selection_is_an_error() {
    let err = select(&line(), &[]).unwrap_err();
    assert_eq!(err[0].path, SELECTED_STEPS_PATH);
    assert!(err[0].message.contains("at least one step"), "{}", err[0].message);
}

#[test]
fn closure_names_each_missing_step_and_its_pair() {
    let err = select(&line(), &names(&["A", "D"])).unwrap_err();
    let messages: Vec<&str> = err.iter().map(|i| i.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            r#"step "B" lies on a path from selected step "A" to selected step "D" and must be selected too"#,
            r#"step "C" lies on a path from selected step "A" to selected step "D" and must be selected too"#,
        ]
    );
    assert!(err.iter().all(|i| i.path == SELECTED_STEPS_PATH));
    // E is an ancestor of D but not on a path from A, so it is upstream.
    let sel = select(&line(), &names(&["A", "B", "C", "D"])).unwrap();
    assert_eq!(sel.upstream, set(&["E"]));
}

#[test]
fn closure_is_linear_on_ten_thousand_steps() {
    let n = 10_000;
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let deps: Vec<String> = (i > 0).then(|| format!("c{}", i - 1)).into_iter().collect();
            json!({"Name": format!("c{i}"), "Type": "Pass", "Arguments": {}, "DependsOn": deps})
        })
        .collect();
    let def = parse(json!([]), Value::Array(steps));
    let err = select(&def, &names(&["c0", &format!("c{}", n - 1)])).unwrap_err();
    assert_eq!(err.len(), n - 2);
    let all: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let sel = select(&def, &all[n / 2..]).unwrap();
    assert_eq!(sel.upstream.len(), n / 2);
    assert!(sel.downstream.is_empty() && sel.others.is_empty());
}

#[test]
fn upstream_must_have_succeeded_in_the_source() {
    let sel = select(&line(), &names(&["C"])).unwrap();
    let src = source(&[("A", "Succeeded", None), ("B", "Failed", None)]);
    let issues = check_upstream(&sel, &src, "arn:x/execution/1");
    let messages: Vec<&str> = issues.iter().map(|i| i.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            r#"step "B" is needed by the selection but did not succeed in execution arn:x/execution/1: its status there is Failed"#,
            r#"step "E" is needed by the selection but is not in the definition execution arn:x/execution/1 ran"#,
        ]
    );
    assert!(issues.iter().all(|i| i.path == SOURCE_EXECUTION_PATH));
    assert!(!qualifies(&sel, &src));
    let ok = source(&[
        ("A", "Succeeded", None),
        ("B", "Succeeded", None),
        ("E", "Succeeded", None),
    ]);
    assert!(check_upstream(&sel, &ok, "x").is_empty());
    assert!(qualifies(&sel, &ok));
    // No upstream: any source qualifies, even an empty one.
    let root = select(&line(), &names(&["A"])).unwrap();
    assert!(qualifies(&root, &HashMap::new()));
}

fn gated() -> Definition {
    parse(
        json!([]),
        json!([
            pass("Train", &[]),
            {"Name": "Gate", "Type": "Condition", "DependsOn": ["Train"], "Arguments": {
                "Conditions": [{"Type": "Equals", "LeftValue": 1, "RightValue": 1}],
                "IfSteps": [
                    pass("Publish", &[]),
                    {"Name": "Inner", "Type": "Condition", "Arguments": {
                        "Conditions": [{"Type": "Equals", "LeftValue": 1, "RightValue": 2}],
                        "IfSteps": [pass("Deep", &[])],
                        "ElseSteps": []}}
                ],
                "ElseSteps": [pass("Reject", &[])]}}
        ]),
    )
}

#[test]
fn selected_step_in_the_branch_not_taken_is_an_error() {
    let def = gated();
    let sel = select(&def, &names(&["Publish"])).unwrap();
    assert_eq!(sel.upstream, set(&["Gate", "Train"]));
    let took_else = source(&[("Train", "Succeeded", None), ("Gate", "Succeeded", Some(false))]);
    let issues = check_branches(&def, &sel, &took_else);
    assert_eq!(issues.len(), 1);
    assert_eq!(
        issues[0].message,
        r#"selected step "Publish" is in the IfSteps of condition "Gate", which took the ElseSteps branch in the source execution"#
    );
    let took_if = source(&[("Train", "Succeeded", None), ("Gate", "Succeeded", Some(true))]);
    assert!(check_branches(&def, &sel, &took_if).is_empty());
    // A selected Condition runs again, so its branches are not constrained.
    let sel = select(&def, &names(&["Gate", "Publish"])).unwrap();
    assert!(check_branches(&def, &sel, &took_else).is_empty());
}

#[test]
fn nested_branches_are_checked_through_the_chain() {
    let def = gated();
    let sel = select(&def, &names(&["Deep"])).unwrap();
    // Inner took its IfSteps, Gate its IfSteps: Deep is reachable.
    let ok = source(&[
        ("Train", "Succeeded", None),
        ("Gate", "Succeeded", Some(true)),
        ("Inner", "Succeeded", Some(true)),
    ]);
    assert!(check_branches(&def, &sel, &ok).is_empty());
    // Gate took ElseSteps, so Inner never ran: the outer Condition is named.
    let outer = source(&[
        ("Train", "Succeeded", None),
        ("Gate", "Succeeded", Some(false)),
        ("Inner", "NotStarted", None),
    ]);
    let issues = check_branches(&def, &sel, &outer);
    assert_eq!(issues.len(), 1);
    assert!(
        issues[0].message.contains(r#"condition "Gate""#),
        "{}",
        issues[0].message
    );
    let inner = source(&[
        ("Train", "Succeeded", None),
        ("Gate", "Succeeded", Some(true)),
        ("Inner", "Succeeded", Some(false)),
    ]);
    let issues = check_branches(&def, &sel, &inner);
    assert_eq!(issues.len(), 1);
    assert!(
        issues[0]
            .message
            .contains(r#"IfSteps of condition "Inner", which took the ElseSteps"#),
        "{}",
        issues[0].message
    );
}

fn ml(epochs_default: i64, train_cmd: &str) -> Definition {
    parse(
        json!([{"Name": "Epochs", "Type": "Integer", "DefaultValue": epochs_default},
               {"Name": "Mode", "Type": "String", "DefaultValue": "fast"}]),
        json!([
            {"Name": "Prepare", "Type": "Command", "Arguments": {"Command": ["prep", {"Get": "Parameters.Mode"}]}},
            {"Name": "Train", "Type": "Command", "Arguments": {
                "Command": [train_cmd, {"Get": "Steps.Prepare.ArtifactsUri"}],
                "Env": {"EPOCHS": {"Get": "Parameters.Epochs"},
                        "RUN": {"Get": "Execution.PipelineExecutionId"}}}},
            {"Name": "Evaluate", "Type": "Pass", "Arguments": {"m": {"Get": "Steps.Train.Outputs.m"}}},
            {"Name": "Report", "Type": "Pass", "Arguments": {"mode": {"Get": "Parameters.Mode"}}, "DependsOn": ["Prepare"]},
            pass("Other", &[])
        ]),
    )
}

fn all_succeeded(def: &Definition) -> HashMap<String, SourceStep> {
    def.steps
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                SourceStep {
                    status: SUCCEEDED.into(),
                    outcome: None,
                    raw: Some(s.raw.clone()),
                },
            )
        })
        .collect()
}

fn params(epochs: i64, mode: &str) -> Map<String, Value> {
    json!({"Epochs": epochs, "Mode": mode}).as_object().unwrap().clone()
}

#[test]
fn nothing_changed_selects_nothing() {
    let def = ml(10, "train");
    let src = all_succeeded(&def);
    assert!(changed_steps(&def, &params(10, "fast"), &def, &params(10, "fast"), &src).is_empty());
}

#[test]
fn a_parameter_change_selects_its_users_and_their_descendants() {
    let def = ml(10, "train");
    let src = all_succeeded(&def);
    let changed = changed_steps(&def, &params(12, "fast"), &def, &params(10, "fast"), &src);
    assert_eq!(changed, set(&["Train", "Evaluate"]));
    let changed = changed_steps(&def, &params(10, "full"), &def, &params(10, "fast"), &src);
    assert_eq!(changed, set(&["Prepare", "Train", "Evaluate", "Report"]));
    // A changed default with the same effective value changes nothing.
    let changed = changed_steps(&ml(12, "train"), &params(10, "fast"), &def, &params(10, "fast"), &src);
    assert!(changed.is_empty(), "{changed:?}");
}

#[test]
fn an_edited_step_and_a_failed_source_step_are_changed() {
    let before = ml(10, "train");
    let after = ml(10, "train-v2");
    let p = params(10, "fast");
    let src = all_succeeded(&before);
    assert_eq!(
        changed_steps(&after, &p, &before, &p, &src),
        set(&["Train", "Evaluate"])
    );

    let mut failed = all_succeeded(&before);
    failed.get_mut("Report").unwrap().status = "Failed".into();
    failed.remove("Other");
    assert_eq!(
        changed_steps(&before, &p, &before, &p, &failed),
        set(&["Report", "Other"])
    );
}

/// T -> Gate(If [Ok], Else [No (Fail)]): SageMaker's commonest shape.
fn gate(message: &str) -> Definition {
    parse(
        json!([]),
        json!([
            pass("T", &[]),
            {"Name": "Gate", "Type": "Condition", "DependsOn": ["T"], "Arguments": {
                "Conditions": [{"Type": "Equals", "LeftValue": 1, "RightValue": 1}],
                "IfSteps": [pass("Ok", &[])],
                "ElseSteps": [{"Name": "No", "Type": "Fail", "Arguments": {"ErrorMessage": message}}]}}
        ]),
    )
}

#[test]
fn a_branch_the_source_did_not_take_is_not_changed() {
    let def = gate("bad");
    let p = Map::new();
    let mut src = all_succeeded(&def);
    src.get_mut("Gate").unwrap().outcome = Some(true);
    src.get_mut("No").unwrap().status = "Skipped".into();
    assert!(changed_steps(&def, &p, &def, &p, &src).is_empty());
    // Edited, it makes its Condition run again (so the branch is decided
    // anew) and comes in as the Condition's descendant, with the rest.
    assert_eq!(
        changed_steps(&gate("worse"), &p, &def, &p, &src),
        set(&["Gate", "No", "Ok"])
    );
    let why = changes(&gate("worse"), &p, &def, &p, &src);
    assert_eq!(
        why.get("Gate").unwrap(),
        &vec!["step \"No\" in a branch it did not take changed".to_string()]
    );
    // On the branch the source took, a step that did not succeed is changed.
    src.get_mut("Ok").unwrap().status = "Failed".into();
    assert_eq!(changed_steps(&def, &p, &def, &p, &src), set(&["Ok"]));
}

#[test]
fn a_new_step_and_a_new_dependency_are_changed() {
    let before = parse(json!([]), json!([pass("A", &[]), pass("B", &[])]));
    let after = parse(json!([]), json!([pass("A", &[]), pass("B", &["A"]), pass("N", &[])]));
    let p = Map::new();
    let src = all_succeeded(&before);
    assert_eq!(changed_steps(&after, &p, &before, &p, &src), set(&["B", "N"]));
}

#[test]
fn selected_steps_deserializes_names_or_changed() {
    let names: SelectedSteps = serde_json::from_value(json!(["A", "B"])).unwrap();
    assert_eq!(names, SelectedSteps::Names(vec!["A".into(), "B".into()]));
    let changed: SelectedSteps = serde_json::from_value(json!("changed")).unwrap();
    assert_eq!(changed, SelectedSteps::Changed);
    assert_eq!(serde_json::to_value(&changed).unwrap(), json!("changed"));
    let err = serde_json::from_value::<SelectedSteps>(json!("all")).unwrap_err();
    assert!(
        err.to_string()
            .contains("a list of step names or the string \"changed\""),
        "{err}"
    );
    assert!(serde_json::from_value::<SelectedSteps>(json!(7)).is_err());
}

/// Every non-selected step on some path between two selected steps, by
/// enumerating all paths from each selected step.
fn brute_force_missing(n: usize, edges: &[(usize, usize)], selected: &[bool]) -> BTreeSet<usize> {
    let mut children = vec![Vec::new(); n];
    for &(a, b) in edges {
        children[a].push(b);
    }
    fn dfs(node: usize, children: &[Vec<usize>], selected: &[bool], path: &mut Vec<usize>, out: &mut BTreeSet<usize>) {
        for &c in &children[node] {
            if selected[c] {
                out.extend(path[1..].iter().copied());
            }
            path.push(c);
            dfs(c, children, selected, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    for s in (0..n).filter(|&i| selected[i]) {
        dfs(s, &children, selected, &mut vec![s], &mut out);
    }
    out.retain(|&i| !selected[i]);
    out
}

fn random_dag() -> impl Strategy<Value = (usize, Vec<(usize, usize)>, Vec<bool>)> {
    (2usize..25, 5u32..40).prop_flat_map(|(n, density)| {
        let pairs = n * (n - 1) / 2;
        (
            Just(n),
            proptest::collection::vec(0u32..100, pairs).prop_map(move |draws| {
                let mut edges = Vec::new();
                let mut k = 0;
                for a in 0..n {
                    for b in a + 1..n {
                        if draws[k] < density {
                            edges.push((a, b));
                        }
                        k += 1;
                    }
                }
                edges
            }),
            proptest::collection::vec(proptest::bool::weighted(0.25), n),
        )
    })
}

proptest! {
    #[test]
    fn closure_matches_brute_force((n, edges, mut selected) in random_dag(), pick in 0usize..25) {
        if !selected.contains(&true) {
            selected[pick % n] = true;
        }
        let steps: Vec<Value> = (0..n)
            .map(|i| {
                let deps: Vec<String> = edges.iter().filter(|e| e.1 == i).map(|e| format!("s{}", e.0)).collect();
                json!({"Name": format!("s{i}"), "Type": "Pass", "Arguments": {}, "DependsOn": deps})
            })
            .collect();
        let def = parse(json!([]), Value::Array(steps));
        let chosen: Vec<String> = (0..n).filter(|&i| selected[i]).map(|i| format!("s{i}")).collect();
        let expected: BTreeSet<String> = brute_force_missing(n, &edges, &selected)
            .into_iter()
            .map(|i| format!("s{i}"))
            .collect();
        match select(&def, &chosen) {
            Ok(sel) => {
                prop_assert!(expected.is_empty(), "missed {:?}", expected);
                let mut up = BTreeSet::new();
                let mut down = BTreeSet::new();
                for s in &chosen {
                    up.extend(def.dag.ancestors(s));
                    down.extend(def.dag.descendants(s));
                }
                let sel_set: BTreeSet<String> = chosen.iter().cloned().collect();
                prop_assert_eq!(&sel.selected, &sel_set);
                prop_assert_eq!(&sel.upstream, &up.difference(&sel_set).cloned().collect());
                prop_assert_eq!(&sel.downstream, &down.difference(&sel_set).cloned().collect());
                prop_assert_eq!(sel.selected.len() + sel.upstream.len() + sel.downstream.len() + sel.others.len(), n);
            }
            Err(issues) => {
                let mut reported = BTreeSet::new();
                for issue in &issues {
                    let quoted: Vec<&str> = issue.message.split('"').skip(1).step_by(2).collect();
                    prop_assert_eq!(quoted.len(), 3, "{}", issue.message);
                    let (m, a, c) = (quoted[0], quoted[1], quoted[2]);
                    prop_assert!(selected[a[1..].parse::<usize>().unwrap()] && selected[c[1..].parse::<usize>().unwrap()]);
                    prop_assert!(def.dag.ancestors(m).contains(a), "{}", issue.message);
                    prop_assert!(def.dag.descendants(m).contains(c), "{}", issue.message);
                    reported.insert(m.to_string());
                }
                prop_assert_eq!(reported.len(), issues.len());
                prop_assert_eq!(reported, expected);
            }
        }
    }
}
