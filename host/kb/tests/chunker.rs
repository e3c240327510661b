//! The chunker keeps headings and sentences whole.

use swapbot_kb::chunker::{chunk_document, split_sentences};
use swapbot_kb::ingest::plan_file;

fn sentence(section: usize, i: usize) -> String {
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"];
    let n = 6 + (section * 7 + i * 3) % 17;
    let body: Vec<&str> = (0..n).map(|k| words[(k + i + section) % words.len()]).collect();
    format!("Sentence {section}-{i} says {}.", body.join(" "))
}

#[test]
fn headings_and_sentences_stay_whole() {
    let mut doc = String::from("Preamble before any heading. It has two sentences.\n\n");
    let mut expected: Vec<(String, String)> = vec![];
    for s in ["Preamble before any heading.", "It has two sentences."] {
        expected.push((String::new(), s.into()));
    }
    let titles = [(1, "Guide"), (2, "Install"), (3, "Linux"), (2, "Usage"), (1, "Appendix")];
    let mut stack: Vec<(usize, &str)> = vec![];
    for (si, (level, title)) in titles.iter().enumerate() {
        doc.push_str(&format!("{} {title}\n\n", "#".repeat(*level)));
        stack.retain(|(l, _)| l < level);
        stack.push((*level, title));
        let path = stack.iter().map(|(_, t)| *t).collect::<Vec<_>>().join(" > ");
        for p in 0..4 {
            let sents: Vec<String> = (0..5).map(|i| sentence(si, p * 5 + i)).collect();
            for s in &sents {
                expected.push((path.clone(), s.clone()));
            }
            // Hard-wrapped lines, as Markdown files are.
            let para = sents.join(" ");
            let wrapped: Vec<String> = para.split(' ').collect::<Vec<_>>().chunks(9).map(|w| w.join(" ")).collect();
            doc.push_str(&wrapped.join("\n"));
            doc.push_str("\n\n");
        }
    }
    let chunks = chunk_document(&doc, true, 400);
    assert!(chunks.len() > titles.len(), "sections of ~2000 chars must split");
    for c in &chunks {
        assert!(c.body.chars().count() <= 400, "{} chars", c.body.len());
        assert!(!c.body.contains('#'), "a heading leaked into a body: {c:?}");
    }
    // Every sentence is in exactly one chunk, whole, under its own heading path, in order.
    let mut last = (0usize, 0usize);
    for (path, s) in &expected {
        let holders: Vec<(usize, &swapbot_kb::chunker::ChunkDraft)> =
            chunks.iter().enumerate().filter(|(_, c)| c.body.contains(s.as_str())).collect();
        assert_eq!(holders.len(), 1, "{s:?} is in {} chunks", holders.len());
        let (i, c) = holders[0];
        assert_eq!(&c.heading(), path, "{s:?}");
        let pos = c.body.find(s.as_str()).unwrap();
        assert!((i, pos) >= last, "order kept");
        last = (i, pos);
    }
    // Nothing else was invented: the bodies hold exactly the sentences.
    let total: usize = chunks.iter().map(|c| split_sentences(&c.body).len()).sum();
    assert_eq!(total, expected.len());
}

#[test]
fn only_a_sentence_longer_than_the_limit_is_cut() {
    let long = format!("This {}ends here.", "very ".repeat(60));
    let doc = format!("# T\n\nShort one. {long} Another short one.\n");
    let chunks = chunk_document(&doc, true, 100);
    assert_eq!(chunks[0].body, "Short one.");
    assert_eq!(chunks.last().unwrap().body, "Another short one.");
    let middle: Vec<&str> = chunks[1..chunks.len() - 1].iter().map(|c| c.body.as_str()).collect();
    assert!(middle.len() >= 3);
    assert!(middle.iter().all(|b| b.chars().count() <= 100));
    assert_eq!(middle.join(" "), long.trim(), "cut at word boundaries only");
}

#[test]
fn lists_code_and_plain_text() {
    let doc = "# Steps\n\n1. Install it.\n2. Run it. Then check.\n- a bullet\n\n```\n# comment, not a heading\nmake run\n```\n";
    let c = chunk_document(doc, true, 800);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].heading(), "Steps");
    assert!(c[0].body.contains("1. Install it.\n2. Run it. Then check.\n- a bullet"), "{:?}", c[0].body);
    assert!(c[0].body.contains("# comment, not a heading\nmake run"));
    // .txt: a leading # is text, not a heading.
    let t = chunk_document("# not a heading. Just text.\n", false, 800);
    assert_eq!(t[0].heading_path, Vec::<String>::new());
    assert!(t[0].body.starts_with("# not a heading."));
    // Non-Latin text counts characters, not bytes.
    let ru = "Бот отвечает на вопросы. ".repeat(20);
    let r = chunk_document(&ru, false, 100);
    assert!(r.iter().all(|c| c.body.chars().count() <= 100 && c.body.ends_with('.')));
}

#[test]
fn stable_ids_and_content_hashes() {
    let a = plan_file("docs/a.md", "# A\n\nOne. Two.\n", true, 800);
    let b = plan_file("docs/a.md", "# A\n\nOne. Two.\n", true, 800);
    let c = plan_file("docs/a.md", "# A\n\nOne. Three.\n", true, 800);
    let d = plan_file("docs/b.md", "# A\n\nOne. Two.\n", true, 800);
    assert_eq!(a[0].id, b[0].id);
    assert_eq!(a[0].content_hash, b[0].content_hash);
    assert_eq!(a[0].id, c[0].id, "same place, same id: a change replaces");
    assert_ne!(a[0].content_hash, c[0].content_hash);
    assert_ne!(a[0].id, d[0].id);
    assert_eq!(a[0].text, "A\nOne. Two.");
}
