//! The deterministic "model": answers only from the history it is given (see the crate docs for the rules).

/// One earlier message the model sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    pub role: String,
    pub text: String,
}

impl Msg {
    pub fn new(role: &str, text: &str) -> Msg {
        Msg { role: role.to_string(), text: text.to_string() }
    }
}

/// Answer `current` (the user's message) given the earlier messages of the same conversation/thread
/// and the instructions (which may carry knowledge-base lines `[n] (source) text`).
pub fn answer(history: &[Msg], current: &str, instructions: &str) -> String {
    let earlier_users: Vec<&str> = history.iter().filter(|m| m.role == "user").map(|m| m.text.as_str()).collect();
    // Knowledge-base lines inside the current message are context, not the question.
    let mut chunks = kb_chunks(instructions);
    let mut question_lines = Vec::new();
    for line in current.lines() {
        match parse_kb_line(line) {
            Some(c) => chunks.push(c),
            // The header a host puts above the chunks is not part of the question either.
            None if is_context_header(line) => {}
            None => question_lines.push(line),
        }
    }
    let question = question_lines.join("\n").trim().to_string();
    let lower = question.to_lowercase();

    if lower.starts_with("echo:") {
        return question["echo:".len()..].trim().to_string();
    }
    if let Some(rest) = lower.strip_prefix("long answer")
        && let Ok(n) = rest.trim().trim_end_matches(['.', '!', '?']).trim().parse::<usize>() {
            return long_answer(n.min(200_000));
        }
    if lower.contains("what is my name") {
        return match earlier_users.iter().rev().find_map(|t| name_in(t)) {
            Some(name) => format!("Your name is {name}."),
            None => "I don't know your name yet.".to_string(),
        };
    }
    if let Some(thing) = asked_thing(&question) {
        return match earlier_users.iter().rev().find_map(|t| my_facts_in(t).into_iter().rev().find(|(k, _)| *k == thing)) {
            Some((_, value)) => format!("Your {thing} is {value}."),
            None => format!("I don't know your {thing} yet."),
        };
    }
    if let Some(name) = name_in(&question) {
        return format!("Nice to meet you, {name}.");
    }
    if lower.contains("what did i ask you to remember") {
        let facts: Vec<String> = earlier_users.iter().filter_map(|t| fact_in(t)).collect();
        return if facts.is_empty() {
            "You have not asked me to remember anything.".to_string()
        } else {
            format!("You asked me to remember: {}.", facts.join("; "))
        };
    }
    if let Some(fact) = fact_in(&question) {
        return format!("OK, I will remember: {fact}.");
    }
    if let Some((thing, value)) = my_facts_in(&question).into_iter().next() {
        return format!("OK, your {thing} is {value}.");
    }
    if lower.trim_end_matches(['.', '!', '?']).trim() == "count" {
        let n = earlier_users.len();
        return format!("This conversation has {n} earlier user message{}.", if n == 1 { "" } else { "s" });
    }
    if let Some(c) = best_chunk(&chunks, &question) {
        return format!("According to my notes: {} (from {})", first_sentence(&c.text), c.source);
    }
    format!("You said: {question}")
}

/// A line that announces knowledge-base context, e.g. swapbot's
/// `Knowledge base context (use it when relevant):`.
pub fn is_context_header(line: &str) -> bool {
    let l = line.trim().to_lowercase();
    l.starts_with("knowledge base context") && l.ends_with(':')
}

/// `my name is X` anywhere in a message (case-insensitive) → X, up to punctuation or end of line.
pub fn name_in(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    if lower.contains("what is my name") {
        return None;
    }
    let pos = lower.find("my name is ")?;
    // byte offsets of `lower` and `text` agree for ASCII prefixes; fall back safely otherwise
    let start = pos + "my name is ".len();
    let rest = if lower.len() == text.len() && text.is_char_boundary(start) { &text[start..] } else { &lower[start..] };
    let end = rest.find(['.', ',', '!', '?', ';', '\n']).unwrap_or(rest.len());
    let name = rest[..end].trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Characters that end a stated value (a name, a fact's value, the thing asked about).
const VALUE_END: [char; 6] = ['.', ',', '!', '?', ';', '\n'];

/// Every `my <thing> is <value>` in a message, in order (case-insensitive): `<thing>` is 1 to 4 words of
/// letters, digits, `-` or `'` (lowercased) right after a standalone `my`; `<value>` runs to `.`, `,`, `!`,
/// `?`, `;`, the end of the line or ` and my ` (trimmed, case kept). A question (`what is my …`) states
/// nothing. `my name is X` is one of them (thing `name`).
pub fn my_facts_in(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if asked_thing(text).is_some() {
        return out;
    }
    let chars: Vec<char> = text.chars().collect();
    let lower: Vec<char> = chars.iter().map(|c| if c.is_uppercase() { c.to_lowercase().next().unwrap_or(*c) } else { *c }).collect();
    let n = chars.len();
    let mut i = 0;
    while i + 3 <= n {
        let boundary = i == 0 || !lower[i - 1].is_alphanumeric();
        if boundary && lower[i] == 'm' && lower[i + 1] == 'y' && lower[i + 2] == ' ' {
            let rest: String = lower[i + 3..].iter().collect();
            if let Some(pos) = rest.find(" is ") {
                let thing = rest[..pos].trim().to_string();
                let words: Vec<&str> = thing.split(' ').collect();
                let ok = !thing.is_empty()
                    && words.len() <= 4
                    && words.iter().all(|w| !w.is_empty() && w.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '\''));
                if ok {
                    let start = (i + 3 + rest[..pos].chars().count() + " is ".len()).min(n);
                    let value_chars: String = chars[start..].iter().collect();
                    let value_lower: String = lower[start..].iter().collect();
                    let mut end = value_chars.find(VALUE_END).unwrap_or(value_chars.len());
                    if let Some(a) = value_lower.find(" and my ")
                        && a < end
                        && value_chars.is_char_boundary(a) {
                            end = a;
                        }
                    let value = value_chars[..end].trim().to_string();
                    if !value.is_empty() {
                        out.push((thing, value));
                        i = start + value_chars[..end].chars().count();
                        continue;
                    }
                }
            }
        }
        i += 1;
    }
    out
}

/// The thing asked about in `what is my <thing>` / `what's my <thing>` (lowercased, up to punctuation, at
/// most 4 words).
pub fn asked_thing(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    let (pos, len) = ["what is my ", "what's my ", "what\u{2019}s my "]
        .iter()
        .filter_map(|p| lower.find(p).map(|i| (i, p.len())))
        .min()?;
    let rest = &lower[pos + len..];
    let end = rest.find(VALUE_END).unwrap_or(rest.len());
    let words: Vec<&str> = rest[..end].split_whitespace().collect();
    (!words.is_empty() && words.len() <= 4).then(|| words.join(" "))
}

/// `remember <fact>` at the start of a message → the fact (not the question about remembering).
pub fn fact_in(text: &str) -> Option<String> {
    let t = text.trim();
    let lower = t.to_lowercase();
    if !lower.starts_with("remember ") || lower.contains("what did i ask you to remember") {
        return None;
    }
    let fact = t["remember ".len()..].trim().trim_end_matches(['.', '!']).trim();
    (!fact.is_empty()).then(|| fact.to_string())
}

const WORDS: &[&str] = &[
    "the", "sandbox", "writes", "a", "long", "answer", "so", "that", "message", "splitting", "can", "be", "tested",
    "with", "care", "every", "sentence", "is", "deterministic", "and", "plain", "text", "paragraphs", "follow",
    "each", "other", "calmly",
];

/// A deterministic text of at least `n` and fewer than `n + 100` characters, in paragraphs of sentences.
pub fn long_answer(n: usize) -> String {
    let mut out = String::new();
    let mut k = 0usize;
    while out.len() < n {
        let len = 6 + (k * 7) % 9;
        let mut words: Vec<&str> = (0..len).map(|i| WORDS[(k * 5 + i * 3) % WORDS.len()]).collect();
        let first = words[0];
        let cap = format!("{}{}", first[..1].to_uppercase(), &first[1..]);
        words[0] = &cap;
        let sentence = format!("{} number {}.", words.join(" "), k + 1);
        if !out.is_empty() {
            out.push_str(if k.is_multiple_of(4) { "\n\n" } else { " " });
        }
        out.push_str(&sentence);
        k += 1;
    }
    out
}

/// A knowledge-base chunk parsed from a `[n] (source) text` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub n: u32,
    pub source: String,
    pub text: String,
}

pub fn parse_kb_line(line: &str) -> Option<Chunk> {
    let l = line.trim_start();
    let l = l.strip_prefix('[')?;
    let close = l.find(']')?;
    let n: u32 = l[..close].trim().parse().ok()?;
    let rest = l[close + 1..].trim_start();
    let rest = rest.strip_prefix('(')?;
    let end = rest.find(')')?;
    let source = rest[..end].trim().to_string();
    let text = rest[end + 1..].trim().to_string();
    (!text.is_empty()).then_some(Chunk { n, source, text })
}

pub fn kb_chunks(instructions: &str) -> Vec<Chunk> {
    instructions.lines().filter_map(parse_kb_line).collect()
}

const STOP: &[&str] = &[
    "the", "and", "what", "are", "how", "does", "for", "with", "you", "your", "this", "that", "about", "from", "tell",
    "can", "please", "which", "who", "when", "where", "why", "have", "has", "was", "were", "will", "would", "should",
    "could", "did", "not", "but", "all", "any", "our", "its", "into", "there", "their", "they", "them", "then", "than",
    "also", "some", "more", "most", "other", "such", "only", "own", "same", "too", "very", "just", "know", "want",
    "need", "like", "get", "got", "does", "doing", "done", "is", "it", "of", "to", "in", "on", "at", "by", "an", "be",
    "do", "me", "my", "we", "us", "or", "if", "so", "no", "yes", "hi", "hello", "said", "say", "use", "using",
];

/// Lowercase alphanumeric words of 3+ characters that are not stop words.
pub fn content_words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in text.to_lowercase().split(|c: char| !c.is_alphanumeric()) {
        if w.chars().count() >= 3 && !STOP.contains(&w) && !out.iter().any(|o| o == w) {
            out.push(w.to_string());
        }
    }
    out
}

fn best_chunk<'a>(chunks: &'a [Chunk], question: &str) -> Option<&'a Chunk> {
    let q = content_words(question);
    let mut best: Option<(&Chunk, usize)> = None;
    for c in chunks {
        let words = content_words(&c.text);
        let score = q.iter().filter(|w| words.contains(w)).count();
        if score > 0 && best.is_none_or(|(_, s)| score > s) {
            best = Some((c, score));
        }
    }
    best.map(|(c, _)| c)
}

/// Up to and including the first `.`, `!` or `?` followed by whitespace or the end.
pub fn first_sentence(text: &str) -> String {
    let t = text.trim();
    let chars: Vec<(usize, char)> = t.char_indices().collect();
    for (i, (pos, c)) in chars.iter().enumerate() {
        if matches!(c, '.' | '!' | '?') && chars.get(i + 1).is_none_or(|(_, n)| n.is_whitespace()) {
            return t[..pos + c.len_utf8()].to_string();
        }
    }
    t.to_string()
}

/// Split into stream tokens: each word with its leading whitespace. Concatenation gives `text` back.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut prev_ws = true;
    for c in text.chars() {
        let ws = c.is_whitespace();
        if ws && !prev_ws && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
        prev_ws = ws;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A rough token count for usage: whitespace-separated words, at least 1 for non-empty text.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let h = vec![Msg::new("user", "Hi! My name is Alice."), Msg::new("assistant", "Nice to meet you, Alice.")];
        assert_eq!(answer(&h, "What is my name?", ""), "Your name is Alice.");
        assert_eq!(answer(&[], "what is my name?", ""), "I don't know your name yet.");
        assert_eq!(answer(&[], "my name is Bob", ""), "Nice to meet you, Bob.");
    }

    #[test]
    fn remember_and_count() {
        let h = vec![Msg::new("user", "remember the cat is black."), Msg::new("user", "Remember milk")];
        assert_eq!(answer(&h, "What did I ask you to remember?", ""), "You asked me to remember: the cat is black; milk.");
        assert_eq!(answer(&[], "What did I ask you to remember?", ""), "You have not asked me to remember anything.");
        assert_eq!(answer(&[], "remember the code 42.", ""), "OK, I will remember: the code 42.");
        assert_eq!(answer(&h, "count", ""), "This conversation has 2 earlier user messages.");
        assert_eq!(answer(&[], "Count", ""), "This conversation has 0 earlier user messages.");
    }

    #[test]
    fn stated_facts() {
        let h = vec![Msg::new("user", "Hi. My secret is Blue Fox."), Msg::new("user", "my favourite colour is green, ok?")];
        assert_eq!(answer(&h, "What is my secret?", ""), "Your secret is Blue Fox.");
        assert_eq!(answer(&h, "what's my favourite colour", ""), "Your favourite colour is green.");
        assert_eq!(answer(&h, "What is my dog?", ""), "I don't know your dog yet.");
        assert_eq!(answer(&[], "My secret is 42.", ""), "OK, your secret is 42.");
        assert_eq!(answer(&[], "my name is Bob", ""), "Nice to meet you, Bob.");
        let h2 = vec![Msg::new("user", "my secret is A"), Msg::new("user", "my secret is B")];
        assert_eq!(answer(&h2, "what is my secret?", ""), "Your secret is B.");
        assert!(my_facts_in("the army is here").is_empty());
        assert!(my_facts_in("what is my secret").is_empty());
        assert_eq!(my_facts_in("my name is Al and my dog is Rex"), vec![("name".into(), "Al".into()), ("dog".into(), "Rex".into())]);
    }

    #[test]
    fn echo_long_default() {
        assert_eq!(answer(&[], "echo:  Hello World ", ""), "Hello World");
        assert_eq!(answer(&[], "hello there", ""), "You said: hello there");
        for n in [1, 50, 1000, 5000] {
            let a = answer(&[], &format!("long answer {n}"), "");
            assert!(a.len() >= n && a.len() < n + 100, "{n}: {}", a.len());
        }
        let a = long_answer(3000);
        assert!(a.contains("\n\n") && a.matches(". ").count() > 5);
        assert_eq!(a, long_answer(3000));
    }

    #[test]
    fn knowledge_base() {
        let instr = "Answer from the context.\n[1] (handbook.md) The office opens at nine. It closes at five.\n[2] (pets.md) Dogs are allowed on Fridays.";
        assert_eq!(
            answer(&[], "When does the office open?", instr),
            "According to my notes: The office opens at nine. (from handbook.md)"
        );
        assert_eq!(answer(&[], "Are dogs allowed?", instr), "According to my notes: Dogs are allowed on Fridays. (from pets.md)");
        assert_eq!(answer(&[], "Tell me a joke", instr), "You said: Tell me a joke");
        let inline = "[1] (faq.txt) Refunds take ten days.\nHow long do refunds take?";
        assert_eq!(answer(&[], inline, ""), "According to my notes: Refunds take ten days. (from faq.txt)");
        // Context after the question, under a header (swapbot's input layout): neither is the question.
        let after = "Tell me a joke\n\nKnowledge base context (use it when relevant):\n[1] (faq.txt) Refunds take ten days.";
        assert_eq!(answer(&[], after, ""), "You said: Tell me a joke");
    }

    #[test]
    fn tokenizer_roundtrip() {
        let t = "Hi there!  How are\n\nyou?";
        let toks = tokens(t);
        assert_eq!(toks.concat(), t);
        assert_eq!(toks[0], "Hi");
        assert_eq!(toks[1], " there!");
    }
}
