//! Assembles complete commands from the byte stream: lines, literals and
//! continuation requests, within the configured bounds.

use super::parser::trailing_literal;

/// Bounds the framer enforces (from `ImapConfig`).
#[derive(Debug, Clone, Copy)]
pub struct FramerLimits {
    /// Longest line (and total of non-literal bytes in one command).
    pub max_line: usize,
    /// Largest literal total in a command other than APPEND.
    pub max_literal: u64,
    /// Largest literal total in an APPEND (APPENDLIMIT).
    pub append_limit: u64,
}

/// What the framer found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameEvent {
    /// A complete command: its lines with literals inline, ending in CRLF.
    /// Feed it to [`parse_command`](super::parse_command).
    Command(Vec<u8>),
    /// The client announced a synchronizing literal: send a continuation
    /// request (`+ ...`) so that it sends the data (RFC 9051 §7.5).
    NeedContinuation,
    /// A line exceeded `max_line`; it was discarded up to its end. Reply
    /// BAD with the tag if one was seen.
    LineTooLong {
        /// The tag at the start of the line, if any.
        tag: Option<String>,
    },
    /// A literal above the limit was announced. For a synchronizing literal
    /// the client waits for our reply, so the command is dropped and the
    /// session continues (`fatal` false). A non-synchronizing one is
    /// already on its way: the connection must be closed (`fatal` true),
    /// RFC 7888 §4.
    LiteralTooLarge {
        /// The command's tag, if it could be read.
        tag: Option<String>,
        /// True for APPEND (reply `NO [TOOBIG]`, RFC 7889).
        append: bool,
        /// The connection must be closed.
        fatal: bool,
    },
}

#[derive(Debug)]
enum State {
    /// Reading a line of the command.
    Line,
    /// Reading literal data.
    Literal { remaining: u64 },
    /// Discarding a too-long line up to its LF.
    Skipping { tag: Option<String> },
}

/// The incremental command framer. Push bytes with [`Framer::push`], then
/// call [`Framer::next_event`] until it returns `None`.
#[derive(Debug)]
pub struct Framer {
    limits: FramerLimits,
    input: Vec<u8>,
    command: Vec<u8>,
    line_bytes: usize,
    literal_bytes: u64,
    state: State,
}

fn tag_of(line: &[u8]) -> Option<String> {
    let end = line
        .iter()
        .position(|b| *b == b' ' || *b == b'\r' || *b == b'\n')
        .unwrap_or(line.len());
    let tag = &line[..end];
    if tag.is_empty() || tag.len() > 64 {
        return None;
    }
    Some(String::from_utf8_lossy(tag).into_owned())
}

fn is_append(command: &[u8]) -> bool {
    let mut words = command.splitn(3, |b| *b == b' ');
    words.next();
    matches!(words.next(), Some(w) if w.eq_ignore_ascii_case(b"APPEND"))
}

impl Framer {
    /// A framer with the given bounds.
    pub fn new(limits: FramerLimits) -> Framer {
        Framer {
            limits,
            input: Vec::new(),
            command: Vec::new(),
            line_bytes: 0,
            literal_bytes: 0,
            state: State::Line,
        }
    }

    /// Releases buffer memory beyond what is buffered now (a session in
    /// IDLE may wait for hours).
    pub fn shrink(&mut self) {
        self.input.shrink_to_fit();
        self.command.shrink_to_fit();
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.input.extend_from_slice(data);
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.input.len()
    }

    /// Drops everything buffered and any partial command (after STARTTLS:
    /// bytes pipelined before the handshake must not be executed,
    /// RFC 9051 §6.2.1 / RFC 3207 §4 command injection).
    pub fn discard_buffered(&mut self) {
        self.input.clear();
        self.reset();
    }

    fn reset(&mut self) {
        self.command.clear();
        self.line_bytes = 0;
        self.literal_bytes = 0;
        self.state = State::Line;
    }

    /// Takes one raw line (without CRLF) for AUTHENTICATE continuations and
    /// IDLE's `DONE`. Returns `Err(())` when the line is longer than
    /// `max_line` (it is discarded).
    #[allow(clippy::result_unit_err)]
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, ()>> {
        match self.input.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let mut line: Vec<u8> = self.input.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > self.limits.max_line {
                    return Some(Err(()));
                }
                Some(Ok(line))
            }
            None if self.input.len() > self.limits.max_line => {
                self.input.clear();
                self.state = State::Skipping { tag: None };
                Some(Err(()))
            }
            None => None,
        }
    }

    /// The next event, or `None` when more input is needed.
    pub fn next_event(&mut self) -> Option<FrameEvent> {
        loop {
            match &mut self.state {
                State::Skipping { tag } => {
                    let pos = self.input.iter().position(|b| *b == b'\n');
                    match pos {
                        Some(i) => {
                            self.input.drain(..=i);
                            let tag = tag.take();
                            self.reset();
                            return Some(FrameEvent::LineTooLong { tag });
                        }
                        None => {
                            self.input.clear();
                            return None;
                        }
                    }
                }
                State::Literal { remaining } => {
                    if self.input.is_empty() {
                        return None;
                    }
                    let take = (*remaining).min(self.input.len() as u64) as usize;
                    self.command.extend(self.input.drain(..take));
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = State::Line;
                    } else {
                        return None;
                    }
                }
                State::Line => {
                    let budget = self.limits.max_line.saturating_sub(self.line_bytes);
                    let Some(i) = self.input.iter().position(|b| *b == b'\n') else {
                        if self.input.len() > budget {
                            // RFC 9051 §4: bounded line length; skip the rest.
                            let tag = if self.command.is_empty() {
                                tag_of(&self.input)
                            } else {
                                tag_of(&self.command)
                            };
                            self.input.clear();
                            self.command.clear();
                            self.state = State::Skipping { tag };
                        }
                        return None;
                    };
                    if i + 1 > budget {
                        let tag = if self.command.is_empty() {
                            tag_of(&self.input)
                        } else {
                            tag_of(&self.command)
                        };
                        self.input.drain(..=i);
                        self.reset();
                        return Some(FrameEvent::LineTooLong { tag });
                    }
                    let line: Vec<u8> = self.input.drain(..=i).collect();
                    self.line_bytes += line.len();
                    let body = line
                        .strip_suffix(b"\n")
                        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                        .unwrap_or(&line);
                    let literal = trailing_literal(body);
                    self.command.extend_from_slice(&line);
                    let Some((n, sync, _binary)) = literal else {
                        let cmd = std::mem::take(&mut self.command);
                        self.reset();
                        return Some(FrameEvent::Command(cmd));
                    };
                    let append = is_append(&self.command);
                    let limit = if append {
                        self.limits.append_limit
                    } else {
                        self.limits.max_literal
                    };
                    self.literal_bytes = self.literal_bytes.saturating_add(n);
                    if self.literal_bytes > limit {
                        let tag = tag_of(&self.command);
                        self.reset();
                        return Some(FrameEvent::LiteralTooLarge {
                            tag,
                            append,
                            fatal: !sync,
                        });
                    }
                    self.state = State::Literal { remaining: n };
                    // RFC 9051 §7.5: a synchronizing literal waits for "+".
                    if sync {
                        return Some(FrameEvent::NeedContinuation);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer() -> Framer {
        Framer::new(FramerLimits {
            max_line: 100,
            max_literal: 10,
            append_limit: 1000,
        })
    }

    #[test]
    fn plain_commands_and_partial_input() {
        let mut f = framer();
        f.push(b"a NOOP\r\nb CAPA");
        assert_eq!(
            f.next_event(),
            Some(FrameEvent::Command(b"a NOOP\r\n".to_vec()))
        );
        assert_eq!(f.next_event(), None);
        f.push(b"BILITY\r\n");
        assert_eq!(
            f.next_event(),
            Some(FrameEvent::Command(b"b CAPABILITY\r\n".to_vec()))
        );
    }

    #[test]
    fn synchronizing_literal_asks_for_continuation() {
        let mut f = framer();
        f.push(b"a LOGIN {5}\r\n");
        assert_eq!(f.next_event(), Some(FrameEvent::NeedContinuation));
        assert_eq!(f.next_event(), None);
        f.push(b"alice {3+}\r\nabc\r\n");
        assert_eq!(
            f.next_event(),
            Some(FrameEvent::Command(
                b"a LOGIN {5}\r\nalice {3+}\r\nabc\r\n".to_vec()
            ))
        );
    }

    #[test]
    fn literal_limits() {
        let mut f = framer();
        f.push(b"a LOGIN {11}\r\n");
        assert_eq!(
            f.next_event(),
            Some(FrameEvent::LiteralTooLarge {
                tag: Some("a".into()),
                append: false,
                fatal: false
            })
        );
        f.push(b"b APPEND INBOX {500}\r\n");
        assert_eq!(f.next_event(), Some(FrameEvent::NeedContinuation));
        let mut f = framer();
        f.push(b"c APPEND INBOX {5000+}\r\n");
        assert_eq!(
            f.next_event(),
            Some(FrameEvent::LiteralTooLarge {
                tag: Some("c".into()),
                append: true,
                fatal: true
            })
        );
    }

    #[test]
    fn long_lines_are_skipped() {
        let mut f = framer();
        let mut long = b"t1 NOOP ".to_vec();
        long.extend(std::iter::repeat_n(b'x', 300));
        f.push(&long);
        assert_eq!(f.next_event(), None);
        f.push(b"yyy\r\nb NOOP\r\n");
        assert_eq!(
            f.next_event(),
            Some(FrameEvent::LineTooLong {
                tag: Some("t1".into())
            })
        );
        assert_eq!(
            f.next_event(),
            Some(FrameEvent::Command(b"b NOOP\r\n".to_vec()))
        );
    }

    #[test]
    fn raw_lines_and_discard() {
        let mut f = framer();
        f.push(b"DONE\r\nx NOOP\r\n");
        assert_eq!(f.next_line(), Some(Ok(b"DONE".to_vec())));
        f.discard_buffered();
        assert_eq!(f.next_event(), None);
    }
}
