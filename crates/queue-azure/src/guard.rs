//! Bounded decoding: every byte the peer sends passes through [`FrameGuard`] before
//! fe2o3-amqp sees it.
//!
//! fe2o3's decoder trusts length and count fields: a 13-byte frame announcing a 4 GiB string
//! makes it allocate 4 GiB (and abort), and deep nesting recurses without limit. The guard
//! reads each frame whole (the frame size is checked against [`MAX_FRAME_SIZE`] before any
//! buffering) and walks its AMQP encoding without allocating: every size must fit in the
//! bytes that are really there, every count must be coverable by them, nesting is limited.
//! Message payloads split over several transfer frames are reassembled here (up to a cap)
//! and walked once complete. A frame that fails is a clean I/O error: the connection ends
//! and reconnects.

use std::{
    collections::HashMap,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest AMQP frame the client accepts (announced in its `open`).
pub(crate) const MAX_FRAME_SIZE: usize = 256 * 1024;
/// Deepest nesting of compound values accepted.
const MAX_DEPTH: u32 = 32;
/// The protocol header every AMQP (and SASL, TLS) layer begins with.
const PROTOCOL_HEADER: &[u8; 4] = b"AMQP";
/// The descriptor code of the `transfer` performative.
const TRANSFER: u64 = 0x14;

/// Reads frames whole and refuses hostile ones; writes pass through.
pub(crate) struct FrameGuard<S> {
    inner: S,
    /// The frame (or protocol header) being read.
    frame: Vec<u8>,
    /// Checked bytes not yet handed to the reader, from `ready_pos`.
    ready: Vec<u8>,
    ready_pos: usize,
    /// Payload of multi-frame transfers, per link handle, until the last frame.
    partial: HashMap<u32, Vec<u8>>,
    /// Largest reassembled message payload accepted.
    max_message: usize,
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("refused frame: {why}"))
}

impl<S> FrameGuard<S> {
    /// Guards `inner`; multi-frame messages may grow to `max_message` bytes.
    pub(crate) fn new(inner: S, max_message: usize) -> Self {
        Self {
            inner,
            frame: Vec::new(),
            ready: Vec::new(),
            ready_pos: 0,
            partial: HashMap::new(),
            max_message,
        }
    }

    /// How many more bytes the current frame needs (0 when it is complete).
    fn wanted(&self) -> Result<usize, io::Error> {
        if self.frame.len() < 8 {
            return Ok(8 - self.frame.len());
        }
        if self.frame[..4] == PROTOCOL_HEADER[..] {
            return Ok(0);
        }
        let size = u32::from_be_bytes([self.frame[0], self.frame[1], self.frame[2], self.frame[3]])
            as usize;
        if !(8..=MAX_FRAME_SIZE).contains(&size) {
            return Err(invalid(format!(
                "a frame of {size} bytes (the limit is {MAX_FRAME_SIZE})"
            )));
        }
        Ok(size - self.frame.len())
    }

    /// Checks the complete frame in `self.frame`.
    fn check_frame(&mut self) -> Result<(), io::Error> {
        let f = &self.frame;
        if f[..4] == PROTOCOL_HEADER[..] {
            return Ok(());
        }
        let doff = usize::from(f[4]) * 4;
        if doff < 8 || doff > f.len() {
            return Err(invalid(format!(
                "data offset {doff} in a {}-byte frame",
                f.len()
            )));
        }
        let body = &f[doff..];
        if body.is_empty() {
            return Ok(()); // heartbeat
        }
        let mut walker = Walker { b: body, pos: 0 };
        let transfer = walker.performative()?;
        let payload = &body[walker.pos..];
        match transfer {
            None if payload.is_empty() => Ok(()),
            None => Err(invalid("bytes after the performative".into())),
            Some(t) => self.check_payload(t, payload.to_vec()),
        }
    }

    /// Reassembles a transfer's payload and checks it once the message is complete.
    fn check_payload(&mut self, t: TransferInfo, payload: Vec<u8>) -> Result<(), io::Error> {
        if t.aborted {
            self.partial.remove(&t.handle);
            return Ok(());
        }
        let mut whole = match self.partial.remove(&t.handle) {
            Some(mut earlier) => {
                earlier.extend_from_slice(&payload);
                earlier
            }
            None => payload,
        };
        if whole.len() > self.max_message {
            return Err(invalid(format!(
                "a message over {} bytes",
                self.max_message
            )));
        }
        if t.more {
            self.partial.insert(t.handle, std::mem::take(&mut whole));
            return Ok(());
        }
        let mut walker = Walker { b: &whole, pos: 0 };
        while walker.pos < whole.len() {
            walker.value(0)?;
        }
        Ok(())
    }
}

/// What the guard needs from a `transfer`.
struct TransferInfo {
    handle: u32,
    more: bool,
    aborted: bool,
}

/// Walks AMQP-encoded values without allocating.
struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Walker<'_> {
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], io::Error> {
        if n > self.left() {
            return Err(invalid(format!(
                "a size of {n} bytes where {} remain",
                self.left()
            )));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, io::Error> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<usize, io::Error> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
    }

    /// Reads the performative (a described list); for a `transfer`, the fields the guard
    /// needs.
    fn performative(&mut self) -> Result<Option<TransferInfo>, io::Error> {
        if self.byte()? != 0x00 {
            return Err(invalid("the performative is not a described type".into()));
        }
        let code = self.descriptor_code()?;
        let start = self.pos;
        self.value(1)?;
        if code != Some(TRANSFER) {
            return Ok(None);
        }
        let mut fields = Walker {
            b: &self.b[start..self.pos],
            pos: 0,
        };
        fields.transfer_fields().map(Some)
    }

    /// The descriptor as a numeric code, if it is one (symbolic ones are walked).
    fn descriptor_code(&mut self) -> Result<Option<u64>, io::Error> {
        let c = self.byte()?;
        Ok(match c {
            0x44 => Some(0),
            0x53 => Some(u64::from(self.byte()?)),
            0x80 => {
                let s = self.take(8)?;
                Some(u64::from_be_bytes([
                    s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
                ]))
            }
            other => {
                self.body(other, 1)?;
                None
            }
        })
    }

    /// Reads `handle`, `more` and `aborted` from a transfer's field list.
    fn transfer_fields(&mut self) -> Result<TransferInfo, io::Error> {
        let c = self.byte()?;
        let count = match c {
            0x45 => 0,
            0xc0 => {
                self.byte()?;
                usize::from(self.byte()?)
            }
            0xd0 => {
                self.u32()?;
                self.u32()?
            }
            _ => return Err(invalid("a transfer whose fields are not a list".into())),
        };
        let mut info = TransferInfo {
            handle: 0,
            more: false,
            aborted: false,
        };
        for i in 0..count {
            let c = self.byte()?;
            match (i, c) {
                (0, 0x43) => info.handle = 0,
                (0, 0x52) => info.handle = u32::from(self.byte()?),
                (0, 0x70) => info.handle = u32::try_from(self.u32()?).unwrap_or(u32::MAX),
                (5, 0x41) => info.more = true,
                (9, 0x41) => info.aborted = true,
                (5 | 9, 0x56) => {
                    let v = self.byte()? != 0;
                    if i == 5 {
                        info.more = v;
                    } else {
                        info.aborted = v;
                    }
                }
                (_, c) => self.body(c, 1)?,
            }
        }
        Ok(info)
    }

    /// Walks one value (constructor and body).
    fn value(&mut self, depth: u32) -> Result<(), io::Error> {
        let c = self.byte()?;
        self.body(c, depth)
    }

    /// Walks the body of a value whose constructor is `c`.
    fn body(&mut self, c: u8, depth: u32) -> Result<(), io::Error> {
        if depth > MAX_DEPTH {
            return Err(invalid(format!("values nested deeper than {MAX_DEPTH}")));
        }
        match c {
            0x00 => {
                self.value(depth + 1)?; // descriptor
                self.value(depth + 1)
            }
            _ => match fixed_width(c) {
                Some(w) => self.take(w).map(|_| ()),
                None => self.variable(c, depth),
            },
        }
    }

    /// Binary, strings, symbols, lists, maps and arrays.
    fn variable(&mut self, c: u8, depth: u32) -> Result<(), io::Error> {
        match c {
            0xa0 | 0xa1 | 0xa3 => {
                let n = usize::from(self.byte()?);
                self.take(n).map(|_| ())
            }
            0xb0 | 0xb1 | 0xb3 => {
                let n = self.u32()?;
                self.take(n).map(|_| ())
            }
            0xc0 | 0xc1 | 0xd0 | 0xd1 | 0xe0 | 0xf0 => {
                let wide = c >= 0xd0 && c != 0xe0;
                let size = if wide {
                    self.u32()?
                } else {
                    usize::from(self.byte()?)
                };
                let inner = self.take(size)?;
                let mut w = Walker { b: inner, pos: 0 };
                let count = if wide {
                    w.u32()?
                } else {
                    usize::from(w.byte()?)
                };
                if count > inner.len() {
                    return Err(invalid(format!(
                        "{count} elements announced in {} bytes",
                        inner.len()
                    )));
                }
                match c {
                    0xe0 | 0xf0 => w.array(count, depth),
                    0xc1 | 0xd1 if count % 2 != 0 => {
                        Err(invalid("a map with an odd number of entries".into()))
                    }
                    _ => (0..count).try_for_each(|_| w.value(depth + 1)),
                }
            }
            other => Err(invalid(format!("unknown type code {other:#04x}"))),
        }
    }

    /// An array's element constructor, then `count` bodies of it.
    fn array(&mut self, count: usize, depth: u32) -> Result<(), io::Error> {
        let mut c = self.byte()?;
        if c == 0x00 {
            self.value(depth + 1)?; // descriptor, shared by every element
            c = self.byte()?;
        }
        (0..count).try_for_each(|_| self.body(c, depth + 1))
    }
}

/// The body width of a fixed-width type code.
fn fixed_width(c: u8) -> Option<usize> {
    Some(match c {
        0x40..=0x45 => 0,
        0x50..=0x56 => 1,
        0x60 | 0x61 => 2,
        0x70..=0x74 => 4,
        0x80..=0x84 => 8,
        0x94 | 0x98 => 16,
        _ => return None,
    })
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        while me.ready_pos == me.ready.len() {
            let want = me.wanted()?;
            if want == 0 {
                me.check_frame()?;
                me.ready = std::mem::take(&mut me.frame);
                me.ready_pos = 0;
                break;
            }
            let start = me.frame.len();
            me.frame.resize(start + want, 0);
            let mut rb = ReadBuf::new(&mut me.frame[start..]);
            let polled = Pin::new(&mut me.inner).poll_read(cx, &mut rb);
            let got = rb.filled().len();
            me.frame.truncate(start + got);
            ready!(polled)?;
            if got == 0 {
                return Poll::Ready(Ok(())); // end of stream
            }
        }
        let n = (me.ready.len() - me.ready_pos).min(buf.remaining());
        buf.put_slice(&me.ready[me.ready_pos..me.ready_pos + n]);
        me.ready_pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let size = u32::try_from(8 + body.len()).unwrap();
        let mut f = size.to_be_bytes().to_vec();
        f.extend_from_slice(&[2, 0, 0, 0]);
        f.extend_from_slice(body);
        f
    }

    fn check(bytes: &[u8]) -> Result<(), io::Error> {
        let mut g = FrameGuard::new((), 1024 * 1024);
        g.frame = bytes.to_vec();
        if g.wanted()? != 0 {
            return Err(invalid("incomplete".into()));
        }
        g.check_frame()
    }

    #[test]
    fn well_formed_frames_pass() {
        check(b"AMQP\x00\x01\x00\x00").unwrap();
        check(&frame(&[])).unwrap(); // heartbeat
        // begin: described(0x11) list[ushort 1? -> null, uint 0, uint 100, uint 100]
        check(&frame(&[
            0x00, 0x53, 0x11, 0xc0, 0x05, 0x04, 0x40, 0x43, 0x43, 0x43,
        ]))
        .unwrap();
        // a string inside a list
        check(&frame(&[
            0x00, 0x53, 0x10, 0xc0, 0x05, 0x01, 0xa1, 0x02, b'h', b'i',
        ]))
        .unwrap();
    }

    #[test]
    fn hostile_frames_are_refused() {
        // a 4 GiB string in a 13-byte frame
        let e = check(&frame(&[0xb1, 0xff, 0xff, 0xff, 0xff, b'x'])).unwrap_err();
        assert!(e.to_string().contains("not a described type"), "{e}");
        let e = check(&frame(&[
            0x00, 0x53, 0x10, 0xb1, 0xff, 0xff, 0xff, 0xff, b'x',
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("4294967295 bytes"), "{e}");
        // a list announcing 4 billion elements in 4 bytes
        let e = check(&frame(&[
            0x00, 0x53, 0x10, 0xd0, 0x00, 0x00, 0x00, 0x04, 0xff, 0xff, 0xff, 0xff,
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("elements"), "{e}");
        // an array of 4 billion nulls
        let e = check(&frame(&[
            0x00, 0x53, 0x10, 0xf0, 0x00, 0x00, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0x40,
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("elements"), "{e}");
        // a frame over the limit is refused from its header alone
        let mut huge = 0x7fff_ffffu32.to_be_bytes().to_vec();
        huge.extend_from_slice(&[2, 0, 0, 0]);
        assert!(check(&huge).unwrap_err().to_string().contains("limit"));
        // nesting deeper than the limit (sizes built from the inside out)
        let mut body = vec![0x40];
        for _ in 0..40 {
            let mut l = vec![0xc0, u8::try_from(body.len() + 1).unwrap_or(255), 0x01];
            l.extend_from_slice(&body);
            body = l;
        }
        let mut nested = vec![0x00, 0x53, 0x10];
        nested.extend_from_slice(&body);
        let e = check(&frame(&nested)).unwrap_err();
        assert!(e.to_string().contains("nested"), "{e}");
    }
}
