use crate::parsing::ParsingContext;
use amq_protocol::frame::{BackToTheBuffer, GenError, GenResult, WriteContext};
use futures_io::{AsyncRead, AsyncWrite};
use std::{
    cmp,
    io::{self, IoSlice, IoSliceMut},
    pin::Pin,
    task::{Context, Poll},
};

/// octopods-worker patch: see `Buffer::compact`.
const COMPACT_AT_MOST: usize = 4096;

#[derive(Debug, PartialEq, Clone)]
pub(crate) struct Buffer {
    memory: Vec<u8>,
    capacity: usize,
    position: usize,
    end: usize,
    available_data: usize,
}

pub(crate) struct Checkpoint {
    end: usize,
    backwards: bool,
}

impl Buffer {
    pub(crate) fn with_capacity(capacity: usize) -> Buffer {
        Buffer {
            memory: vec![0; capacity],
            capacity,
            position: 0,
            end: 0,
            available_data: 0,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.position = 0;
        self.end = 0;
        self.available_data = 0;
    }

    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            end: self.end,
            backwards: true,
        }
    }

    pub(crate) fn rollback(&mut self, checkpoint: Checkpoint) {
        if checkpoint.end == self.end {
            return;
        }
        if checkpoint.backwards {
            if self.end > checkpoint.end {
                self.available_data -= self.end - checkpoint.end;
            } else {
                self.available_data -= self.end + (self.capacity - checkpoint.end);
            }
        } else if self.end > checkpoint.end {
            self.available_data += (self.capacity - self.end) + checkpoint.end;
        } else {
            self.available_data += checkpoint.end - self.end;
        }
        self.end = checkpoint.end;
    }

    pub(crate) fn grow(&mut self, new_size: usize) -> bool {
        if self.capacity >= new_size {
            return false;
        }

        let old_capacity = self.capacity;
        let growth = new_size - old_capacity;

        self.memory.resize(new_size, 0);
        self.capacity = new_size;

        if self.end <= self.position && self.available_data > 0 {
            // We have data and the "tail" was at the beginning of the buffer.
            // We need to move it in the new end.
            let (old, new) = self.memory.split_at_mut(old_capacity);
            if self.end < growth {
                // There is enough room in the new end for this whole "tail".
                new.copy_from_slice(&old[..self.end]);
                self.end += old_capacity;
            } else {
                // Fill the new end with as much data as we can.
                new.copy_from_slice(&old[..growth]);
                // We still have [growth..old_end] to move into [0..new_end]
                // copy_within handles the overlap correctly, if any.
                self.memory.copy_within(growth..self.end, 0);
                // We also update the end pointer to the right location.
                self.end -= growth;
            }
        }

        true
    }

    pub(crate) fn available_data(&self) -> usize {
        self.available_data
    }

    pub(crate) fn available_space(&self) -> usize {
        self.capacity - self.available_data
    }

    pub(crate) fn consume(&mut self, count: usize) -> usize {
        let cnt = cmp::min(count, self.available_data());
        self.position += cnt;
        self.position %= self.capacity;
        self.available_data -= cnt;
        if self.available_data == 0 {
            // octopods-worker patch: an empty ring starts over at its front,
            // so a connection whose frames are small (acks, confirms) keeps
            // touching the same few pages instead of walking, and so
            // committing, all of `FRAMES_STORAGE * frame_max` over time.
            self.position = 0;
            self.end = 0;
        }
        cnt
    }

    /// octopods-worker patch: moves a small remainder (the start of a frame
    /// not yet whole) to the front, so that the next read lands at the front
    /// too. Only when the remainder is contiguous and at most
    /// `COMPACT_AT_MOST` bytes: a copy that small costs less than the read
    /// that follows it.
    fn compact(&mut self) {
        if self.position > 0
            && self.end > self.position
            && self.available_data <= COMPACT_AT_MOST
        {
            self.memory.copy_within(self.position..self.end, 0);
            self.position = 0;
            self.end = self.available_data;
        }
    }

    pub(crate) fn fill(&mut self, count: usize) -> usize {
        let cnt = cmp::min(count, self.available_space());
        self.end += cnt;
        self.end %= self.capacity;
        self.available_data += cnt;
        cnt
    }

    pub(crate) fn poll_write_to<T: AsyncWrite + ?Sized>(
        &self,
        cx: &mut Context<'_>,
        writer: Pin<&mut T>,
    ) -> Poll<io::Result<usize>> {
        if self.available_data() == 0 {
            Poll::Ready(Ok(0))
        } else if self.end > self.position {
            writer.poll_write(cx, &self.memory[self.position..self.end])
        } else {
            writer.poll_write_vectored(
                cx,
                &[
                    IoSlice::new(&self.memory[self.position..]),
                    IoSlice::new(&self.memory[..self.end]),
                ],
            )
        }
    }

    pub(crate) fn poll_read_from<T: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut T>,
    ) -> Poll<io::Result<usize>> {
        self.compact();
        if self.available_space() == 0 {
            Poll::Ready(Ok(0))
        } else if self.end >= self.position {
            let (start, end) = self.memory.split_at_mut(self.end);
            reader.poll_read_vectored(
                cx,
                &mut [
                    IoSliceMut::new(&mut *end),
                    IoSliceMut::new(&mut start[..self.position]),
                ][..],
            )
        } else {
            reader.poll_read(cx, &mut self.memory[self.end..self.position])
        }
    }

    pub(crate) fn offset(&self, buf: ParsingContext<'_>) -> usize {
        let dataptr = self.memory[self.position..].as_ptr() as usize;
        let bufptr = buf.as_ptr() as usize;

        if dataptr < bufptr {
            bufptr - dataptr
        } else {
            let start = &self.memory[..0];
            let startptr = start.as_ptr() as usize;
            bufptr + self.capacity - self.position - startptr
        }
    }

    pub(crate) fn parsing_context(&self) -> ParsingContext<'_> {
        if self.available_data() == 0 {
            self.memory[self.end..self.end].into()
        } else if self.end > self.position {
            self.memory[self.position..self.end].into()
        } else {
            [&self.memory[self.position..], &self.memory[..self.end]].into()
        }
    }
}

impl io::Write for &mut Buffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let amt = if self.available_space() == 0 {
            0
        } else if self.end >= self.position {
            let mut space = &mut self.memory[self.end..];
            let mut amt = space.write(data)?;
            if amt == self.capacity - self.end {
                let mut space = &mut self.memory[..self.position];
                amt += space.write(&data[amt..])?;
            }
            amt
        } else {
            let mut space = &mut self.memory[self.end..self.position];
            space.write(data)?
        };
        self.fill(amt);
        Ok(amt)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BackToTheBuffer for &mut Buffer {
    fn reserve_write_use<
        Tmp,
        Gen: Fn(WriteContext<Self>) -> Result<(WriteContext<Self>, Tmp), GenError>,
        Before: Fn(WriteContext<Self>, Tmp) -> GenResult<Self>,
    >(
        s: WriteContext<Self>,
        reserved: usize,
        generator: &Gen,
        before: &Before,
    ) -> Result<WriteContext<Self>, GenError> {
        if s.write.available_space() < reserved {
            return Err(GenError::BufferTooSmall(
                reserved - s.write.available_space(),
            ));
        }
        let start = s.write.checkpoint();
        s.write.fill(reserved);
        generator(s).and_then(|(s, tmp)| {
            let mut end = s.write.checkpoint();
            end.backwards = false;
            s.write.rollback(start);
            #[allow(clippy::manual_inspect)]
            before(s, tmp).map(|s| {
                s.write.rollback(end);
                s
            })
        })
    }
}

/// octopods-worker patch: the ring's contract (bytes come out in the order
/// they went in, whatever the wrap-around) and where its reads and writes
/// land after the patch.
#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::VecDeque, io::Write, task::Waker};

    /// An `AsyncRead` that hands out at most `chunk` bytes of `data` a read.
    struct Source<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl AsyncRead for Source<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let n = cmp::min(cmp::min(buf.len(), self.chunk), self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(n))
        }
    }

    fn contents(b: &Buffer) -> Vec<u8> {
        let mut out = Vec::new();
        if b.available_data == 0 {
            return out;
        }
        if b.end > b.position {
            out.extend_from_slice(&b.memory[b.position..b.end]);
        } else {
            out.extend_from_slice(&b.memory[b.position..]);
            out.extend_from_slice(&b.memory[..b.end]);
        }
        out
    }

    fn read(b: &mut Buffer, data: &[u8], chunk: usize) -> usize {
        let mut source = Source { data, chunk };
        let mut cx = Context::from_waker(Waker::noop());
        match b.poll_read_from(&mut cx, Pin::new(&mut source)) {
            Poll::Ready(Ok(n)) => {
                b.fill(n);
                n
            }
            other => panic!("a slice source answered {other:?}"),
        }
    }

    #[test]
    fn a_drained_ring_starts_over_at_its_front() {
        let mut b = Buffer::with_capacity(64);
        for round in 0..100u8 {
            assert_eq!((&mut b).write(&[round; 21]).unwrap(), 21);
            assert_eq!(b.consume(21), 21);
            assert_eq!((b.position, b.end, b.available_data), (0, 0, 0));
        }
    }

    #[test]
    fn a_small_remainder_moves_to_the_front_before_a_read() {
        let mut b = Buffer::with_capacity(64);
        let bytes: Vec<u8> = (0..40).collect();
        assert_eq!(read(&mut b, &bytes, 40), 40);
        b.consume(30);
        assert_eq!(read(&mut b, &[200, 201], 2), 2);
        assert_eq!(b.position, 0);
        assert_eq!(
            contents(&b),
            [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 200, 201]
        );
    }

    #[test]
    fn a_large_or_wrapped_remainder_stays_where_it_is() {
        let big = COMPACT_AT_MOST * 2;
        let mut b = Buffer::with_capacity(big * 2);
        let bytes = vec![7u8; big + 10];
        read(&mut b, &bytes, bytes.len());
        b.consume(10);
        read(&mut b, &[1], 1);
        assert_eq!(b.position, 10);
        assert_eq!(contents(&b).len(), big + 1);

        let mut w = Buffer::with_capacity(16);
        read(&mut w, &[1; 12], 12);
        w.consume(10);
        assert_eq!((&mut w).write(&[2; 8]).unwrap(), 8);
        // a wrapped remainder is two slices: it is left for the ring to walk
        assert!(w.end < w.position);
        let before = (w.position, w.end);
        read(&mut w, &[3; 1], 1);
        assert_eq!((w.position, w.end - 1), before);
        assert_eq!(contents(&w), [1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3]);
    }

    /// Random reads, writes and consumes against a `VecDeque`: what comes
    /// out is what went in, in order, and the counters never disagree.
    #[test]
    fn the_ring_keeps_every_byte_in_order() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        for capacity in [16, 61, 4096, 3 * COMPACT_AT_MOST] {
            let mut b = Buffer::with_capacity(capacity);
            let mut model: VecDeque<u8> = VecDeque::new();
            let mut counter = 0u8;
            for _ in 0..20_000 {
                let op = next(3);
                if op < 2 {
                    // Fresh bytes (a running counter), read in or written in;
                    // the model keeps what the ring took.
                    let data: Vec<u8> = (0..next(capacity + 1))
                        .map(|_| {
                            counter = counter.wrapping_add(1);
                            counter
                        })
                        .collect();
                    let taken = if op == 0 {
                        read(&mut b, &data, 1 + next(capacity + 1))
                    } else {
                        (&mut b).write(&data).unwrap()
                    };
                    model.extend(&data[..taken]);
                } else {
                    let n = next(b.available_data() + 1);
                    assert_eq!(b.consume(n), n);
                    model.drain(..n);
                }
                assert_eq!(b.available_data(), model.len());
                assert_eq!(contents(&b), model.iter().copied().collect::<Vec<_>>());
            }
        }
    }
}
