//! The DAG as inline SVG. Positions and edge curves come from `layout-rs`
//! (a Sugiyama-style layered layout); this module only sizes the boxes,
//! nests ForEach bodies and writes the markup.
//!
//! A ForEach body is laid out first on its own; its bounding box becomes
//! the size of the ForEach node in the enclosing layout, and the body is
//! drawn inside that node, shifted to where it landed. Edges that cross a
//! group's border are drawn to (or from) the group.

use std::collections::HashMap;
use std::fmt::Write as _;

use layout::{
    core::{
        base::Orientation,
        format::{ClipHandle, RenderBackend},
        geometry::Point,
        style::StyleAttr,
    },
    std_shapes::shapes::{Arrow, Element, ShapeKind},
    topo::layout::VisualGraph,
};
use maud::{html, Markup};

use super::graph::{Graph, Node};

/// How one node is drawn: decided by the page (status, plan verdict).
pub struct Deco {
    /// CSS classes (`st-Succeeded`, `v-Reuse`, ...).
    pub class: String,
    /// A glyph that tells the state without colour.
    pub icon: &'static str,
    /// The second line: the status or verdict in words, and badges.
    pub detail: String,
    pub href: Option<String>,
    /// What a screen reader says for the node.
    pub aria: String,
}

/// The most steps of one level (the top level or one ForEach body) whose
/// layout gets layout-rs's rank and edge-crossing optimization.
const OPTIMIZE_UP_TO: usize = 150;
const NODE_HEIGHT: f64 = 46.0;
const CHAR_WIDTH: f64 = 7.4;
const GROUP_PAD: f64 = 14.0;
const GROUP_HEADER: f64 = 44.0;

/// A node's box, its top-left corner and size.
#[derive(Clone, Copy)]
struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

/// The control points of an edge, as layout-rs gives them.
type Curve = Vec<(Point, Point)>;
/// Where an edge's label goes, and its text.
type Label = (Point, &'static str);

struct Laid {
    /// Every node of this level and of the groups within, placed.
    boxes: Vec<(usize, Rect)>,
    /// The curves' control points (as layout-rs gives them) and an
    /// optional label with its position.
    edges: Vec<(Curve, Option<Label>)>,
    width: f64,
    height: f64,
}

/// The SVG of `graph`, each node drawn as `deco` says. The layout is CPU
/// work (tens of milliseconds for a thousand steps): it runs on a blocking
/// thread, not on the server's async workers.
pub async fn render(graph: Graph, decos: Vec<Deco>) -> Markup {
    match tokio::task::spawn_blocking(move || render_now(&graph, decos)).await {
        Ok(markup) => markup,
        Err(e) => {
            tracing::error!(error = %e, "laying out a graph failed");
            html! { p class="error" { "The graph could not be drawn (see the server log)." } }
        }
    }
}

/// How each node of `graph` is drawn, in node order (for [`render`]).
pub fn decorate(graph: &Graph, deco: impl Fn(&Node) -> Deco) -> Vec<Deco> {
    graph.nodes.iter().map(deco).collect()
}

/// [`render`] on the calling thread.
pub fn render_now(graph: &Graph, decos: Vec<Deco>) -> Markup {
    if graph.nodes.is_empty() {
        return html! { p { "This definition has no steps to draw." } };
    }
    let index: HashMap<&str, usize> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let laid = lay_out(graph, &index, &decos, None);
    let mut boxes = laid.boxes;
    // Groups first (outer before inner), then the edges, then the steps,
    // so that neither a group's box nor an edge hides what is inside.
    boxes.sort_by_key(|(i, _)| graph.nodes[*i].kind != "ForEach");
    let groups = boxes
        .iter()
        .take_while(|(i, _)| graph.nodes[*i].kind == "ForEach")
        .count();
    let (groups, steps) = boxes.split_at(groups);
    let (w, h) = (laid.width.max(1.0), laid.height.max(1.0));
    html! {
        svg class="dag" xmlns="http://www.w3.org/2000/svg" role="group" aria-label="pipeline graph"
            viewBox=(format!("0 0 {w:.0} {h:.0}")) width=(format!("{w:.0}")) height=(format!("{h:.0}")) {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead" {}
                }
            }
            @for (i, rect) in groups {
                (node_markup(&graph.nodes[*i], &decos[*i], *rect))
            }
            g class="edges" aria-hidden="true" {
                @for (points, label) in &laid.edges {
                    path class="edge" d=(path_data(points)) marker-end="url(#arrow)" {}
                    @if let Some((at, text)) = label {
                        text class="edge-label" x=(format!("{:.1}", at.x)) y=(format!("{:.1}", at.y)) { (text) }
                    }
                }
            }
            @for (i, rect) in steps {
                (node_markup(&graph.nodes[*i], &decos[*i], *rect))
            }
        }
    }
}

fn node_markup(node: &Node, deco: &Deco, r: Rect) -> Markup {
    let group = node.kind == "ForEach";
    let body = html! {
        rect x=(format!("{:.1}", r.x)) y=(format!("{:.1}", r.y)) width=(format!("{:.1}", r.w)) height=(format!("{:.1}", r.h)) rx="6" {}
        text class="name" x=(format!("{:.1}", r.x + 10.0)) y=(format!("{:.1}", r.y + 19.0)) {
            tspan class="icon" { (deco.icon) } " " (node.name)
        }
        text class="detail" x=(format!("{:.1}", r.x + 10.0)) y=(format!("{:.1}", r.y + 36.0)) { (deco.detail) }
    };
    let class = format!("node {}{}", if group { "group " } else { "" }, deco.class);
    html! {
        @if let Some(href) = &deco.href {
            a class=(class) href=(href) data-step=(node.name) aria-label=(deco.aria) { (body) }
        } @else {
            g class=(class) data-step=(node.name) role="img" aria-label=(deco.aria) { (body) }
        }
    }
}

fn node_size(node: &Node, deco: &Deco) -> Point {
    let chars = (node.name.chars().count() + 2).max(deco.detail.chars().count());
    Point::new((chars as f64 * CHAR_WIDTH + 22.0).max(110.0), NODE_HEIGHT)
}

/// Lays out the members of `group` (the top level for None), groups within
/// first.
fn lay_out(graph: &Graph, index: &HashMap<&str, usize>, decos: &[Deco], group: Option<&str>) -> Laid {
    let members: Vec<usize> = graph.members(group).map(|n| index[n.name.as_str()]).collect();
    let mut inner: HashMap<usize, Laid> = HashMap::new();
    for &i in &members {
        if graph.nodes[i].kind == "ForEach" {
            inner.insert(i, lay_out(graph, index, decos, Some(&graph.nodes[i].name)));
        }
    }
    let mut vg = VisualGraph::new(Orientation::TopToBottom);
    let mut handles = HashMap::new();
    for &i in &members {
        let node = &graph.nodes[i];
        let size = match inner.get(&i) {
            Some(laid) => Point::new(
                (laid.width + 2.0 * GROUP_PAD).max(node_size(node, &decos[i]).x),
                laid.height + GROUP_PAD + GROUP_HEADER,
            ),
            None => node_size(node, &decos[i]),
        };
        let element = Element::create(
            ShapeKind::Box(String::new()),
            StyleAttr::simple(),
            Orientation::TopToBottom,
            size,
        );
        handles.insert(i, vg.add_node(element));
    }
    // An edge is drawn at this level between the members that hold its ends.
    let holder = |name: &str| -> Option<usize> {
        let mut at = index.get(name).copied()?;
        loop {
            let node = &graph.nodes[at];
            if node.group.as_deref() == group {
                return Some(at);
            }
            at = index.get(node.group.as_deref()?).copied()?;
        }
    };
    let mut pairs = Vec::new();
    let mut drawn = std::collections::HashSet::new();
    for edge in &graph.edges {
        let (Some(from), Some(to)) = (holder(&edge.from), holder(&edge.to)) else {
            continue;
        };
        if from != to && drawn.insert((from, to)) {
            pairs.push((from, to, edge.label));
        }
    }
    // layout-rs checks each new edge for a cycle with a search that can
    // take exponential time on a wide DAG; added in topological order of
    // their heads, the head has no successors yet and the check is
    // immediate. (Its own whole-graph verification after every edge is
    // quadratic and only guards against its own bugs: it is turned off.)
    let order = topological_positions(&members, &pairs);
    pairs.sort_by_key(|(_, to, _)| order.get(to).copied().unwrap_or(usize::MAX));
    vg.dag.set_validate(false);
    let mut labels = Vec::new();
    for (from, to, label) in pairs {
        let mut arrow = Arrow::simple("");
        arrow.properties = Some(labels.len().to_string());
        labels.push(label);
        vg.add_edge(arrow, handles[&from], handles[&to]);
    }
    let mut capture = Capture::default();
    // Rank and crossing optimization are the costly part (in a release
    // build about 0.1 s for 100 steps, 0.35 s for 200, 0.5 s for 300);
    // past OPTIMIZE_UP_TO steps the layers keep pipeline order instead,
    // and 1,000 steps take about 0.1 s in all.
    let disable_opt = members.len() > OPTIMIZE_UP_TO;
    vg.do_it(false, disable_opt, false, &mut capture);
    let mut boxes = Vec::new();
    let (mut min, mut max) = (Point::new(f64::MAX, f64::MAX), Point::new(f64::MIN, f64::MIN));
    for &i in &members {
        let (top_left, bottom_right) = vg.pos(handles[&i]).bbox(false);
        min = Point::new(min.x.min(top_left.x), min.y.min(top_left.y));
        max = Point::new(max.x.max(bottom_right.x), max.y.max(bottom_right.y));
        boxes.push((i, top_left, bottom_right));
    }
    for (_, points) in &capture.arrows {
        for p in points.iter().flat_map(|(a, b)| [a, b]) {
            min = Point::new(min.x.min(p.x), min.y.min(p.y));
            max = Point::new(max.x.max(p.x), max.y.max(p.y));
        }
    }
    let margin = 8.0;
    let shift = Point::new(margin - min.x, margin - min.y);
    let mut out = Laid {
        boxes: Vec::new(),
        edges: Vec::new(),
        width: max.x - min.x + 2.0 * margin,
        height: max.y - min.y + 2.0 * margin,
    };
    for (i, top_left, bottom_right) in boxes {
        let rect = Rect {
            x: top_left.x + shift.x,
            y: top_left.y + shift.y,
            w: bottom_right.x - top_left.x,
            h: bottom_right.y - top_left.y,
        };
        out.boxes.push((i, rect));
        if let Some(laid) = inner.remove(&i) {
            let dx = rect.x + (rect.w - laid.width) / 2.0;
            let dy = rect.y + GROUP_HEADER;
            out.boxes.extend(laid.boxes.into_iter().map(|(j, r)| {
                (
                    j,
                    Rect {
                        x: r.x + dx,
                        y: r.y + dy,
                        ..r
                    },
                )
            }));
            let by = Point::new(dx, dy);
            out.edges.extend(laid.edges.into_iter().map(|(points, label)| {
                (
                    points.iter().map(|(a, b)| (a.add(by), b.add(by))).collect(),
                    label.map(|(p, t)| (p.add(by), t)),
                )
            }));
        }
    }
    for (edge, points) in capture.arrows {
        let label = edge.and_then(|e| labels.get(e).copied().flatten());
        let points: Vec<(Point, Point)> = points.iter().map(|(a, b)| (a.add(shift), b.add(shift))).collect();
        let label_at = match (label, points.first(), points.last()) {
            (Some(text), Some(first), Some(last)) => {
                let (from, to) = (first.0, last.1);
                Some((Point::new((from.x + to.x) / 2.0 + 4.0, (from.y + to.y) / 2.0), text))
            }
            _ => None,
        };
        out.edges.push((points, label_at));
    }
    out
}

/// Each member's position in a topological order of `edges` (Kahn's
/// algorithm, ties in document order); members on a cycle come last.
fn topological_positions(members: &[usize], edges: &[(usize, usize, Option<&'static str>)]) -> HashMap<usize, usize> {
    let mut indegree: HashMap<usize, usize> = members.iter().map(|&m| (m, 0)).collect();
    let mut out: HashMap<usize, Vec<usize>> = HashMap::new();
    for &(from, to, _) in edges {
        *indegree.entry(to).or_default() += 1;
        out.entry(from).or_default().push(to);
    }
    let mut ready: std::collections::BTreeSet<usize> = members.iter().copied().filter(|m| indegree[m] == 0).collect();
    let mut order = HashMap::with_capacity(members.len());
    while let Some(next) = ready.pop_first() {
        order.insert(next, order.len());
        for &to in out.get(&next).map(Vec::as_slice).unwrap_or_default() {
            let d = indegree.get_mut(&to).expect("every head is a member");
            *d -= 1;
            if *d == 0 {
                ready.insert(to);
            }
        }
    }
    order
}

/// Cubic Béziers through the layout's control points, as layout-rs's own
/// SVG backend joins them.
fn path_data(path: &[(Point, Point)]) -> String {
    let mut d = String::new();
    if path.len() < 2 {
        return d;
    }
    let _ = write!(
        d,
        "M{:.1} {:.1} C{:.1} {:.1},{:.1} {:.1},{:.1} {:.1}",
        path[0].0.x, path[0].0.y, path[0].1.x, path[0].1.y, path[1].0.x, path[1].0.y, path[1].1.x, path[1].1.y
    );
    for p in &path[2..] {
        let _ = write!(d, " S{:.1} {:.1},{:.1} {:.1}", p.0.x, p.0.y, p.1.x, p.1.y);
    }
    d
}

/// A render backend that keeps the edges' curves and draws nothing else:
/// nodes are drawn by [`render`] from their positions.
#[derive(Default)]
struct Capture {
    arrows: Vec<(Option<usize>, Curve)>,
}

impl RenderBackend for Capture {
    fn draw_rect(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>, _: Option<ClipHandle>) {}
    fn draw_line(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}
    fn draw_circle(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}
    fn draw_text(&mut self, _: Point, _: &str, _: &StyleAttr) {}
    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        _dashed: bool,
        _head: (bool, bool),
        _look: &StyleAttr,
        properties: Option<String>,
        _text: &str,
    ) {
        let edge = properties.and_then(|p| p.parse().ok());
        self.arrows.push((edge, path.to_vec()));
    }
    fn create_clip(&mut self, _: Point, _: Point, _: usize) -> ClipHandle {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn plain(graph: &Graph) -> Vec<Deco> {
        decorate(graph, |n| Deco {
            class: "st-Succeeded".into(),
            icon: "✔",
            detail: "Succeeded".into(),
            href: Some(format!("/ui/x?step={}", n.name)),
            aria: format!("step {}: Succeeded", n.name),
        })
    }

    /// `n` Pass steps in layers of 25, each depending on two of the layer above.
    fn layered(n: usize) -> Value {
        let width = 25;
        let steps: Vec<_> = (0..n)
            .map(|i| {
                let mut s = json!({"Name": format!("S{i}"), "Type": "Pass", "Arguments": {"i": i}});
                if i >= width {
                    let above = i - width - (i % width);
                    s["DependsOn"] = json!([
                        format!("S{}", above + i % width),
                        format!("S{}", above + (i + 1) % width)
                    ]);
                }
                s
            })
            .collect();
        json!({"Version": "2020-12-01", "Steps": steps})
    }

    /// The `x y width height` of the node `name` in the SVG text.
    fn rect_of(svg: &str, name: &str) -> [f64; 4] {
        let at = svg.find(&format!("data-step=\"{name}\"")).expect("the node is drawn");
        let rect = &svg[at..];
        let rect = &rect[rect.find("<rect").unwrap()..];
        let number = |attr: &str| -> f64 {
            let from = rect.find(&format!(" {attr}=\"")).unwrap() + attr.len() + 3;
            rect[from..from + rect[from..].find('"').unwrap()].parse().unwrap()
        };
        [number("x"), number("y"), number("width"), number("height")]
    }

    #[test]
    fn a_foreach_body_is_drawn_inside_its_group() {
        let definition = json!({"Version": "2020-12-01", "Steps": [
            {"Name": "Start", "Type": "Pass"},
            {"Name": "FanOut", "Type": "ForEach", "DependsOn": ["Start"], "Arguments": {
                "IterableItems": [1, 2, 3],
                "ForEachBody": [
                    {"Name": "Score", "Type": "Pass"},
                    {"Name": "Keep", "Type": "Pass", "DependsOn": ["Score"]}]}},
            {"Name": "End", "Type": "Pass", "DependsOn": ["FanOut"]}]});
        let graph = Graph::from_definition(&definition);
        let svg = render_now(&graph, plain(&graph)).into_string();
        if let Ok(path) = std::env::var("STEPWISE_UI_SVG_OUT") {
            std::fs::write(path, &svg).unwrap();
        }
        let group = rect_of(&svg, "FanOut");
        for member in ["Score", "Keep"] {
            let r = rect_of(&svg, member);
            assert!(
                r[0] >= group[0]
                    && r[1] >= group[1]
                    && r[0] + r[2] <= group[0] + group[2]
                    && r[1] + r[3] <= group[1] + group[3],
                "{member} {r:?} lies inside FanOut {group:?}"
            );
        }
        let (start, end) = (rect_of(&svg, "Start"), rect_of(&svg, "End"));
        assert!(
            start[1] + start[3] <= group[1] && group[1] + group[3] <= end[1],
            "layers run top to bottom"
        );
        // Nodes are links with labels, for the keyboard and screen readers.
        assert!(svg.contains(r#"<a class="node st-Succeeded" href="/ui/x?step=Score" data-step="Score" aria-label="step Score: Succeeded">"#));
        assert!(svg.contains(r#"class="node group st-Succeeded""#));
    }

    #[test]
    fn a_wide_graph_of_a_thousand_steps_is_laid_out() {
        let graph = Graph::from_definition(&layered(1000));
        let svg = render_now(&graph, plain(&graph)).into_string();
        assert_eq!(svg.matches("<a class=\"node").count(), 1000);
        assert_eq!(svg.matches("class=\"edge\"").count(), 2 * 975);
    }

    /// A measurement, not a test: how long the layout of a layered graph
    /// takes as it grows. Run with
    /// `cargo test --release --lib layout_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn layout_timing() {
        for n in [50usize, 100, 150, 151, 200, 300, 400, 1000] {
            let definition = layered(n);
            let started = std::time::Instant::now();
            let graph = Graph::from_definition(&definition);
            let parsed = started.elapsed();
            let svg = render_now(&graph, plain(&graph)).into_string();
            eprintln!(
                "steps={n} graph={parsed:?} graph+layout+svg={:?} svg_bytes={}",
                started.elapsed(),
                svg.len()
            );
        }
    }
}
