//! Replies of the transmission phase as they are built: header and data pieces sent in wire
//! order with one vectored write, and failures with the errno the spec asks for.

use crate::export::{ErrorKind, ExportError, Extent};
use crate::nbd::proto::wire::*;

/// Reply buffers above this size are dropped after use rather than kept for the next reply.
pub(super) const KEEP_BUFFER: usize = 4 << 20;

/// A reply being built: headers (and small data) in `head`, READ data in `data`, interleaved
/// as `pieces` say. `data` keeps its high-water length between replies, so a READ lands in
/// memory that is already initialised instead of being zero-filled first (a memset of every
/// byte read was a tenth of the server's time on 1 MiB reads).
#[derive(Default)]
pub(super) struct Reply {
    pub(super) head: Vec<u8>,
    data: Vec<u8>,
    /// (bytes of `head` before this piece, range of `data`), in order.
    pieces: Vec<(usize, std::ops::Range<usize>)>,
    data_len: usize,
}

impl Reply {
    pub(super) fn clear(&mut self) {
        self.head.clear();
        self.pieces.clear();
        self.data_len = 0;
    }

    pub(super) fn len(&self) -> usize {
        self.head.len() + self.data_len
    }

    /// The next `n` bytes of data, placed after what `head` holds now.
    pub(super) fn data_slot(&mut self, n: usize) -> &mut [u8] {
        let at = self.data_len;
        if self.data.len() < at + n {
            self.data.resize(at + n, 0);
        }
        self.pieces.push((self.head.len(), at..at + n));
        self.data_len += n;
        &mut self.data[at..at + n]
    }

    /// The reply in wire order.
    pub(super) fn slices(&self) -> impl Iterator<Item = &[u8]> {
        let mut h = 0;
        let last = self.pieces.last().map_or(0, |p| p.0);
        let pieces = self.pieces.iter().flat_map(move |(end, r)| {
            let head = &self.head[h..*end];
            h = *end;
            [head, &self.data[r.clone()]]
        });
        pieces.chain(std::iter::once(&self.head[last..]))
    }

    /// Drops buffers that grew for one unusually large reply.
    pub(super) fn trim(&mut self) {
        if self.head.capacity() > KEEP_BUFFER {
            self.head = Vec::new();
        }
        if self.data.len() > KEEP_BUFFER {
            self.data = Vec::new();
        }
    }
}

/// A failed request: the errno to send and what to log.
pub(super) struct Fail {
    pub(super) errno: u32,
    pub(super) why: String,
    pub(super) client_fault: bool,
}

impl Fail {
    pub(super) fn client(errno: u32, why: &str) -> Self {
        Self { errno, why: why.to_owned(), client_fault: true }
    }
}

impl From<ExportError> for Fail {
    fn from(e: ExportError) -> Self {
        let client_fault = matches!(e.kind, ErrorKind::OutOfRange | ErrorKind::ReadOnly);
        Self { errno: errno(e.kind), why: e.to_string(), client_fault }
    }
}

/// The NBD error value for a backend failure (the spec's errno subset: section "Error values").
pub(super) fn errno(kind: ErrorKind) -> u32 {
    match kind {
        ErrorKind::NoSpace => ENOSPC,
        ErrorKind::OutOfRange => EINVAL,
        ErrorKind::ReadOnly => EPERM,
        ErrorKind::NotSupported => ENOTSUP,
        ErrorKind::Io => EIO,
    }
}

/// `base:allocation` status bits of an extent.
pub(super) fn allocation_status(e: &Extent) -> u32 {
    (if e.hole { STATE_HOLE } else { 0 }) | (if e.zero { STATE_ZERO } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> Vec<u8> {
        r.slices().flat_map(|p| p.iter().copied()).collect()
    }

    #[test]
    fn reply_pieces_come_out_in_wire_order_and_reuse_their_memory() {
        let mut r = Reply::default();
        r.head.extend_from_slice(b"H1");
        r.data_slot(3).copy_from_slice(b"abc");
        r.head.extend_from_slice(b"hole");
        r.head.extend_from_slice(b"H2");
        r.data_slot(2).copy_from_slice(b"de");
        r.head.extend_from_slice(b"end");
        assert_eq!(wire(&r), b"H1abcholeH2deend");
        assert_eq!(r.len(), 16);
        // A smaller reply next: the data memory is reused, not zero-filled, and only what
        // this reply wrote goes out.
        r.clear();
        r.head.extend_from_slice(b"S");
        r.data_slot(1).copy_from_slice(b"x");
        assert_eq!(wire(&r), b"Sx");
        assert_eq!(r.data.len(), 5, "high-water length kept");
        r.clear();
        r.head.extend_from_slice(b"only");
        assert_eq!(wire(&r), b"only");
    }
}
