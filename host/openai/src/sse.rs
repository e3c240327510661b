//! An incremental parser for `text/event-stream` (the WHATWG rules that matter for OpenAI):
//! fields `event` and `data`, multi-line data joined by `\n`, comments skipped, CRLF or LF.
//!
//! Input is untrusted: each byte is scanned once (a line split over many chunks is not rescanned
//! from its start), and a line or an event larger than the limits is an error instead of a buffer
//! that grows for as long as the server sends.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Why a stream was refused mid-way.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("a stream line exceeded {0} bytes")]
    LineTooLong(usize),
    #[error("a stream event exceeded {0} bytes")]
    EventTooLarge(usize),
}

/// Default bound on one line and on one event's data (the `response.completed` event of a long
/// answer carries the whole answer, so this is generous).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 << 20;

pub struct SseParser {
    /// The incomplete line: bytes after the last newline seen, already scanned.
    buffer: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    ready: std::collections::VecDeque<SseEvent>,
    max_line: usize,
    max_event: usize,
    #[cfg(test)]
    scanned: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A parser refusing a line or an event's data longer than `max_bytes`.
    pub fn with_limit(max_bytes: usize) -> Self {
        Self {
            buffer: Vec::new(),
            event: None,
            data: None,
            ready: Default::default(),
            max_line: max_bytes,
            max_event: max_bytes,
            #[cfg(test)]
            scanned: 0,
        }
    }

    /// Consumes a chunk; returns how many complete lines it ended (keep-alive comments count:
    /// they show the server is alive).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, SseError> {
        #[cfg(test)]
        {
            self.scanned += bytes.len();
        }
        let mut lines = 0;
        let mut rest = bytes;
        // Only the new bytes are searched for a newline; the buffered part of a line has no newline.
        // `memchr` compares a vector's width of bytes per step: a stream's bytes are mostly
        // JSON between newlines, and a byte-at-a-time search was a tenth of a streamed turn.
        while let Some(offset) = memchr::memchr(b'\n', rest) {
            let (head, tail) = (&rest[..offset], &rest[offset + 1..]);
            rest = tail;
            lines += 1;
            if self.buffer.is_empty() {
                self.check_line(head.len())?;
                self.complete_line(head)?;
            } else {
                self.check_line(self.buffer.len() + head.len())?;
                let mut line = std::mem::take(&mut self.buffer);
                line.extend_from_slice(head);
                self.complete_line(&line)?;
                // Keep the allocation for the next split line, but not a huge one.
                line.clear();
                if line.capacity() <= 64 << 10 {
                    self.buffer = line;
                }
            }
        }
        self.check_line(self.buffer.len() + rest.len())?;
        self.buffer.extend_from_slice(rest);
        Ok(lines)
    }

    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// At end of input: a last event not followed by a blank line still counts.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buffer.is_empty() {
            let rest = std::mem::take(&mut self.buffer);
            // The line fit the limit as it was fed; an oversized event was refused then too.
            let _ = self.complete_line(&rest);
        }
        self.dispatch();
        self.ready.pop_front()
    }

    fn check_line(&self, len: usize) -> Result<(), SseError> {
        if len > self.max_line {
            return Err(SseError::LineTooLong(self.max_line));
        }
        Ok(())
    }

    fn complete_line(&mut self, line: &[u8]) -> Result<(), SseError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Valid UTF-8 (every line a sane server sends) is checked by `from_utf8`, which takes
        // ASCII a word at a time; the lossy decoder walks every byte, and is kept for the rest.
        match std::str::from_utf8(line) {
            Ok(line) => self.line(line),
            Err(_) => self.line(&String::from_utf8_lossy(line)),
        }
    }

    fn line(&mut self, line: &str) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                let held = self.data.as_ref().map_or(0, |d| d.len() + 1);
                if held + value.len() > self.max_event {
                    self.data = None;
                    self.event = None;
                    return Err(SseError::EventTooLarge(self.max_event));
                }
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        let event = self.event.take();
        if let Some(data) = self.data.take() {
            self.ready.push_back(SseEvent { event, data });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &str, piece: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        let mut out = vec![];
        for chunk in input.as_bytes().chunks(piece) {
            parser.feed(chunk).unwrap();
            while let Some(e) = parser.next_event() {
                out.push(e);
            }
        }
        while let Some(e) = parser.finish() {
            out.push(e);
        }
        out
    }

    #[test]
    fn events_survive_any_chunking() {
        let input = "event: response.created\ndata: {\"a\":1}\n\n: keep-alive\n\r\ndata: line1\r\ndata: line2\r\n\r\nevent: x\ndata: last";
        let expected = vec![
            SseEvent { event: Some("response.created".into()), data: "{\"a\":1}".into() },
            SseEvent { event: None, data: "line1\nline2".into() },
            SseEvent { event: Some("x".into()), data: "last".into() },
        ];
        for piece in [1, 2, 3, 7, 1000] {
            assert_eq!(parse_in_pieces(input, piece), expected, "piece size {piece}");
        }
    }

    /// A server that sends bytes that are not UTF-8 gets them replaced, not a lost event, and
    /// the lines around them are read as sent.
    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        let mut parser = SseParser::default();
        parser.feed(b"event: delta\ndata: {\"delta\":\"a\xff\xfeb\"}\n\ndata: ok\n\n").unwrap();
        assert_eq!(parser.next_event(), Some(SseEvent { event: Some("delta".into()), data: "{\"delta\":\"a\u{fffd}\u{fffd}b\"}".into() }));
        assert_eq!(parser.next_event(), Some(SseEvent { event: None, data: "ok".into() }));
    }

    #[test]
    fn multibyte_text_split_across_chunks_is_kept() {
        let input = "data: {\"delta\":\"Привет 👋\"}\n\n";
        let events = parse_in_pieces(input, 1);
        assert_eq!(events[0].data, "{\"delta\":\"Привет 👋\"}");
    }

    #[test]
    fn a_line_split_over_many_chunks_is_scanned_once() {
        let mut parser = SseParser::default();
        let line = format!("data: {}\n\n", "x".repeat(200_000));
        for chunk in line.as_bytes().chunks(1) {
            parser.feed(chunk).unwrap();
        }
        assert_eq!(parser.scanned, line.len(), "every byte looked at once");
        assert_eq!(parser.next_event().unwrap().data.len(), 200_000);
    }

    #[test]
    fn a_line_or_an_event_beyond_the_limit_is_refused() {
        let mut parser = SseParser::with_limit(1000);
        let mut result = Ok(0);
        for _ in 0..100 {
            result = parser.feed(&[b'a'; 100]);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::LineTooLong(1000)));
        assert!(parser.buffer.len() <= 1000, "the buffer stayed bounded");

        // Many small data lines of one event add up.
        let mut parser = SseParser::with_limit(1000);
        let mut result = Ok(0);
        for _ in 0..100 {
            result = parser.feed(b"data: 0123456789012345678901234567890123456789\n");
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::EventTooLarge(1000)));

        // Right at the limit is fine.
        let mut parser = SseParser::with_limit(1000);
        let exact = format!("data: {}\n\n", "y".repeat(994));
        parser.feed(exact.as_bytes()).unwrap();
        assert_eq!(parser.next_event().unwrap().data.len(), 994);
    }
}
