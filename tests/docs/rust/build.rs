//! Writes every ```rust block of the documents below into `$OUT_DIR/blocks.rs`, each as an
//! async function of its own (a block is a fragment: `use` lines and statements), after the
//! lines of the `<!-- docs-test: rust-prelude ... -->` comments right before it, which declare
//! what the text leaves to the reader (a connection, a job, a shutdown future). `cargo build
//! -p pgflow-docs` then compiles them as written: a block that no longer matches the client's
//! API fails the build, naming its file and line.
use std::fmt::Write;

const DOCS: [&str; 2] = ["docs/clients.md", "clients/rust/README.md"];

fn main() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../..");
    let mut out = String::new();
    let mut n = 0;
    for doc in DOCS {
        let path = format!("{root}/{doc}");
        println!("cargo:rerun-if-changed={path}");
        let text = std::fs::read_to_string(&path).expect("a document of the docs layer");
        let lines: Vec<&str> = text.lines().collect();
        let mut prelude: Vec<String> = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i].trim();
            if let Some(p) = line
                .strip_prefix("<!-- docs-test: rust-prelude")
                .and_then(|p| p.strip_suffix("-->"))
            {
                prelude.push(p.trim().to_owned());
            } else if line == "```rust" {
                let start = i + 1;
                let mut end = start;
                while end < lines.len() && !lines[end].starts_with("```") {
                    end += 1;
                }
                n += 1;
                let _ = writeln!(
                    out,
                    "/// {doc}, line {start}.\n#[allow(unused, clippy::all)]\npub async fn block_{n}() \
                     -> Result<(), Box<dyn std::error::Error + Send + Sync>> {{\n    \
                     use crate::support::*;\n    {}\n{}\n    #[allow(unreachable_code)]\n    Ok(())\n}}\n",
                    prelude.join("\n    "),
                    lines[start..end].join("\n")
                );
                prelude.clear();
                i = end;
            } else if !line.is_empty() {
                prelude.clear();
            }
            i += 1;
        }
    }
    let _ = writeln!(
        out,
        "/// How many blocks there are.\npub const BLOCKS: usize = {n};"
    );
    let dest = format!("{}/blocks.rs", std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(dest, out).expect("writing the blocks");
}
