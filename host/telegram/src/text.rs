//! Pure text logic: UTF-16 lengths, splitting long answers, HTML escaping, preview texts.

/// Telegram's limit for a message text, in UTF-16 code units.
pub const TELEGRAM_LIMIT: usize = 4096;
/// What we aim for: conservative, leaves room for Telegram counting slightly differently.
pub const SAFE_LIMIT: usize = 4000;

/// Length as Telegram counts it (UTF-16 code units).
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// Escapes text for `parse_mode=HTML`: only `&`, `<` and `>` need it.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Byte index of the end of the longest prefix of `s` that is at most `max_units` UTF-16 units.
fn prefix_end(s: &str, max_units: usize) -> usize {
    let mut units = 0;
    for (i, c) in s.char_indices() {
        units += c.len_utf16();
        if units > max_units {
            return i;
        }
    }
    s.len()
}

/// A char that must stay glued to the char before it (combining marks, joiners, variation selectors,
/// skin-tone modifiers).
fn is_glue(c: char) -> bool {
    matches!(c,
        '\u{200D}' | '\u{FE00}'..='\u{FE0F}' | '\u{0300}'..='\u{036F}' | '\u{1F3FB}'..='\u{1F3FF}'
        | '\u{20D0}'..='\u{20FF}' | '\u{E0020}'..='\u{E007F}')
}

/// Where to cut `window` (a prefix of the remaining text that fits): the byte index where the next chunk
/// starts. Prefers a paragraph break, then a line break, then a sentence end, then a space, none of them
/// closer to the start than a third of the window; last resort a hard cut that keeps grapheme pieces together.
pub fn find_cut(window: &str) -> usize {
    let min = window.len() / 3;
    let ok = |i: usize| i >= min && i > 0;
    if let Some(i) = window.rfind("\n\n").filter(|i| ok(*i)) {
        return i;
    }
    if let Some(i) = window.rfind('\n').filter(|i| ok(*i)) {
        return i;
    }
    let mut sentence = None;
    let mut prev: Option<(usize, char)> = None;
    for (i, c) in window.char_indices() {
        if let Some((pi, pc)) = prev {
            if matches!(pc, '.' | '!' | '?' | '…' | ';') && c.is_whitespace() {
                sentence = Some(i);
            }
            if matches!(pc, '。' | '！' | '？') {
                sentence = Some(pi + pc.len_utf8());
            }
        }
        prev = Some((i, c));
    }
    if let Some(i) = sentence.filter(|i| ok(*i)) {
        return i;
    }
    if let Some(i) = window.rfind(char::is_whitespace).filter(|i| ok(*i)) {
        return i;
    }
    // Hard cut; split_text moves it back out of grapheme sequences.
    window.len()
}

/// Splits a text into chunks of at most `max_units` UTF-16 units each, at paragraph, then sentence, then
/// word boundaries. The text is trimmed; whitespace at the cut points is dropped.
pub fn split_text(text: &str, max_units: usize) -> Vec<String> {
    let max_units = max_units.max(16);
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if utf16_len(rest) <= max_units {
            out.push(rest.to_string());
            break;
        }
        let end = prefix_end(rest, max_units);
        let mut cut = find_cut(&rest[..end]);
        // Never cut a glue char away from what precedes it (hard cuts only).
        while cut > 0
            && cut < rest.len()
            && (rest[cut..].chars().next().is_some_and(is_glue)
                || rest[..cut].chars().next_back() == Some('\u{200D}'))
        {
            cut = rest[..cut].char_indices().last().map(|(i, _)| i).unwrap_or(0);
        }
        if cut == 0 {
            cut = end.max(rest.chars().next().map(char::len_utf8).unwrap_or(1));
        }
        let chunk = rest[..cut].trim_end();
        if !chunk.is_empty() {
            out.push(chunk.to_string());
        }
        rest = rest[cut..].trim_start();
    }
    out
}

/// Splits an answer for delivery (conservative limit).
pub fn split_answer(text: &str) -> Vec<String> {
    split_text(text, SAFE_LIMIT)
}

/// What ends the last message of an answer cut at the message cap.
pub const CUT_NOTE: &str = "[The answer was too long for Telegram and was cut here.]";

/// Splits an answer into at most `max_messages` messages; a longer answer ends with [`CUT_NOTE`]
/// in its last message instead of flooding the chat (a 400 KB answer was 103 messages).
pub fn split_answer_capped(text: &str, max_messages: usize) -> Vec<String> {
    let max_messages = max_messages.max(1);
    // Only the part that can be shown is split: splitting a huge answer whole is wasted work.
    // A prefix of (cap + 1) full messages always splits into more than the cap.
    let text = text.trim();
    let shown = &text[..prefix_end(text, (max_messages + 1) * SAFE_LIMIT)];
    let mut chunks = split_answer(shown);
    if chunks.len() <= max_messages {
        return chunks;
    }
    chunks.truncate(max_messages);
    let note_units = utf16_len(CUT_NOTE) + 2;
    let last = chunks.pop().unwrap_or_default();
    let kept = split_text(&last, SAFE_LIMIT - note_units).into_iter().next().unwrap_or_default();
    chunks.push(format!("{kept}\n\n{CUT_NOTE}"));
    chunks
}

/// What a private-chat draft shows while the answer streams: the chunk being written now.
pub fn draft_preview(acc: &str) -> Option<String> {
    let t = acc.trim();
    if t.is_empty() {
        return None;
    }
    if utf16_len(t) <= SAFE_LIMIT {
        return Some(t.to_string());
    }
    split_text(t, SAFE_LIMIT).pop()
}

/// What the group message shows while the answer streams: the first chunk, with "…" when more is coming
/// beyond what one message holds.
pub fn group_preview(acc: &str) -> Option<String> {
    let t = acc.trim();
    if t.is_empty() {
        return None;
    }
    if utf16_len(t) <= SAFE_LIMIT {
        return Some(t.to_string());
    }
    let first = split_text(t, SAFE_LIMIT - 2).into_iter().next()?;
    Some(format!("{first} …"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(escape_html("a < b && c > d"), "a &lt; b &amp;&amp; c &gt; d");
        assert_eq!(escape_html("\"quotes\" 'stay'"), "\"quotes\" 'stay'");
        assert_eq!(escape_html("<b>не жирный</b>"), "&lt;b&gt;не жирный&lt;/b&gt;");
    }

    #[test]
    fn utf16_counts_surrogates() {
        assert_eq!(utf16_len("abc"), 3);
        assert_eq!(utf16_len("é"), 1);
        assert_eq!(utf16_len("😀"), 2);
    }

    #[test]
    fn a_long_answer_is_cut_at_the_message_cap_with_a_note() {
        let text = "A sentence that goes on. ".repeat(16_000); // 400 KB
        assert!(split_answer(&text).len() >= 100);
        let chunks = split_answer_capped(&text, 10);
        assert_eq!(chunks.len(), 10);
        assert!(chunks.iter().all(|c| utf16_len(c) <= SAFE_LIMIT));
        assert!(chunks[9].ends_with(CUT_NOTE));
        assert!(chunks[..9].iter().all(|c| !c.contains(CUT_NOTE)));
        // Within the cap nothing changes.
        let short = "word ".repeat(2000);
        assert_eq!(split_answer_capped(&short, 10), split_answer(&short));
        assert!(split_answer_capped(&text, 1)[0].ends_with(CUT_NOTE));
    }

    #[test]
    fn short_text_is_one_trimmed_chunk() {
        assert_eq!(split_text("  hello \n", 100), vec!["hello"]);
        assert!(split_text("   ", 100).is_empty());
    }

    #[test]
    fn splits_at_paragraphs_first() {
        let p1 = "a".repeat(60);
        let p2 = "b. ".repeat(20);
        let text = format!("{p1}\n\n{p2}");
        let chunks = split_text(&text, 100);
        assert_eq!(chunks[0], p1);
        assert_eq!(chunks[1], p2.trim());
    }

    #[test]
    fn splits_at_sentences_then_words() {
        let s = "This is one sentence. ".repeat(10); // 220 chars, no newlines
        let chunks = split_text(&s, 100);
        for c in &chunks {
            assert!(utf16_len(c) <= 100);
            assert!(c.ends_with('.'), "chunk should end at a sentence: {c:?}");
        }
        let words = "word ".repeat(50);
        let chunks = split_text(&words, 64);
        for c in &chunks {
            assert!(utf16_len(c) <= 64);
            assert!(c.split(' ').all(|w| w == "word"), "{c:?}");
        }
    }

    #[test]
    fn hard_cut_respects_surrogates_and_limit() {
        let s = "😀".repeat(100); // 200 units, no spaces
        let chunks = split_text(&s, 33);
        for c in &chunks {
            assert!(utf16_len(c) <= 33);
        }
        assert_eq!(chunks.concat(), s);
    }

    #[test]
    fn hard_cut_keeps_zwj_sequences() {
        let fam = "👨\u{200D}👩\u{200D}👧"; // 8 units
        let s = fam.repeat(20);
        let chunks = split_text(&s, 30);
        for c in &chunks {
            assert!(utf16_len(c) <= 30);
            assert!(!c.starts_with('\u{200D}') && !c.ends_with('\u{200D}'), "{c:?}");
        }
        assert_eq!(chunks.concat(), s);
    }

    #[test]
    fn long_answer_splits_under_telegram_limit_and_keeps_content() {
        let para = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. Sed do eiusmod tempor. ".repeat(12);
        let text = vec![para.trim(); 8].join("\n\n"); // ~7800 chars
        let chunks = split_answer(&text);
        assert!(chunks.len() >= 2);
        for c in &chunks {
            assert!(utf16_len(c) <= TELEGRAM_LIMIT);
        }
        let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(norm(&chunks.join(" ")), norm(&text));
    }

    #[test]
    fn previews() {
        assert_eq!(draft_preview("  "), None);
        assert_eq!(draft_preview(" hi "), Some("hi".into()));
        let long = "word ".repeat(2000);
        let d = draft_preview(&long).unwrap();
        assert!(utf16_len(&d) <= SAFE_LIMIT);
        let g = group_preview(&long).unwrap();
        assert!(utf16_len(&g) <= SAFE_LIMIT && g.ends_with('…'));
        assert!(g.starts_with("word word"));
    }
}
