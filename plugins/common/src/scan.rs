//! Reading a few string members of a JSON object (at its top level, or one object down) in one
//! pass, without a parser.
//!
//! A streamed answer is mostly small events of one kind (a text delta: eight members, one of them
//! read). In a wasm guest, `serde_json` spends most of such an event matching and skipping the
//! members nobody reads, through a chain of calls the JIT cannot inline across; a streamed turn's
//! guest time was mostly that. [`top_level_strs`] walks the object once instead.
//!
//! It is exact or it declines: whenever it answers, a full parse of the same text into a `Value`
//! succeeds and gives the same strings; whenever it cannot be sure (a member read is not a string
//! or appears twice, a key has an escape, a number might not fit a float, the text is not JSON),
//! it answers `None` and the caller parses in full, which also reports what is wrong. So the fast
//! path changes no outcome.

use std::borrow::Cow;

/// How deep a skipped value may nest before the scan declines (`serde_json` stops at 128).
const MAX_DEPTH: usize = 64;

/// The string values of the top-level members `keys` of the JSON object `json` (`None` in a slot
/// for a key the object does not have), or `None` when the fast path declines (see the module).
pub fn top_level_strs<'a, const N: usize>(json: &'a str, keys: [&str; N]) -> Option<[Option<Cow<'a, str>>; N]> {
    let mut s = Scanner { b: json.as_bytes(), i: 0 };
    s.ws();
    let found = s.object_strs(json, keys, |_, s| s.skip_value(0))?;
    s.ws();
    // Trailing bytes make the whole text invalid.
    (s.i == s.b.len()).then_some(found)
}

/// Strings at two levels: the top-level members `keys`, and the members `inner` of the object
/// that is the top-level member `nested` (`None` for the whole group when there is no such
/// member). A stream's `response.created` is such an event: its type at the top, the one field
/// read (the response's id) in a response object that echoes the whole request, which a parse
/// into types still walks member by member. It declines as [`top_level_strs`] does, and also
/// when `nested` is not an object or appears twice.
#[allow(clippy::type_complexity)]
pub fn nested_strs<'a, const N: usize, const M: usize>(
    json: &'a str,
    keys: [&str; N],
    nested: &str,
    inner: [&str; M],
) -> Option<([Option<Cow<'a, str>>; N], Option<[Option<Cow<'a, str>>; M]>)> {
    let mut s = Scanner { b: json.as_bytes(), i: 0 };
    let mut found_inner = None;
    s.ws();
    let found = s.object_strs(json, keys, |key, s| {
        if key != nested.as_bytes() {
            return s.skip_value(0);
        }
        if found_inner.is_some() || s.peek() != Some(b'{') {
            return None;
        }
        found_inner = Some(s.object_strs(json, inner, |_, s| s.skip_value(1))?);
        Some(())
    })?;
    s.ws();
    (s.i == s.b.len()).then_some((found, found_inner))
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    /// An object (at its opening brace): the string values of the members `keys`, every other
    /// member handed to `other` (by its raw key) to read or skip. A repeated member read
    /// declines: `serde_json` refuses a struct's duplicate field.
    fn object_strs<const N: usize>(
        &mut self,
        json: &'a str,
        keys: [&str; N],
        mut other: impl FnMut(&[u8], &mut Self) -> Option<()>,
    ) -> Option<[Option<Cow<'a, str>>; N]> {
        let mut found: [Option<Cow<'a, str>>; N] = std::array::from_fn(|_| None);
        self.eat(b'{')?;
        self.sequence(b'}', |s| {
            let key = s.raw_key()?;
            s.ws();
            s.eat(b':')?;
            s.ws();
            match keys.iter().position(|k| k.as_bytes() == key) {
                Some(slot) if found[slot].is_some() => None,
                Some(slot) => {
                    found[slot] = Some(s.string(json)?);
                    Some(())
                }
                None => other(key, s),
            }
        })?;
        Some(found)
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    #[inline(always)]
    fn eat(&mut self, byte: u8) -> Option<()> {
        self.eat_if(byte).then_some(())
    }

    #[inline(always)]
    fn eat_if(&mut self, byte: u8) -> bool {
        let hit = self.peek() == Some(byte);
        self.i += hit as usize;
        hit
    }

    /// A member's key as written; one with an escape declines (it might unescape to a key read).
    #[inline(always)]
    fn raw_key(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        self.i = start + find_special(&self.b[start..]);
        let key = &self.b[start..self.i];
        self.eat(b'"')?;
        Some(key)
    }

    /// A string value, unescaped (borrowed when it has no escape).
    fn string(&mut self, json: &'a str) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.i;
        self.i = start + find_special(&self.b[start..]);
        if self.eat_if(b'"') {
            // Cut at ASCII quotes of a `str`: on character boundaries.
            return Some(Cow::Borrowed(&json[start..self.i - 1]));
        }
        let mut out = String::from(&json[start..self.i]);
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => out.push(self.escape()?),
                // A raw control character is invalid inside a string.
                _ => {
                    let run = find_special(&self.b[self.i..]);
                    if run == 0 {
                        return None;
                    }
                    out.push_str(&json[self.i..self.i + run]);
                    self.i += run;
                }
            }
        }
    }

    /// The character an escape (at its backslash) stands for; an unknown one declines.
    fn escape(&mut self) -> Option<char> {
        self.i += 1;
        let c = match self.peek()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                self.i += 1;
                return self.unicode_escape();
            }
            _ => return None,
        };
        self.i += 1;
        Some(c)
    }

    /// The code point of `\uXXXX` (after the `u`), joining a surrogate pair; a lone surrogate
    /// declines, as `serde_json` refuses it in a string it returns.
    fn unicode_escape(&mut self) -> Option<char> {
        let first = self.hex4()?;
        match first {
            0xD800..=0xDBFF => {
                self.eat(b'\\')?;
                self.eat(b'u')?;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return None;
                }
                char::from_u32(0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00))
            }
            0xDC00..=0xDFFF => None,
            _ => char::from_u32(first),
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut v = 0;
        for &d in digits {
            v = v * 16 + (d as char).to_digit(16)?;
        }
        self.i += 4;
        Some(v)
    }

    /// Skips a string, checking its escapes as a full parse into a `Value` does (a lone
    /// surrogate declines here too, where a parse into a struct would skip it): the plugins
    /// parse an event into a `Value` when it does not fit their struct.
    #[inline(always)]
    fn skip_string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            self.i += find_special(&self.b[self.i..]);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => {
                    self.escape()?;
                }
                _ => return None,
            }
        }
    }

    /// The rest of an object or array after its opening byte: `item`s separated by commas, then
    /// `close` (an empty one too; a trailing comma declines).
    #[inline(always)]
    fn sequence(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.ws();
        if self.eat_if(close) {
            return Some(());
        }
        loop {
            item(self)?;
            self.ws();
            if !self.eat_if(b',') {
                return self.eat(close);
            }
            self.ws();
        }
    }

    fn skip_value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' | b'[' if depth >= MAX_DEPTH => None,
            b'{' => {
                self.i += 1;
                self.sequence(b'}', |s| {
                    s.skip_string()?;
                    s.ws();
                    s.eat(b':')?;
                    s.ws();
                    s.skip_value(depth + 1)
                })
            }
            b'[' => {
                self.i += 1;
                self.sequence(b']', |s| s.skip_value(depth + 1))
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// JSON's number grammar, `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, and a
    /// magnitude a float holds: `serde_json` refuses a number that would be infinite (`1e400`), so
    /// one that might be (more than 308 digits before the point, counting the exponent) declines.
    fn number(&mut self) -> Option<()> {
        self.eat_if(b'-');
        let int_digits = match self.peek()? {
            b'0' => {
                self.i += 1;
                1
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        };
        if self.eat_if(b'.') {
            self.at_least_one_digit()?;
        }
        let mut exponent: i64 = 0;
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            let negative = self.peek() == Some(b'-');
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            let start = self.i;
            self.at_least_one_digit()?;
            for &d in &self.b[start..self.i] {
                exponent = exponent.saturating_mul(10).saturating_add(i64::from(d - b'0'));
            }
            if negative {
                exponent = -exponent;
            }
        }
        (exponent.saturating_add(int_digits as i64) <= 308).then_some(())
    }

    /// Skips a run of digits; how many.
    #[inline(always)]
    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn at_least_one_digit(&mut self) -> Option<()> {
        (self.digits() > 0).then_some(())
    }
}

/// The length of the run of `b` before its first `"`, `\` or control character (or all of it),
/// eight bytes at a time: wasm has 64-bit integers, and the JIT checks for an interrupt once per
/// loop turn, so a byte-at-a-time loop costs several times more.
#[inline(always)]
fn find_special(b: &[u8]) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap());
        let quote = x ^ (ONES * b'"' as u64);
        let backslash = x ^ (ONES * b'\\' as u64);
        // A byte is flagged when it is zero after the xor (a match) or below 0x20.
        let hits = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (x.wrapping_sub(ONES * 0x20) & !x);
        let hits = hits & HIGH;
        if hits != 0 {
            return i + hits.trailing_zeros() as usize / 8;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const DELTA: &str = r#"{"type":"response.output_text.delta","sequence_number":4,"content_index":0,"delta":"You","item_id":"msg_a7f7","logprobs":[],"obfuscation":"abcdefghijklm","output_index":0}"#;

    /// What a full parse says the scan must answer: the members' strings, or a decline where
    /// the text is not JSON, a member read is not a string, or a key repeats.
    fn by_serde(json: &str, keys: [&str; 2]) -> Option<[Option<String>; 2]> {
        let v: Value = serde_json::from_str(json).ok()?;
        let obj = v.as_object()?;
        let mut out: [Option<String>; 2] = [None, None];
        for (slot, key) in keys.iter().enumerate() {
            match obj.get(*key) {
                None => {}
                Some(Value::String(s)) => out[slot] = Some(s.clone()),
                Some(_) => return None,
            }
        }
        Some(out)
    }

    fn scanned(json: &str, keys: [&str; 2]) -> Option<[Option<String>; 2]> {
        top_level_strs(json, keys).map(|found| found.map(|s| s.map(Cow::into_owned)))
    }

    /// Whenever the scan answers, a full parse of the same text agrees with it.
    fn assert_agrees(json: &str) {
        let keys = ["type", "delta"];
        if let Some(got) = scanned(json, keys) {
            assert_eq!(Some(got), by_serde(json, keys), "the scan answered where a full parse disagrees: {json:?}");
        }
    }

    #[test]
    fn a_text_delta_is_read_borrowed() {
        let [ty, delta] = top_level_strs(DELTA, ["type", "delta"]).unwrap();
        assert_eq!(ty.as_deref(), Some("response.output_text.delta"));
        assert!(matches!(delta, Some(Cow::Borrowed("You"))));
    }

    #[test]
    fn escapes_in_a_string_read_are_unescaped_as_a_full_parse_does() {
        for json in [
            r#"{"delta":"line one\nline \"two\"\t\\ \/ \b\f\r"}"#,
            r#"{"delta":"caf\u00e9 \u041b\u0435 \ud83d\ude00 end"}"#,
            r#"{"delta":"\u0000"}"#,
            r#"{"delta":"ünïcödé raw, then \u00e9"}"#,
        ] {
            let [_, delta] = scanned(json, ["type", "delta"]).unwrap_or_else(|| panic!("declined {json}"));
            assert_eq!(delta, by_serde(json, ["type", "delta"]).unwrap()[1], "{json}");
        }
    }

    #[test]
    fn members_of_every_kind_are_skipped() {
        let json = r#" { "a" : -0.5e+10 , "b":[1,[2,{"c":null}],{}], "type" : "t", "d":{"e":[true,false,"x\"y\u12ab"]}, "f":0, "g":12.25E-3, "h":[] , "delta":"" } "#;
        let [ty, delta] = scanned(json, ["type", "delta"]).unwrap();
        assert_eq!((ty.as_deref(), delta.as_deref()), (Some("t"), Some("")));
        assert_agrees(json);
        assert_eq!(scanned("{}", ["type", "delta"]), Some([None, None]));
    }

    #[test]
    fn what_a_full_parse_refuses_or_reads_otherwise_is_declined() {
        for json in [
            r#"{"type":"t","delta":5}"#,          // a member read is not a string
            r#"{"type":"t","delta":"a","delta":"b"}"#, // a repeated member
            r#"{"delt\u0061":"x"}"#,              // a key that unescapes to one read
            r#"{"type":"t"} x"#,                  // trailing bytes
            r#"{"type":"t",}"#,                   // a trailing comma
            r#"{"n":01}"#,                        // a leading zero
            r#"{"n":1.}"#,
            r#"{"n":-}"#,
            r#"{"n":1e}"#,
            r#"{"n":tru}"#,
            r#"{"n":1e400}"#,                     // infinite as a float: a full parse refuses it
            r#"{"n":-0.5e310}"#,
            r#"{"n":1e99999999999999999999999}"#,
            r#"{"n":nul}"#,
            r#"{"n":"a\qb"}"#,                    // an unknown escape
            r#"{"n":"\u12g4"}"#,
            "{\"delta\":\"a\u{1}b\"}",            // a raw control character
            r#"{"delta":"\ud83d"}"#,              // a lone surrogate in a string read
            r#"{"delta":"\udc00"}"#,
            r#"{"delta":"unterminated}"#,
            r#"["type","delta"]"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":{"b" 1}}"#,
            "",
        ] {
            assert_eq!(scanned(json, ["type", "delta"]), None, "should decline {json:?}");
        }
        let huge = format!(r#"{{"n":{}}}"#, "9".repeat(400));
        assert_eq!(scanned(&huge, ["type", "delta"]), None);
        // In range, large and small magnitudes are read (a full parse reads them too).
        for json in [r#"{"n":1e300,"delta":"a"}"#, r#"{"n":-2.5E-400,"delta":"a"}"#, r#"{"n":123456789012345678901234567890,"delta":"a"}"#] {
            assert!(scanned(json, ["type", "delta"]).is_some(), "{json}");
            assert_agrees(json);
        }
        let deep = format!(r#"{{"a":{}{}}}"#, "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(scanned(&deep, ["type", "delta"]), None);
        // A lone surrogate declines in a skipped string too (a parse into a `Value` refuses it);
        // a pair is read.
        assert_eq!(scanned(r#"{"x":"\ud83d","delta":"ok"}"#, ["type", "delta"]), None);
        assert_eq!(scanned(r#"{"x":"\ud83d\ude00","delta":"ok"}"#, ["type", "delta"]), Some([None, Some("ok".into())]));
    }

    /// Every text made from a delta event by cutting it, or by putting one byte at one place,
    /// is either declined or read as a full parse reads it.
    #[test]
    fn a_mangled_event_is_declined_or_read_exactly() {
        let bytes = DELTA.as_bytes();
        let replacements = b"\"\\{}[],:0 -.eE+tfnu\x01a";
        let mut answered = 0;
        for at in 0..=bytes.len() {
            let mut cut = bytes[..at].to_vec();
            cut.extend_from_slice(b"}");
            for text in [String::from_utf8(cut).unwrap(), String::from_utf8_lossy(&bytes[..at]).into_owned()] {
                assert_agrees(&text);
            }
            for &r in replacements {
                for mangled in [
                    [&bytes[..at], &[r], bytes.get(at + 1..).unwrap_or(&[])].concat(),
                    [&bytes[..at], &[r], &bytes[at..]].concat(),
                ] {
                    let text = String::from_utf8(mangled).unwrap();
                    answered += scanned(&text, ["type", "delta"]).is_some() as usize;
                    assert_agrees(&text);
                }
            }
        }
        // Not a vacuous check: many of the mangled texts are still valid and read.
        assert!(answered > 100, "only {answered} mangled texts read");
    }

    const CREATED: &str = r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_9c1","object":"response","created_at":1741290958,"status":"in_progress","error":null,"instructions":"Answer from the context.\n\u00abctx\u00bb","max_output_tokens":null,"model":"gpt-4.1","output":[],"parallel_tool_calls":true,"temperature":1.0,"tools":[{"type":"file_search","ranking":{"score":0.5}}],"top_p":1.0,"usage":null,"metadata":{}}}"#;

    type Nested = ([Option<String>; 1], Option<[Option<String>; 1]>);

    /// What a full parse says [`nested_strs`] must answer for `type` and `response.id`.
    fn nested_by_serde(json: &str) -> Option<Nested> {
        let v: Value = serde_json::from_str(json).ok()?;
        let str_at = |obj: &serde_json::Map<String, Value>, key: &str| match obj.get(key) {
            None => Some(None),
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(_) => None,
        };
        let obj = v.as_object()?;
        let inner = match obj.get("response") {
            None => None,
            Some(Value::Object(r)) => Some([str_at(r, "id")?]),
            Some(_) => return None,
        };
        Some(([str_at(obj, "type")?], inner))
    }

    fn nested_scanned(json: &str) -> Option<Nested> {
        let owned = |found: [Option<Cow<str>>; 1]| found.map(|s| s.map(Cow::into_owned));
        nested_strs(json, ["type"], "response", ["id"]).map(|(top, inner)| (owned(top), inner.map(owned)))
    }

    #[test]
    fn a_created_event_gives_its_type_and_the_response_id() {
        let (top, inner) = nested_strs(CREATED, ["type"], "response", ["id"]).unwrap();
        assert_eq!(top[0].as_deref(), Some("response.created"));
        assert!(matches!(&inner.unwrap()[0], Some(Cow::Borrowed("resp_9c1"))));
        assert_eq!(nested_scanned(CREATED), nested_by_serde(CREATED));
        // No response member: no group; an empty one: a group without the id.
        assert_eq!(nested_scanned(r#"{"type":"t"}"#), Some(([Some("t".into())], None)));
        assert_eq!(nested_scanned(r#"{"response":{}}"#), Some(([None], Some([None]))));
        // A member named like an inner one, at the top level, is not read as it.
        assert_eq!(nested_scanned(r#"{"id":"x","response":{"n":{"id":"y"}}}"#), Some(([None], Some([None]))));
    }

    #[test]
    fn a_nested_member_a_full_parse_reads_otherwise_is_declined() {
        for json in [
            r#"{"response":null}"#,                          // not an object
            r#"{"response":"resp_1"}"#,
            r#"{"response":["id","resp_1"]}"#,
            r#"{"response":{"id":1}}"#,                      // the id is not a string
            r#"{"response":{"id":"a","id":"b"}}"#,           // a repeated inner member
            r#"{"response":{"id":"a"},"response":{"id":"a"}}"#, // a repeated nested member
            r#"{"response":{"i\u0064":"a"}}"#,          // an escaped inner key
            r#"{"response":{"id":"a"}"#,                     // unterminated
            r#"{"response":{"id":"a"}} {}"#,
        ] {
            assert_eq!(nested_scanned(json), None, "should decline {json:?}");
        }
        let deep = format!(r#"{{"response":{{"a":{}{}}}}}"#, "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(nested_scanned(&deep), None);
    }

    /// As for a delta: every cut or one-byte change of a created event is declined or read
    /// exactly as a full parse reads it.
    #[test]
    fn a_mangled_created_event_is_declined_or_read_exactly() {
        let bytes = CREATED.as_bytes();
        let replacements = b"\"\\{}[],:0 -.eE+tfnu\x01a";
        let mut answered = 0;
        for at in 0..=bytes.len() {
            for &r in replacements {
                for mangled in [
                    [&bytes[..at], &[r], bytes.get(at + 1..).unwrap_or(&[])].concat(),
                    [&bytes[..at], &[r], &bytes[at..]].concat(),
                    [&bytes[..at], b"}}"].concat(),
                ] {
                    let text = String::from_utf8(mangled).unwrap();
                    if let Some(got) = nested_scanned(&text) {
                        answered += 1;
                        assert_eq!(Some(got), nested_by_serde(&text), "the scan answered where a full parse disagrees: {text:?}");
                    }
                }
            }
        }
        assert!(answered > 100, "only {answered} mangled texts read");
    }

    #[test]
    fn the_fast_search_finds_the_first_special_byte_at_every_offset() {
        for len in 0..20 {
            for at in 0..=len {
                for special in [b'"', b'\\', 0x00, 0x1f] {
                    let mut b = vec![b'a'; len];
                    if at < len {
                        b[at] = special;
                    }
                    assert_eq!(find_special(&b), at, "len {len}, special {special:#x} at {at}");
                }
            }
        }
        // Bytes at and above 0x20 (0x7f, UTF-8's high bytes) are not special.
        assert_eq!(find_special("\u{7f}é€ x".as_bytes()), "\u{7f}é€ x".len());
    }
}
