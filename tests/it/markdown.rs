//! Reading the fenced code blocks of the repository's Markdown documents,
//! so the tests run the snippets and examples the documents show.

/// A fenced code block: its info string (`sh`, `json pipeline run`, ...),
/// its text and the line its opening fence is on (1-based).
#[derive(Debug, Clone)]
pub struct Block {
    pub info: String,
    pub body: String,
    pub line: usize,
}

impl Block {
    /// The words of the info string: the language, then any tags.
    pub fn words(&self) -> Vec<&str> {
        self.info.split_whitespace().collect()
    }

    pub fn language(&self) -> &str {
        self.words().first().copied().unwrap_or("")
    }
}

/// A document in the repository, read whole.
pub fn read(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

/// The text of the section that starts with the heading line `heading`
/// (e.g. `## Walk-through with curl`) and ends before the next heading of
/// the same or a higher level, outside code blocks. With the lines before
/// it, so block line numbers stay those of the document.
pub fn section(text: &str, heading: &str) -> String {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut out = String::new();
    let mut inside = false;
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        let is_heading = !in_fence && hashes > 0 && line[hashes..].starts_with(' ');
        if is_heading && line.trim_end() == heading {
            inside = true;
        } else if inside && is_heading && hashes <= level {
            break;
        }
        // Keep line numbering: lines outside the section become empty.
        out.push_str(if inside { line } else { "" });
        out.push('\n');
    }
    assert!(inside, "the document has no heading {heading:?}");
    out
}

/// Every fenced block (```` ``` ```` fences, not indented more than three
/// spaces) of `text`, in order.
pub fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize, usize)> = None;
    let mut body = String::new();
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        match &open {
            None if indent <= 3 && trimmed.starts_with("```") => {
                open = Some((trimmed.trim_start_matches('`').trim().to_string(), i + 1, indent));
                body.clear();
            }
            None => {}
            Some((info, start, fence_indent)) => {
                if trimmed.starts_with("```") && trimmed.trim_start_matches('`').trim().is_empty() {
                    out.push(Block {
                        info: info.clone(),
                        body: std::mem::take(&mut body),
                        line: *start,
                    });
                    open = None;
                } else {
                    // A fence indented inside a list item indents its lines too.
                    let strip = line.len() - line.trim_start().len();
                    body.push_str(&line[strip.min(*fence_indent)..]);
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "a code block is not closed");
    out
}

#[test]
fn blocks_and_sections_are_found() {
    let text =
        "# T\n\n## A\n\n```sh\necho a\n```\n\n### A.1\n\n```json pipeline run\n{}\n```\n\n## B\n\n```sh\necho b\n```\n";
    let a = blocks(&section(text, "## A"));
    assert_eq!(a.len(), 2);
    assert_eq!(
        (a[0].info.as_str(), a[0].body.as_str(), a[0].line),
        ("sh", "echo a\n", 5)
    );
    assert_eq!(a[1].words(), ["json", "pipeline", "run"]);
    assert_eq!(a[1].language(), "json");
    assert_eq!(blocks(&section(text, "## B"))[0].body, "echo b\n");
}
