//! The float32 copies an int8 index keeps for exact re-scoring (`exact_rescore`): in memory,
//! or in a file of its own, so that only the int8 codes take memory (a quarter of float32's)
//! while the re-scoring reads just the `k * rescore` shortlisted rows from the file (through
//! the OS page cache, which keeps the hot ones in memory without the index owning them).
//!
//! A file write that fails after the in-memory rows changed leaves the file out of step: the
//! copies are then marked broken and every later use says so, rather than re-scoring against
//! the wrong rows. A failed append (the way a full disk shows) is rolled back instead.

use std::fs::{File, OpenOptions};
use std::io::Write;

use super::dot_portable;
use super::quantized::{f32_from_le, f32_to_le, reserve_huge};
use crate::errors::{out_of_memory, CoreError, CoreResult};

/// Where the float32 copies live.
#[derive(Debug)]
pub enum Originals {
    /// One contiguous block, row after row.
    Memory(Vec<f32>),
    /// Row `r` at byte `r * dim * 4` of a file, little-endian.
    File(FileRows),
}

/// Float32 rows in a file the index owns (created, or truncated, when the index is).
#[derive(Debug)]
pub struct FileRows {
    file: File,
    path: String,
    dim: usize,
    rows: usize,
    broken: Option<String>,
}

impl PartialEq for Originals {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Memory(a), Self::Memory(b)) => a == b,
            (Self::File(a), Self::File(b)) => a.path == b.path && a.rows == b.rows,
            _ => false,
        }
    }
}

/// Bytes a file read or write moves at once.
const CHUNK_BYTES: usize = 1 << 20;

fn le_bytes(values: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::new();
    f32_to_le(values, &mut bytes);
    bytes
}

impl Originals {
    /// Empty copies in a new file at `path` (an existing file there is truncated). The file
    /// is locked (an exclusive advisory `flock`) for as long as the copies live, so a second
    /// index cannot take the same file and truncate the rows of the first.
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when the file cannot be created, or another index (in this
    /// process or another) holds it.
    pub fn in_file(path: &str, dim: usize) -> CoreResult<Self> {
        let failed =
            |e: std::io::Error| CoreError::Persistence(format!("cannot create {path}: {e}"));
        // Not `truncate(true)`: the file is emptied only once it is locked.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(failed)?;
        lock_exclusive(&file).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                CoreError::Persistence(format!(
                    "cannot use {path}: the originals file is in use by another index"
                ))
            } else {
                CoreError::Persistence(format!("cannot lock {path}: {e}"))
            }
        })?;
        file.set_len(0).map_err(failed)?;
        Ok(Self::File(FileRows {
            file,
            path: path.to_owned(),
            dim,
            rows: 0,
            broken: None,
        }))
    }

    /// The file holding the copies, if they are not in memory.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Memory(_) => None,
            Self::File(f) => Some(&f.path),
        }
    }

    /// Bytes of memory the copies take (none when they live in a file).
    pub fn nbytes_in_memory(&self) -> usize {
        match self {
            Self::Memory(values) => values.len() * 4,
            Self::File(_) => 0,
        }
    }

    /// Room for `rows` more rows.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when the memory cannot be allocated.
    pub fn reserve(&mut self, rows: usize, dim: usize) -> CoreResult<()> {
        if let Self::Memory(values) = self {
            let extra = rows
                .checked_mul(dim)
                .ok_or_else(|| out_of_memory(usize::MAX, "the float32 copies"))?;
            reserve_huge(values, extra)?;
        }
        Ok(())
    }

    /// Appends whole rows, written to a file 1 MiB at a time (no copy of the whole batch);
    /// a failed file write is rolled back.
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when the file cannot be written (nothing is appended).
    pub fn append<'a>(&mut self, rows: impl Iterator<Item = &'a [f32]>) -> CoreResult<()> {
        match self {
            Self::Memory(values) => rows.for_each(|row| values.extend_from_slice(row)),
            Self::File(f) => {
                f.usable()?;
                let start = f.offset(f.rows);
                // One metadata call per batch: a file changed from outside (truncated, say)
                // would otherwise get a zero-filled gap that scores as real rows.
                let len = f.file.metadata().map(|m| m.len());
                let len = f.check(len, "inspect")?;
                if len != start {
                    let why = format!(
                        "it holds {len} bytes, the index expects {start}: it was changed \
                         from outside the index"
                    );
                    f.broken = Some(why.clone());
                    return Err(CoreError::Persistence(format!(
                        "cannot append to the float32 copies in {}: {why}",
                        f.path
                    )));
                }
                let mut at = start;
                let mut chunk = Vec::with_capacity(CHUNK_BYTES);
                let mut rows = rows.peekable();
                while rows.peek().is_some() {
                    chunk.clear();
                    while chunk.len() < CHUNK_BYTES {
                        match rows.next() {
                            Some(row) => f32_to_le(row, &mut chunk),
                            None => break,
                        }
                    }
                    if let Err(e) = f.file.write_all_at(&chunk, at) {
                        if let Err(undo) = f.file.set_len(start) {
                            f.broken = Some(format!("rolling back a failed append: {undo}"));
                        }
                        return Err(f.error("write", &e));
                    }
                    at += chunk.len() as u64;
                }
                f.rows = (at / (f.dim as u64 * 4)) as usize;
            }
        }
        Ok(())
    }

    /// Overwrites row `r`.
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when the file cannot be written (the copies are then broken).
    pub fn set(&mut self, r: usize, row: &[f32]) -> CoreResult<()> {
        match self {
            Self::Memory(values) => values[r * row.len()..(r + 1) * row.len()].copy_from_slice(row),
            Self::File(f) => {
                f.usable()?;
                let result = f.file.write_all_at(&le_bytes(row), f.offset(r));
                f.check(result, "write")?;
            }
        }
        Ok(())
    }

    /// Moves the last row into row `r` and drops the last row (swap-remove).
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when the file cannot be updated (the copies are then broken).
    pub fn swap_remove(&mut self, r: usize, dim: usize) -> CoreResult<()> {
        match self {
            Self::Memory(values) => {
                let last = values.len() / dim - 1;
                values.copy_within(last * dim..(last + 1) * dim, r * dim);
                values.truncate(last * dim);
            }
            Self::File(f) => {
                f.usable()?;
                let last = f.rows - 1;
                if r != last {
                    let mut row = vec![0u8; dim * 4];
                    let moved = f.file.read_exact_at(&mut row, f.offset(last));
                    f.check(moved, "read")?;
                    let written = f.file.write_all_at(&row, f.offset(r));
                    f.check(written, "write")?;
                }
                let shrunk = f.file.set_len(f.offset(last));
                f.check(shrunk, "truncate")?;
                f.rows = last;
            }
        }
        Ok(())
    }

    /// Row `r`.
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when the file cannot be read or the copies are broken.
    pub fn row(&self, r: usize, dim: usize) -> CoreResult<Vec<f32>> {
        match self {
            Self::Memory(values) => Ok(values[r * dim..(r + 1) * dim].to_vec()),
            Self::File(f) => {
                let mut bytes = vec![0u8; dim * 4];
                f.read_row(r, &mut bytes)?;
                Ok(f32_from_le(&bytes))
            }
        }
    }

    /// Exact score of row `r` against the normalized query `q`.
    ///
    /// # Errors
    /// As [`Originals::row`].
    pub fn dot(&self, r: usize, q: &[f32]) -> CoreResult<f32> {
        match self {
            Self::Memory(values) => Ok(dot_portable(&values[r * q.len()..(r + 1) * q.len()], q)),
            Self::File(_) => Ok(dot_portable(&self.row(r, q.len())?, q)),
        }
    }

    /// Writes every row, little-endian, to `out` (the file is streamed, not loaded whole).
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when reading the copies or writing `out` fails.
    pub fn write_le(&self, out: &mut impl Write) -> CoreResult<()> {
        let io = |e: std::io::Error| CoreError::Persistence(format!("cannot write: {e}"));
        match self {
            Self::Memory(values) => {
                for chunk in values.chunks(CHUNK_BYTES / 4) {
                    out.write_all(&le_bytes(chunk)).map_err(io)?;
                }
            }
            Self::File(f) => {
                f.usable()?;
                let total = f.offset(f.rows);
                let mut buffer = vec![0u8; CHUNK_BYTES];
                let mut at = 0u64;
                while at < total {
                    let len = (total - at).min(buffer.len() as u64) as usize;
                    let read = f.file.read_exact_at(&mut buffer[..len], at);
                    read.map_err(|e| f.error("read", &e))?;
                    out.write_all(&buffer[..len]).map_err(io)?;
                    at += len as u64;
                }
            }
        }
        Ok(())
    }
}

impl FileRows {
    fn offset(&self, row: usize) -> u64 {
        (row * self.dim * 4) as u64
    }

    fn error(&self, what: &str, e: &std::io::Error) -> CoreError {
        CoreError::Persistence(format!(
            "cannot {what} the float32 copies in {}: {e}",
            self.path
        ))
    }

    fn usable(&self) -> CoreResult<()> {
        match &self.broken {
            None => Ok(()),
            Some(why) => Err(CoreError::Persistence(format!(
                "the float32 copies in {} are out of step with the index ({why}): rebuild it",
                self.path
            ))),
        }
    }

    /// Marks the copies broken when `result` failed.
    fn check<T>(&mut self, result: std::io::Result<T>, what: &str) -> CoreResult<T> {
        result.map_err(|e| {
            let error = self.error(what, &e);
            self.broken = Some(error.to_string());
            error
        })
    }

    fn read_row(&self, r: usize, bytes: &mut [u8]) -> CoreResult<()> {
        self.usable()?;
        self.file
            .read_exact_at(bytes, self.offset(r))
            .map_err(|e| self.error("read", &e))
    }
}

/// Takes an exclusive advisory lock on `file` without waiting (`ErrorKind::WouldBlock` when
/// another open file holds it); closing the file releases it.
#[cfg(unix)]
fn lock_exclusive(file: &File) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: `flock` only reads the descriptor, which `file` keeps open for the call.
    #[allow(unsafe_code)]
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// No advisory lock where `flock` is missing.
#[cfg(not(unix))]
fn lock_exclusive(_file: &File) -> std::io::Result<()> {
    Ok(())
}

/// Positioned reads and writes (`pread`/`pwrite`), which need no seek and so work through `&File`.
#[cfg(unix)]
use std::os::unix::fs::FileExt;

#[cfg(windows)]
trait FileExt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
}

#[cfg(windows)]
impl FileExt for File {
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        use std::os::windows::fs::FileExt as _;
        while !buf.is_empty() {
            match self.seek_read(buf, offset)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }

    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
        use std::os::windows::fs::FileExt as _;
        while !buf.is_empty() {
            let n = self.seek_write(buf, offset)?;
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
}
