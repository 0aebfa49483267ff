//! The one path from a session's outputs to the socket.
//!
//! Status lines, listings, message pieces from the
//! [`MessageEncoder`](crate::codec::MessageEncoder) (already dot-stuffed and
//! terminated) and the goodbye all pass through one [`ResponseWriter`],
//! which guarantees that bytes reach the stream in exactly the order they
//! were handed to it. Small pieces are gathered into one buffer so a
//! response costs few writes; a large piece may skip the buffer to avoid a
//! copy, but only after everything gathered before it has been written.
//! Nothing else in the driver writes to the stream.

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::codec::MessageEncoder;

/// How many bytes are gathered before they are written.
pub const WRITE_BUFFER: usize = 64 * 1024;

/// Pieces at least this large are written without a copy into the buffer
/// (after the buffer is drained, so order is kept).
pub const DIRECT_WRITE: usize = WRITE_BUFFER / 4;

/// Ordered, buffered output of one POP3 connection.
///
/// The writer owns no stream, so the driver can replace the stream (the
/// `STLS` upgrade) between responses; every method that writes takes the
/// stream and keeps the ordering guarantee described in the module docs.
#[derive(Debug)]
pub struct ResponseWriter {
    buffer: Vec<u8>,
    capacity: usize,
    direct: usize,
}

impl Default for ResponseWriter {
    fn default() -> Self {
        ResponseWriter::new()
    }
}

impl ResponseWriter {
    /// A writer with the default buffer sizes.
    pub fn new() -> ResponseWriter {
        ResponseWriter::with_sizes(WRITE_BUFFER, DIRECT_WRITE)
    }

    /// A writer that gathers up to `capacity` bytes and writes pieces of at
    /// least `direct` bytes without copying them (tests use small sizes to
    /// cross every boundary).
    pub fn with_sizes(capacity: usize, direct: usize) -> ResponseWriter {
        let capacity = capacity.max(1);
        ResponseWriter {
            buffer: Vec::with_capacity(capacity.min(4096)),
            capacity,
            direct: direct.max(1),
        }
    }

    /// Bytes gathered but not yet written.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// Queues `bytes` after everything already queued. Nothing is written
    /// until [`write_piece`](Self::write_piece) needs room or
    /// [`flush`](Self::flush) is called.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Writes `piece` after everything queued before it.
    pub async fn write_piece<W: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut W,
        piece: &[u8],
    ) -> io::Result<()> {
        if piece.len() >= self.direct {
            // The direct write must not overtake the gathered bytes (the
            // status line of this very response is usually among them).
            self.drain(stream).await?;
            return stream.write_all(piece).await;
        }
        if self.buffer.len() + piece.len() > self.capacity {
            self.drain(stream).await?;
        }
        self.buffer.extend_from_slice(piece);
        Ok(())
    }

    /// Streams a whole multi-line message body (RFC 1939 §3 stuffing and
    /// terminator come from the encoder) after everything queued before it.
    /// The last pieces may stay buffered until the next flush.
    pub async fn write_message<W: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut W,
        encoder: MessageEncoder,
    ) -> io::Result<()> {
        for piece in encoder {
            self.write_piece(stream, &piece).await?;
        }
        Ok(())
    }

    /// Writes everything queued and flushes the stream.
    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, stream: &mut W) -> io::Result<()> {
        self.drain(stream).await?;
        stream.flush().await
    }

    async fn drain<W: AsyncWrite + Unpin>(&mut self, stream: &mut W) -> io::Result<()> {
        if !self.buffer.is_empty() {
            let result = stream.write_all(&self.buffer).await;
            self.buffer.clear();
            result?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;

    use super::*;
    use crate::codec::{CHUNK, MessageEncoder};

    /// Records every write call, and accepts at most `max_write` bytes per
    /// call (short writes exercise `write_all`'s loop).
    #[derive(Default)]
    struct Recorder {
        bytes: Vec<u8>,
        writes: usize,
        max_write: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = if self.max_write == 0 {
                buf.len()
            } else {
                buf.len().min(self.max_write)
            };
            self.bytes.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn body(size: usize) -> Vec<u8> {
        // Long runs of lines the encoder hands out unchanged (so pieces
        // reach full size), broken now and then by a line starting with
        // '.' or ending in a bare LF.
        let mut out = Vec::with_capacity(size);
        let mut n = 0u32;
        while out.len() < size {
            n += 1;
            let line = if n.is_multiple_of(499) {
                format!(".dot line {n}\r\n")
            } else if n.is_multiple_of(701) {
                format!("bare lf line {n}\n")
            } else {
                format!("line {n} {}\r\n", "y".repeat((n % 301) as usize))
            };
            out.extend_from_slice(line.as_bytes());
        }
        out.truncate(size);
        out
    }

    #[tokio::test]
    async fn status_line_always_precedes_message_at_every_size() {
        let sizes = [
            0,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            DIRECT_WRITE - 1,
            DIRECT_WRITE,
            DIRECT_WRITE + 1,
            WRITE_BUFFER - 1,
            WRITE_BUFFER,
            WRITE_BUFFER + 1,
            3 * 1024 * 1024 + 7,
        ];
        for size in sizes {
            for max_write in [0, 1000] {
                let content = Bytes::from(body(size));
                let status = format!("+OK {size} octets\r\n");
                let mut expected = status.clone().into_bytes();
                expected.extend(MessageEncoder::retr(content.clone()).to_vec());
                expected.extend_from_slice(b"+OK next\r\n");

                let mut sink = Recorder {
                    max_write,
                    ..Recorder::default()
                };
                let mut w = ResponseWriter::new();
                w.push(status.as_bytes());
                w.write_message(&mut sink, MessageEncoder::retr(content))
                    .await
                    .unwrap();
                w.push(b"+OK next\r\n");
                w.flush(&mut sink).await.unwrap();
                assert_eq!(w.pending(), 0);
                assert!(
                    sink.bytes == expected,
                    "size {size}, max_write {max_write}: output differs at byte {:?}",
                    sink.bytes.iter().zip(&expected).position(|(a, b)| a != b)
                );
            }
        }
    }

    #[tokio::test]
    async fn every_buffer_boundary_keeps_order() {
        // Tiny buffers and encoder pieces: every combination of "fits",
        // "drains first" and "goes direct" happens many times.
        let content = Bytes::from(body(5000));
        for capacity in [1, 2, 7, 64, 4096] {
            for direct in [1, 3, 16, 100, 10_000] {
                for chunk in [1, 5, 64, 4096] {
                    let mut expected = b"+OK\r\n".to_vec();
                    expected.extend(MessageEncoder::new(content.clone(), None, chunk).to_vec());
                    let mut sink = Recorder::default();
                    let mut w = ResponseWriter::with_sizes(capacity, direct);
                    w.push(b"+OK\r\n");
                    w.write_message(&mut sink, MessageEncoder::new(content.clone(), None, chunk))
                        .await
                        .unwrap();
                    w.flush(&mut sink).await.unwrap();
                    assert!(
                        sink.bytes == expected,
                        "capacity {capacity} direct {direct} chunk {chunk}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn small_responses_are_gathered_into_few_writes() {
        let mut sink = Recorder::default();
        let mut w = ResponseWriter::new();
        w.push(b"+OK 2 octets\r\n");
        w.write_message(
            &mut sink,
            MessageEncoder::retr(Bytes::from_static(b"a\r\n")),
        )
        .await
        .unwrap();
        w.push(b"+OK bye\r\n");
        w.flush(&mut sink).await.unwrap();
        assert_eq!(sink.writes, 1);
        assert_eq!(sink.bytes, b"+OK 2 octets\r\na\r\n.\r\n+OK bye\r\n");
    }
}
