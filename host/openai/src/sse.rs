//! An incremental parser for `text/event-stream` (the WHATWG rules that matter for OpenAI):
//! fields `event` and `data`, multi-line data joined by `\n`, comments skipped, CRLF or LF.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    ready: std::collections::VecDeque<SseEvent>,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
        // Consume every complete line, then drop them from the buffer in one move (draining
        // line by line would shift the rest of a large chunk once per line).
        let buffer = std::mem::take(&mut self.buffer);
        let mut start = 0;
        while let Some(offset) = buffer[start..].iter().position(|&b| b == b'\n') {
            let mut line = &buffer[start..start + offset];
            start += offset + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            self.line(&String::from_utf8_lossy(line));
        }
        self.buffer = buffer;
        self.buffer.drain(..start);
    }

    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// At end of input: a last event not followed by a blank line still counts.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buffer.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.buffer)).into_owned();
            self.line(rest.trim_end_matches('\r'));
        }
        self.dispatch();
        self.ready.pop_front()
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
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
            parser.feed(chunk);
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

    #[test]
    fn multibyte_text_split_across_chunks_is_kept() {
        let input = "data: {\"delta\":\"Привет 👋\"}\n\n";
        let events = parse_in_pieces(input, 1);
        assert_eq!(events[0].data, "{\"delta\":\"Привет 👋\"}");
    }
}
