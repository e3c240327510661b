//! Splits Markdown and plain text into chunks that keep headings and sentences whole.
//!
//! A chunk never spans two sections: it carries the heading path of its section
//! (`Rollout > Canary`) and a body of whole sentences (or whole list items / code lines) of at most
//! `limit` characters. Only a single sentence longer than the limit is cut, at word boundaries.

/// Target and maximum body size of a chunk, in characters.
pub const DEFAULT_CHUNK_CHARS: usize = 800;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkDraft {
    /// Headings from the top level down to this chunk's section; empty before the first heading.
    pub heading_path: Vec<String>,
    pub body: String,
}

impl ChunkDraft {
    /// `Rollout > Canary`, or "" outside any section.
    pub fn heading(&self) -> String {
        self.heading_path.join(" > ")
    }

    /// The text that is embedded and stored: the heading path on its own line, then the body.
    pub fn text(&self) -> String {
        if self.heading_path.is_empty() {
            self.body.clone()
        } else {
            format!("{}\n{}", self.heading(), self.body)
        }
    }
}

/// One indivisible piece of a section, and what joins it to the previous one.
struct Unit {
    sep: &'static str,
    text: String,
}

/// Chunks a document. `markdown` enables ATX headings (`# …`) and code fences.
pub fn chunk_document(text: &str, markdown: bool, limit: usize) -> Vec<ChunkDraft> {
    let limit = limit.max(16);
    let mut out = Vec::new();
    let mut headings: Vec<(usize, String)> = Vec::new();
    let mut units: Vec<Unit> = Vec::new();
    let mut para: Vec<&str> = Vec::new();
    let mut code: Option<Vec<&str>> = None;
    let mut block_sep: &'static str = "";

    let flush_para = |para: &mut Vec<&str>, units: &mut Vec<Unit>, block_sep: &mut &'static str| {
        if para.is_empty() {
            return;
        }
        let joined = para.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
        para.clear();
        for (i, s) in split_sentences(&joined).into_iter().enumerate() {
            units.push(Unit { sep: if i == 0 { *block_sep } else { " " }, text: s });
        }
        *block_sep = "\n\n";
    };

    let emit = |units: &mut Vec<Unit>, headings: &[(usize, String)], out: &mut Vec<ChunkDraft>| {
        let path: Vec<String> = headings.iter().map(|(_, h)| h.clone()).collect();
        pack(std::mem::take(units), &path, limit, out);
    };

    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(lines) = code.as_mut() {
            lines.push(line.trim_end());
            if markdown && (trimmed.starts_with("```") || trimmed.starts_with("~~~")) {
                let lines = code.take().unwrap();
                for (i, l) in lines.into_iter().enumerate() {
                    units.push(Unit { sep: if i == 0 { block_sep } else { "\n" }, text: l.to_string() });
                }
                block_sep = "\n\n";
            }
            continue;
        }
        if markdown && (trimmed.starts_with("```") || trimmed.starts_with("~~~")) {
            flush_para(&mut para, &mut units, &mut block_sep);
            code = Some(vec![line.trim_end()]);
            continue;
        }
        if markdown {
            if let Some((level, title)) = atx_heading(trimmed) {
                flush_para(&mut para, &mut units, &mut block_sep);
                emit(&mut units, &headings, &mut out);
                block_sep = "";
                headings.retain(|(l, _)| *l < level);
                headings.push((level, title));
                continue;
            }
        }
        if trimmed.is_empty() {
            flush_para(&mut para, &mut units, &mut block_sep);
            continue;
        }
        if is_list_item(trimmed) {
            // Consecutive list items: one per line, each an indivisible unit group.
            let prev_list = para.first().is_some_and(|l| is_list_item(l.trim()));
            flush_para(&mut para, &mut units, &mut block_sep);
            if prev_list {
                block_sep = "\n";
            }
        }
        para.push(line);
    }
    if let Some(lines) = code.take() {
        for (i, l) in lines.into_iter().enumerate() {
            units.push(Unit { sep: if i == 0 { block_sep } else { "\n" }, text: l.to_string() });
        }
    }
    flush_para(&mut para, &mut units, &mut block_sep);
    emit(&mut units, &headings, &mut out);
    out
}

fn atx_heading(line: &str) -> Option<(usize, String)> {
    let level = line.chars().take_while(|&c| c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &line[level..];
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    let title = rest.trim().trim_end_matches('#').trim();
    if title.is_empty() {
        return None;
    }
    Some((level, title.to_string()))
}

fn is_list_item(line: &str) -> bool {
    if line.starts_with("- ") || line.starts_with("* ") || line.starts_with("+ ") {
        return true;
    }
    let digits = line.chars().take_while(|c| c.is_ascii_digit()).count();
    digits > 0 && (line[digits..].starts_with(". ") || line[digits..].starts_with(") "))
}

/// Packs units into chunks of at most `limit` characters, never splitting a unit that fits.
fn pack(units: Vec<Unit>, path: &[String], limit: usize, out: &mut Vec<ChunkDraft>) {
    let mut body = String::new();
    let mut len = 0usize;
    let push = |body: &mut String, len: &mut usize, out: &mut Vec<ChunkDraft>| {
        let b = body.trim();
        if !b.is_empty() {
            out.push(ChunkDraft { heading_path: path.to_vec(), body: b.to_string() });
        }
        body.clear();
        *len = 0;
    };
    for unit in units {
        let ulen = unit.text.chars().count();
        if ulen > limit {
            push(&mut body, &mut len, out);
            for piece in split_long(&unit.text, limit) {
                body.push_str(&piece);
                push(&mut body, &mut len, out);
            }
            continue;
        }
        let sep = if len == 0 { "" } else { unit.sep };
        if len > 0 && len + sep.len() + ulen > limit {
            push(&mut body, &mut len, out);
            body.push_str(&unit.text);
            len = ulen;
        } else {
            body.push_str(sep);
            body.push_str(&unit.text);
            len += sep.len() + ulen;
        }
    }
    push(&mut body, &mut len, out);
}

/// Cuts one over-long sentence at word boundaries (or mid-word for a single giant word).
fn split_long(text: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_len = 0;
    for word in text.split_whitespace() {
        let wlen = word.chars().count();
        if wlen > limit {
            if cur_len > 0 {
                out.push(std::mem::take(&mut cur));
                cur_len = 0;
            }
            let chars: Vec<char> = word.chars().collect();
            for piece in chars.chunks(limit) {
                out.push(piece.iter().collect());
            }
            continue;
        }
        let extra = if cur_len == 0 { wlen } else { wlen + 1 };
        if cur_len + extra > limit {
            out.push(std::mem::take(&mut cur));
            cur_len = 0;
        }
        if cur_len > 0 {
            cur.push(' ');
            cur_len += 1;
        }
        cur.push_str(word);
        cur_len += wlen;
    }
    if cur_len > 0 {
        out.push(cur);
    }
    out
}

const ABBREVIATIONS: &[&str] = &["e.g", "i.e", "etc", "vs", "mr", "mrs", "ms", "dr", "no", "fig", "approx", "cf"];

/// Sentence boundaries: `.`, `!`, `?` or `…` (plus closing quotes/brackets), then whitespace, then
/// something that is not a lower-case letter; common abbreviations and initials are not boundaries.
pub fn split_sentences(text: &str) -> Vec<String> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        if matches!(c, '.' | '!' | '?' | '…') {
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j].1, '.' | '!' | '?' | '"' | '\'' | ')' | ']' | '»' | '”' | '’' | '*' | '_') {
                j += 1;
            }
            if j < chars.len() && chars[j].1.is_whitespace() {
                let mut k = j;
                while k < chars.len() && chars[k].1.is_whitespace() {
                    k += 1;
                }
                let next_lower = k < chars.len() && chars[k].1.is_lowercase();
                let word_before: String = text[start..pos]
                    .rsplit(|ch: char| ch.is_whitespace() || ch == '(')
                    .next()
                    .unwrap_or("")
                    .to_lowercase();
                let abbrev = c == '.'
                    && (ABBREVIATIONS.contains(&word_before.as_str())
                        || (word_before.chars().count() == 1 && word_before.chars().all(char::is_alphabetic))
                        || (!word_before.is_empty() && word_before.chars().all(|ch| ch.is_ascii_digit())));
                if k < chars.len() && !next_lower && !abbrev {
                    let end = chars[j].0;
                    let s = text[start..end].trim();
                    if !s.is_empty() {
                        out.push(s.to_string());
                    }
                    start = chars[k].0;
                    i = k;
                    continue;
                }
            }
            i = j;
            continue;
        }
        i += 1;
    }
    let s = text[start..].trim();
    if !s.is_empty() {
        out.push(s.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences() {
        assert_eq!(
            split_sentences("Hello world. This is e.g. fine! Is it? yes it is. Done"),
            vec!["Hello world.", "This is e.g. fine!", "Is it? yes it is.", "Done"]
        );
    }

    #[test]
    fn headings_nest() {
        let doc = "# A\nintro.\n## B\nbee.\n### C\nsee.\n## D\ndee.\n";
        let c = chunk_document(doc, true, 800);
        let paths: Vec<String> = c.iter().map(|c| c.heading()).collect();
        assert_eq!(paths, vec!["A", "A > B", "A > B > C", "A > D"]);
    }

    #[test]
    fn code_fence_hash_is_not_heading() {
        let doc = "# A\n```sh\n# not a heading\necho hi\n```\n";
        let c = chunk_document(doc, true, 800);
        assert_eq!(c.len(), 1);
        assert!(c[0].body.contains("# not a heading"));
    }
}
