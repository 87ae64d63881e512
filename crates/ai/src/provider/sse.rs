//! An incremental parser for server-sent events (the `text/event-stream` format both providers
//! stream in): bytes go in as they arrive, complete events come out.
//!
//! It follows the WHATWG rules that matter for model APIs: lines end in `\n`, `\r\n` or `\r`;
//! several `data:` lines join with `\n`; one space after the colon is dropped; lines starting
//! with `:` are comments; a blank line ends an event, and an event without data is dropped.
//! `id:` and `retry:` are ignored (Keel never reconnects a stream). The caller bounds the total
//! size of a stream; a line is only ever as long as the bytes pushed so far.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; `None` means the default type, `message`.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes after the last complete line.
    pending: Vec<u8>,
    /// The last byte consumed was a `\r`: a `\n` at the start of the next push belongs to it.
    after_carriage_return: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Feeds `bytes` and returns the events they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        let mut input = bytes;
        if self.after_carriage_return {
            self.after_carriage_return = false;
            if let Some(rest) = input.strip_prefix(b"\n") {
                input = rest;
            }
        }
        let mut line_start = 0;
        let mut index = 0;
        while index < input.len() {
            let byte = input[index];
            if byte == b'\n' || byte == b'\r' {
                self.pending.extend_from_slice(&input[line_start..index]);
                let line = std::mem::take(&mut self.pending);
                if let Some(event) = self.line(&line) {
                    events.push(event);
                }
                index += 1;
                if byte == b'\r' {
                    match input.get(index) {
                        Some(b'\n') => index += 1,
                        Some(_) => {}
                        None => self.after_carriage_return = true,
                    }
                }
                line_start = index;
            } else {
                index += 1;
            }
        }
        self.pending.extend_from_slice(&input[line_start..]);
        events
    }

    /// Processes one complete line; a blank line dispatches the event gathered so far.
    fn line(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            let event = self.event.take();
            let data = std::mem::take(&mut self.data);
            let has_data = std::mem::replace(&mut self.has_data, false);
            return has_data.then_some(Event { event, data });
        }
        if line.starts_with(b":") {
            return None;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: Option<&str>, data: &str) -> Event {
        Event {
            event: name.map(str::to_string),
            data: data.to_string(),
        }
    }

    /// Parses `input` pushed in pieces of `piece` bytes, so every split point gets exercised.
    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<Event> {
        let mut parser = Parser::new();
        input
            .chunks(piece)
            .flat_map(|chunk| parser.push(chunk))
            .collect()
    }

    fn check(input: &str, expected: &[Event]) {
        for piece in 1..=input.len().max(1) {
            assert_eq!(
                parse_in_pieces(input.as_bytes(), piece),
                expected,
                "input {input:?} in pieces of {piece}"
            );
        }
    }

    #[test]
    fn events_are_parsed_whatever_the_chunking() {
        check("data: hello\n\n", &[event(None, "hello")]);
        check("data:hello\r\n\r\n", &[event(None, "hello")]);
        check("data: a\rdata: b\r\r", &[event(None, "a\nb")]);
        check(
            "event: message_start\ndata: {\"a\":1}\n\nevent: ping\ndata: {}\n\n",
            &[
                event(Some("message_start"), "{\"a\":1}"),
                event(Some("ping"), "{}"),
            ],
        );
        check("data: one\ndata:  two\n\n", &[event(None, "one\n two")]);
        check(": keep-alive\n\ndata: x\n\n", &[event(None, "x")]);
        check("event: empty\n\n", &[]);
        check("data\n\n", &[event(None, "")]);
        check("id: 7\nretry: 10\ndata: y\n\n", &[event(None, "y")]);
        check("data: [DONE]\n\n", &[event(None, "[DONE]")]);
        check("data: héllo ✓\n\n", &[event(None, "héllo ✓")]);
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        let mut parser = Parser::new();
        assert!(parser.push(b"data: partial").is_empty());
        assert!(parser.push(b"\n").is_empty());
        assert_eq!(parser.push(b"\n"), vec![event(None, "partial")]);
    }

    #[test]
    fn a_carriage_return_at_a_chunk_edge_ends_one_line() {
        let mut parser = Parser::new();
        assert!(parser.push(b"data: a\r").is_empty());
        assert!(
            parser.push(b"\n").is_empty(),
            "\\r\\n split across pushes is one line end"
        );
        assert_eq!(parser.push(b"\r\n"), vec![event(None, "a")]);
    }
}
