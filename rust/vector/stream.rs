//! The index file streamed through a CRC-32, a bounded chunk at a time: saving never builds
//! the file in memory, and loading reads each section straight into the buffer it fills, so
//! an index that fits in memory once is saved and loaded without room for a second copy.

use std::io::{Read, Seek, SeekFrom, Write};

use crate::errors::{try_reserve, CoreError, CoreResult};

/// Bytes a read or a conversion moves at once (a multiple of every value's size).
pub const CHUNK_BYTES: usize = 1 << 20;

/// A scratch buffer of [`CHUNK_BYTES`], allocated fallibly.
///
/// # Errors
/// [`CoreError::Memory`] when it cannot be allocated.
pub fn chunk_buffer() -> CoreResult<Vec<u8>> {
    let mut buffer = Vec::new();
    try_reserve(&mut buffer, CHUNK_BYTES, "a file buffer")?;
    Ok(buffer)
}

/// Passes writes through while computing their CRC-32.
pub struct CrcWriter<W: Write> {
    /// Where the bytes go.
    pub inner: W,
    /// The CRC-32 of every byte written so far.
    pub crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `values` to `out` as little-endian bytes (`to_le` gives one value's), converted
/// [`CHUNK_BYTES`] at a time in `scratch`.
///
/// # Errors
/// The first error of `out`.
pub fn write_le<T: Copy, const N: usize>(
    values: &[T],
    to_le: impl Fn(T) -> [u8; N],
    scratch: &mut Vec<u8>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    for chunk in values.chunks(CHUNK_BYTES / N) {
        // Sized first, then filled in place: a loop the compiler vectorizes (pushing value
        // by value does not vectorize, which shows on an int8 index's codes).
        scratch.clear();
        scratch.resize(chunk.len() * N, 0);
        for (bytes, &value) in scratch.chunks_exact_mut(N).zip(chunk) {
            bytes.copy_from_slice(&to_le(value));
        }
        out.write_all(scratch)?;
    }
    Ok(())
}

/// Reads a saved index front to back, computing the CRC-32 of what it reads, through one
/// buffer of [`CHUNK_BYTES`].
pub struct CrcReader<R: Read + Seek> {
    inner: R,
    crc: crc32fast::Hasher,
    buffer: Vec<u8>,
    /// The file's name, for errors.
    path: String,
}

impl<R: Read + Seek> CrcReader<R> {
    /// A reader of `inner` (the file at `path`) from its current position.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when its buffer cannot be allocated.
    pub fn new(inner: R, path: &str) -> CoreResult<Self> {
        let mut buffer = chunk_buffer()?;
        buffer.resize(CHUNK_BYTES, 0);
        Ok(Self {
            inner,
            crc: crc32fast::Hasher::new(),
            buffer,
            path: path.to_owned(),
        })
    }

    /// The error of a file that cannot be loaded because of `why`.
    pub fn error(&self, why: &str) -> CoreError {
        CoreError::Persistence(format!("cannot load {}: {why}", self.path))
    }

    fn failed(&self, e: &std::io::Error) -> CoreError {
        self.error(&e.to_string())
    }

    /// The CRC-32 of everything read since the start (or the last [`CrcReader::seek`]).
    pub fn crc(&self) -> u32 {
        self.crc.clone().finalize()
    }

    /// The next `n` bytes (`n` at most [`CHUNK_BYTES`]: a header field).
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when they cannot be read.
    pub fn read(&mut self, n: usize) -> CoreResult<&[u8]> {
        let n = n.min(CHUNK_BYTES);
        if let Err(e) = self.inner.read_exact(&mut self.buffer[..n]) {
            return Err(self.failed(&e));
        }
        self.crc.update(&self.buffer[..n]);
        Ok(&self.buffer[..n])
    }

    /// Reads the next `bytes` bytes and passes them to `each`, in order, in chunks of
    /// [`CHUNK_BYTES`] (the last one shorter): a section of values cut into whole values.
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when they cannot be read, or the first error of `each`.
    pub fn read_chunks(
        &mut self,
        bytes: u64,
        mut each: impl FnMut(&[u8]) -> CoreResult<()>,
    ) -> CoreResult<()> {
        let mut left = bytes;
        while left > 0 {
            let n = usize::try_from(left).map_or(CHUNK_BYTES, |left| left.min(CHUNK_BYTES));
            if let Err(e) = self.inner.read_exact(&mut self.buffer[..n]) {
                return Err(self.failed(&e));
            }
            self.crc.update(&self.buffer[..n]);
            each(&self.buffer[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// The CRC-32 of everything read (since the last [`CrcReader::seek`]) and the checksum
    /// stored in the 4 bytes that follow it.
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when the stored checksum cannot be read.
    pub fn checksums(&mut self) -> CoreResult<(u32, u32)> {
        let computed = self.crc();
        let mut stored = [0u8; 4];
        if let Err(e) = self.inner.read_exact(&mut stored) {
            return Err(self.failed(&e));
        }
        Ok((computed, u32::from_le_bytes(stored)))
    }

    /// Goes to byte `offset` and starts a new CRC-32 there.
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when the file cannot seek.
    pub fn seek(&mut self, offset: u64) -> CoreResult<()> {
        if let Err(e) = self.inner.seek(SeekFrom::Start(offset)) {
            return Err(self.failed(&e));
        }
        self.crc = crc32fast::Hasher::new();
        Ok(())
    }

    /// Whether the first `body` bytes of the file match the checksum stored after them,
    /// read again from the start (this moves the reader).
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when the file cannot be read.
    pub fn checksum_holds(&mut self, body: u64) -> CoreResult<bool> {
        self.seek(0)?;
        self.read_chunks(body, |_| Ok(()))?;
        let (computed, stored) = self.checksums()?;
        Ok(computed == stored)
    }
}

/// The little-endian float32 values of `bytes` (a multiple of 4 long) appended to `values`.
pub fn extend_f32(values: &mut Vec<f32>, bytes: &[u8]) {
    values.extend(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
}
