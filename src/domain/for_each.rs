//! What a ForEach decides, apart from storage: the items its `IterableItems`
//! resolved to, which iteration of a source execution each item may take
//! its outputs from (item-level reuse), the names of iteration steps, and
//! the property document it ends with (every iteration's outputs, the
//! selected one, the counts).

use serde_json::{json, Map, Value};

use super::definition::for_each::{Pick, Selector};
use super::expr::{format_path, lookup};
use super::type_name;

/// The name of body step `body` in iteration `index` of ForEach `parent`:
/// `FanOut[3].Score`.
pub fn iteration_step_name(parent: &str, index: usize, body: &str) -> String {
    format!("{parent}[{index}].{body}")
}

/// The items an evaluated `IterableItems` holds: a list, or a string that
/// holds a JSON list (what the SageMaker SDK passes), at most `max`.
pub fn items_of(value: Value, max: usize) -> Result<Vec<Value>, String> {
    let items = match value {
        Value::Array(items) => items,
        Value::String(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(items)) => items,
            _ => {
                let shown: String = text.chars().take(80).collect();
                return Err(format!(
                    "IterableItems resolved to the string {shown:?}, which is not a JSON list"
                ));
            }
        },
        other => return Err(format!("IterableItems resolved to {}, not a list", type_name(&other))),
    };
    if items.len() > max {
        return Err(format!(
            "IterableItems resolved to {} items; at most {max} are allowed (worker.for_each_max_items)",
            items.len()
        ));
    }
    Ok(items)
}

/// One iteration of a ForEach in a source execution.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceIteration {
    pub index: usize,
    pub item: Value,
    /// Every body step of it succeeded.
    pub succeeded: bool,
}

/// For each item, the source iteration it is compared with: one that ran the
/// same item and succeeded, each source iteration taken at most once, the
/// one at the same index first, then the earliest. Items with none run.
pub fn match_items(items: &[Value], source: &[SourceIteration]) -> Vec<Option<usize>> {
    let mut taken = vec![false; source.len()];
    let mut out = vec![None; items.len()];
    // Same index and same item first, so a list that only grew keeps its pairs.
    for (i, item) in items.iter().enumerate() {
        if let Some(k) = source
            .iter()
            .position(|s| s.index == i && s.succeeded && &s.item == item)
        {
            taken[k] = true;
            out[i] = Some(source[k].index);
        }
    }
    for (i, item) in items.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        if let Some(k) = (0..source.len()).find(|&k| !taken[k] && source[k].succeeded && &source[k].item == item) {
            taken[k] = true;
            out[i] = Some(source[k].index);
        }
    }
    out
}

/// How the steps of a ForEach's iterations ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub stopped: i64,
}

/// The property document of a ForEach whose iterations all succeeded:
/// `IterationOutputs` (per iteration, each body step's property document),
/// `Selected` (the selector's body step in the picked iteration), `Status`,
/// `InputItemCount` and the step counts (the SageMaker SDK's names).
pub fn properties(iterations: Vec<Value>, selector: Option<&Selector>, counts: Counts) -> Result<Value, String> {
    let selected = match selector {
        Some(sel) => select(&iterations, sel)?,
        None => Value::Null,
    };
    let mut doc = summary("Succeeded", iterations.len(), counts);
    doc.insert("IterationOutputs".into(), Value::Array(iterations));
    doc.insert("Selected".into(), selected);
    Ok(Value::Object(doc))
}

/// The counts of a ForEach that did not succeed, for its metadata.
pub fn summary(status: &str, items: usize, counts: Counts) -> Map<String, Value> {
    let doc = json!({
        "Status": status,
        "InputItemCount": items,
        "TotalStepCount": counts.total,
        "SucceededStepCount": counts.succeeded,
        "FailedStepCount": counts.failed,
        "StoppedStepCount": counts.stopped,
    });
    match doc {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The selector's body step's property document in the iteration whose
/// field is largest (MaxBy) or smallest (MinBy); the first such on a tie.
fn select(iterations: &[Value], sel: &Selector) -> Result<Value, String> {
    let field = format!("IterationOutput.{}{}", sel.step, format_path(&sel.path));
    let mut best: Option<(f64, &Value)> = None;
    for (i, iteration) in iterations.iter().enumerate() {
        let doc = iteration
            .get(&sel.step)
            .ok_or_else(|| format!("Selector {field}: iteration {i} has no outputs of {}", sel.step))?;
        let value = lookup(doc, &sel.path).map_err(|e| format!("Selector {field}: iteration {i}: {e}"))?;
        let number = match &value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
            _ => None,
        }
        .ok_or_else(|| {
            format!(
                "Selector {field}: iteration {i} has {value}, not a number, so {} cannot compare it",
                sel.pick.as_str()
            )
        })?;
        let better = match (best, sel.pick) {
            (None, _) => true,
            (Some((b, _)), Pick::MaxBy) => number > b,
            (Some((b, _)), Pick::MinBy) => number < b,
        };
        if better {
            best = Some((number, doc));
        }
    }
    Ok(best.map(|(_, doc)| doc.clone()).unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::expr::PathSegment;

    fn source(index: usize, item: Value, succeeded: bool) -> SourceIteration {
        SourceIteration { index, item, succeeded }
    }

    #[test]
    fn items_come_from_a_list_or_a_json_list_string() {
        assert_eq!(items_of(json!([1, "a"]), 10).unwrap(), vec![json!(1), json!("a")]);
        assert_eq!(
            items_of(json!("[\"x\", {\"a\": 1}]"), 10).unwrap(),
            vec![json!("x"), json!({"a": 1})]
        );
        assert!(items_of(json!("x"), 10).unwrap_err().contains("not a JSON list"));
        assert!(items_of(json!({"a": 1}), 10).unwrap_err().contains("not a list"));
        assert!(items_of(json!([1, 2, 3]), 2).unwrap_err().contains("at most 2"));
        assert_eq!(items_of(json!([]), 2).unwrap(), Vec::<Value>::new());
    }

    #[test]
    fn items_pair_with_succeeded_source_iterations_of_the_same_item() {
        let src = vec![
            source(0, json!("a"), true),
            source(1, json!("b"), false),
            source(2, json!("c"), true),
            source(3, json!("a"), true),
        ];
        // b failed: it runs; d is new: it runs; the two a's pair once each.
        let items = [json!("a"), json!("b"), json!("c"), json!("d"), json!("a"), json!("a")];
        assert_eq!(
            match_items(&items, &src),
            vec![Some(0), None, Some(2), None, Some(3), None]
        );
        // A list in another order still pairs by item.
        assert_eq!(match_items(&[json!("c"), json!("a")], &src), vec![Some(2), Some(0)]);
    }

    #[test]
    fn the_selector_picks_the_largest_or_smallest_field() {
        let its = vec![
            json!({"Score": {"Outputs": {"acc": 0.5}}}),
            json!({"Score": {"Outputs": {"acc": "0.9"}}}),
            json!({"Score": {"Outputs": {"acc": 0.9}}}),
            json!({"Score": {"Outputs": {"acc": 0.1}}}),
        ];
        let path = vec![PathSegment::Key("Outputs".into()), PathSegment::Key("acc".into())];
        let max = Selector {
            pick: Pick::MaxBy,
            step: "Score".into(),
            path: path.clone(),
        };
        let doc = properties(its.clone(), Some(&max), Counts::default()).unwrap();
        assert_eq!(doc["Selected"], json!({"Outputs": {"acc": "0.9"}}));
        assert_eq!(doc["InputItemCount"], json!(4));
        let min = Selector {
            pick: Pick::MinBy,
            ..max
        };
        assert_eq!(
            properties(its, Some(&min), Counts::default()).unwrap()["Selected"]["Outputs"]["acc"],
            json!(0.1)
        );
        let bad = vec![json!({"Score": {"Outputs": {"acc": [1]}}})];
        let sel = Selector {
            pick: Pick::MaxBy,
            step: "Score".into(),
            path,
        };
        assert!(properties(bad, Some(&sel), Counts::default())
            .unwrap_err()
            .contains("not a number"));
    }
}
