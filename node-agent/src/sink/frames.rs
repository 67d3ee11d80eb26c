//! A physical archive as a run of independent zstd frames, compressed and
//! decompressed on several threads.
//!
//! [`FrameWriter`] cuts the tar stream into pieces of [`FRAME_BYTES`] and
//! compresses each on a pool of threads into a frame of its own (content
//! size and checksum in it), written in order. The result is one ordinary
//! zstd stream: `zstd -dc` reads it whole. [`FrameReader`] finds the frame
//! boundaries from the frame and block headers without decompressing,
//! decompresses the frames on a pool of threads and hands the bytes over in
//! order, so a restore is not held to one core's decompression speed.
//!
//! An archive whose first frame has no content size, or one bigger than a
//! frame of ours may be (one frame over the whole tar, as written before
//! frames were cut), is read by one streaming decoder on a thread of its
//! own instead.
//!
//! Memory: each side holds at most about two frames per worker, plus the
//! frame being filled or handed out.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Uncompressed bytes of tar per frame. Small enough that several frames
/// are in flight per worker at little memory; big enough that the frame
/// restarts (a fresh window each) cost no measurable ratio at the levels
/// used (a 2 MiB window at level 3).
pub const FRAME_BYTES: usize = 4 << 20;

/// The largest content size [`FrameReader`] decompresses as one piece.
const MAX_PIECE: u64 = 64 << 20;

const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;

/// How many threads compress or decompress: the cores, at most 4.
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

type Job = (u64, Vec<u8>);
type Done = (u64, io::Result<Vec<u8>>);

/// Threads taking `(seq, input)` jobs from one queue and sending
/// `(seq, f(input))` back; they stop when the job queue is dropped.
struct Pool {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn start<F>(workers: usize, name: &str, work: F) -> io::Result<Pool>
    where
        F: Fn(&[u8]) -> io::Result<Vec<u8>> + Send + Sync + 'static,
    {
        let (jobs, queue) = sync_channel::<Job>(workers);
        let queue = Arc::new(Mutex::new(queue));
        let (done_tx, done) = sync_channel::<Done>(workers * 2);
        let work = Arc::new(work);
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers.max(1) {
            let (queue, done_tx, work) = (queue.clone(), done_tx.clone(), work.clone());
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    loop {
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        let Ok((seq, input)) = job else { return };
                        if done_tx.send((seq, work(&input))).is_err() {
                            return;
                        }
                    }
                })?;
            threads.push(thread);
        }
        Ok(Pool {
            jobs: Some(jobs),
            done,
            threads,
        })
    }

    fn send(&self, job: Job) -> io::Result<()> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| io::Error::other("the compression threads stopped"))
    }

    fn recv(&self) -> io::Result<Done> {
        self.done
            .recv()
            .map_err(|_| io::Error::other("the compression threads stopped"))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        // Workers stop at their next job; one waiting to hand a result
        // over is let go by taking (and dropping) the results meanwhile.
        for t in self.threads.drain(..) {
            while !t.is_finished() {
                let _ = self.done.recv_timeout(std::time::Duration::from_millis(5));
            }
            let _ = t.join();
        }
    }
}

/// Compresses what is written to it into frames of at most [`FRAME_BYTES`]
/// each, on [`workers`] threads, and writes them to `inner` in order. Call
/// [`FrameWriter::finish`] to write the last frame and get `inner` back.
pub struct FrameWriter<W: Write> {
    inner: W,
    pool: Pool,
    filling: Vec<u8>,
    sent: u64,
    written: u64,
    ready: BTreeMap<u64, Vec<u8>>,
    in_flight: u64,
}

impl<W: Write> std::fmt::Debug for FrameWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter")
            .field("sent", &self.sent)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W, level: i32, workers: usize) -> io::Result<FrameWriter<W>> {
        let pool = Pool::start(workers, "zstd-frames", move |input| {
            let mut c = zstd::bulk::Compressor::new(level)?;
            c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
            c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
            c.compress(input)
        })?;
        Ok(FrameWriter {
            inner,
            pool,
            filling: Vec::with_capacity(FRAME_BYTES),
            sent: 0,
            written: 0,
            ready: BTreeMap::new(),
            in_flight: (workers.max(1) * 2) as u64,
        })
    }

    /// Hands the filled frame to the pool; writes finished frames in order,
    /// waiting while too many are in flight.
    fn send_filled(&mut self) -> io::Result<()> {
        let piece = std::mem::replace(&mut self.filling, Vec::with_capacity(FRAME_BYTES));
        self.pool.send((self.sent, piece))?;
        self.sent += 1;
        self.drain(self.sent.saturating_sub(self.in_flight))
    }

    /// Writes finished frames in order until every frame before `upto` is.
    fn drain(&mut self, upto: u64) -> io::Result<()> {
        while self.written < upto {
            if let Some(frame) = self.ready.remove(&self.written) {
                self.inner.write_all(&frame)?;
                self.written += 1;
                continue;
            }
            let (seq, frame) = self.pool.recv()?;
            self.ready.insert(seq, frame?);
        }
        Ok(())
    }

    /// Drops what is not written yet; returns the writer below (to abort
    /// it).
    pub fn abandon(self) -> W {
        self.inner
    }

    /// Writes the last frame and every frame still in flight; returns the
    /// writer below.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.filling.is_empty() || self.sent == 0 {
            self.send_filled()?;
        }
        self.drain(self.sent)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(FRAME_BYTES - self.filling.len());
        self.filling.extend_from_slice(&buf[..n]);
        if self.filling.len() == FRAME_BYTES {
            self.send_filled()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a zstd stream, decompressing its frames on [`workers`] threads
/// when every frame carries a content size of at most [`MAX_PIECE`], else
/// with one streaming decoder on a thread of its own.
#[derive(Debug)]
pub struct FrameReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    piece: Vec<u8>,
    at: usize,
}

impl FrameReader {
    pub fn start<R: Read + Send + 'static>(
        mut input: R,
        workers: usize,
    ) -> io::Result<FrameReader> {
        let mut head = Vec::with_capacity(18);
        (&mut input).take(18).read_to_end(&mut head)?;
        let parallel = matches!(first_content_size(&head), Some(n) if n <= MAX_PIECE);
        let input = io::Cursor::new(head).chain(input);
        let (tx, rx) = sync_channel(workers.max(1) * 2);
        if parallel {
            let pool = Pool::start(workers, "unzstd-frames", |frame| {
                let size = zstd::zstd_safe::get_frame_content_size(frame)
                    .ok()
                    .flatten()
                    .filter(|n| *n <= MAX_PIECE)
                    .ok_or_else(|| {
                        io::Error::other("a zstd frame without a usable content size")
                    })?;
                let out = zstd::bulk::decompress(frame, size as usize)?;
                if out.len() as u64 != size {
                    return Err(io::Error::other(format!(
                        "a zstd frame holds {} bytes but says {size}",
                        out.len()
                    )));
                }
                Ok(out)
            })?;
            std::thread::Builder::new()
                .name("unzstd-split".into())
                .spawn(move || split_and_order(input, pool, tx))?;
        } else {
            std::thread::Builder::new()
                .name("unzstd".into())
                .spawn(move || match zstd::Decoder::new(input) {
                    Ok(dec) => pump(dec, tx),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                })?;
        }
        Ok(FrameReader {
            rx,
            piece: Vec::new(),
            at: 0,
        })
    }
}

impl Read for FrameReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.recv() {
                Ok(Ok(piece)) => {
                    self.piece = piece;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Reads `dec` to its end in pieces of [`FRAME_BYTES`] into `tx`.
fn pump<R: Read>(mut dec: R, tx: SyncSender<io::Result<Vec<u8>>>) {
    loop {
        let mut piece = Vec::with_capacity(FRAME_BYTES);
        match (&mut dec).take(FRAME_BYTES as u64).read_to_end(&mut piece) {
            Ok(0) => return,
            Ok(_) => {
                if tx.send(Ok(piece)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

/// Cuts `input` into frames for `pool` and sends the decompressed pieces to
/// `tx` in order. The first error ends the stream.
fn split_and_order<R: Read>(mut input: R, pool: Pool, tx: SyncSender<io::Result<Vec<u8>>>) {
    let fail = |e: io::Error| {
        let _ = tx.send(Err(e));
    };
    let (mut sent, mut handed) = (0u64, 0u64);
    let mut ready: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let in_flight = (pool.threads.len() * 2) as u64;
    let mut ended = false;
    loop {
        // Keep the pool busy, then hand over what is ready in order.
        while !ended && sent - handed < in_flight {
            match next_frame(&mut input) {
                Ok(Some(frame)) => {
                    if let Err(e) = pool.send((sent, frame)) {
                        return fail(e);
                    }
                    sent += 1;
                }
                Ok(None) => ended = true,
                Err(e) => return fail(e),
            }
        }
        if handed == sent {
            return;
        }
        while !ready.contains_key(&handed) {
            match pool.recv() {
                Ok((seq, Ok(piece))) => {
                    ready.insert(seq, piece);
                }
                Ok((_, Err(e))) | Err(e) => return fail(e),
            }
        }
        while let Some(piece) = ready.remove(&handed) {
            if tx.send(Ok(piece)).is_err() {
                return;
            }
            handed += 1;
        }
    }
}

/// The content size in the header of the frame `head` starts with, if it
/// is a zstd frame that records one.
fn first_content_size(head: &[u8]) -> Option<u64> {
    zstd::zstd_safe::get_frame_content_size(head).ok().flatten()
}

/// The bytes of the next zstd frame of `input` (skippable frames are
/// passed over), or None at the end of the stream.
fn next_frame<R: Read>(input: &mut R) -> io::Result<Option<Vec<u8>>> {
    loop {
        let mut magic = [0u8; 4];
        let got = read_full(input, &mut magic)?;
        if got == 0 {
            return Ok(None);
        }
        if got < 4 {
            return Err(truncated());
        }
        let m = u32::from_le_bytes(magic);
        if m & 0xFFFF_FFF0 == SKIPPABLE_MAGIC {
            let mut size = [0u8; 4];
            read_exact(input, &mut size)?;
            let size = u64::from(u32::from_le_bytes(size));
            if io::copy(&mut input.take(size), &mut io::sink())? != size {
                return Err(truncated());
            }
            continue;
        }
        if m != ZSTD_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a zstd frame (magic {m:#010x})"),
            ));
        }
        let mut frame = magic.to_vec();
        let descriptor = take(input, &mut frame, 1)?[0];
        let single_segment = descriptor & 0x20 != 0;
        let checksum = descriptor & 0x04 != 0;
        let window = usize::from(!single_segment);
        let dict = [0, 1, 2, 4][usize::from(descriptor & 0x03)];
        let content_size = match descriptor >> 6 {
            0 => usize::from(single_segment),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        take(input, &mut frame, window + dict + content_size)?;
        loop {
            let h = take(input, &mut frame, 3)?;
            let header = u32::from(h[0]) | (u32::from(h[1]) << 8) | (u32::from(h[2]) << 16);
            let last = header & 1 != 0;
            let size = (header >> 3) as usize;
            let body = match (header >> 1) & 3 {
                0 | 2 => size,
                1 => 1,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a zstd block of the reserved type",
                    ));
                }
            };
            take(input, &mut frame, body)?;
            if last {
                break;
            }
        }
        if checksum {
            take(input, &mut frame, 4)?;
        }
        return Ok(Some(frame));
    }
}

/// Appends exactly `n` bytes of `input` to `frame`; returns them.
fn take<'f, R: Read>(input: &mut R, frame: &'f mut Vec<u8>, n: usize) -> io::Result<&'f [u8]> {
    let start = frame.len();
    if (&mut *input).take(n as u64).read_to_end(frame)? != n {
        return Err(truncated());
    }
    Ok(&frame[start..])
}

fn read_exact<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<()> {
    if read_full(input, buf)? != buf.len() {
        return Err(truncated());
    }
    Ok(())
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the archive ends inside a zstd frame",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that compress somewhat (like table rows): digits with runs.
    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 300 < 100 {
                    0
                } else {
                    b'0' + (x % 10) as u8
                }
            })
            .collect()
    }

    fn framed(input: &[u8], workers: usize) -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new(), 3, workers).expect("writer");
        // Odd-sized writes, across frame boundaries.
        for chunk in input.chunks(777_777) {
            w.write_all(chunk).expect("write");
        }
        w.finish().expect("finish")
    }

    /// Everything a [`FrameReader`] on 2 threads reads from `bytes`.
    fn unframe(bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut back = Vec::new();
        FrameReader::start(io::Cursor::new(bytes), 2)?.read_to_end(&mut back)?;
        Ok(back)
    }

    #[test]
    fn frames_round_trip_on_several_threads_and_read_as_one_zstd_stream() {
        let input = data(3 * FRAME_BYTES + 12_345);
        let out = framed(&input, 3);
        // Four frames, each with its content size.
        let mut rest = io::Cursor::new(out.clone());
        let mut sizes = Vec::new();
        while let Some(f) = next_frame(&mut rest).expect("frame") {
            sizes.push(first_content_size(&f).expect("content size"));
        }
        assert_eq!(sizes, [4 << 20, 4 << 20, 4 << 20, 12_345]);
        // Any zstd reader reads the frames as one stream.
        assert_eq!(zstd::decode_all(&out[..]).expect("zstd"), input);
        assert_eq!(unframe(out).expect("read"), input);
    }

    #[test]
    fn an_empty_stream_is_one_empty_frame() {
        let out = framed(&[], 2);
        assert!(unframe(out).expect("read").is_empty());
    }

    #[test]
    fn one_streamed_frame_without_a_content_size_is_read_by_one_decoder() {
        let input = data(FRAME_BYTES + 99);
        let mut enc = zstd::Encoder::new(Vec::new(), 3).expect("encoder");
        enc.write_all(&input).expect("write");
        let out = enc.finish().expect("finish");
        assert_eq!(first_content_size(&out), None);
        assert_eq!(unframe(out).expect("read"), input);
    }

    #[test]
    fn a_damaged_or_cut_archive_fails() {
        let input = data(2 * FRAME_BYTES + 5);
        let out = framed(&input, 2);
        // A flipped byte in the middle of the second frame.
        let mut flipped = out.clone();
        let at = out.len() * 3 / 4;
        flipped[at] ^= 0x40;
        assert!(unframe(flipped).is_err());
        let cut = out[..out.len() - 10].to_vec();
        let e = unframe(cut).expect_err("cut");
        assert!(e.to_string().contains("ends inside a zstd frame"), "{e}");
        let mut garbage = out.clone();
        garbage.extend_from_slice(b"not zstd at all");
        let e = unframe(garbage).expect_err("garbage");
        assert!(e.to_string().contains("not a zstd frame"), "{e}");
    }
}
