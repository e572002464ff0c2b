//! The float32 copies an int8 index keeps for exact re-scoring (`exact_rescore`): in memory,
//! or in a file of its own, so that only the int8 codes take memory (a quarter of float32's)
//! while the re-scoring reads just the `k * rescore` shortlisted rows from the file (through
//! the OS page cache, which keeps the hot ones in memory without the index owning them).
//!
//! A file write that fails after the in-memory rows changed leaves the file out of step: the
//! copies are then marked broken and every later use says so, rather than re-scoring against
//! the wrong rows. A failed append (the way a full disk shows) is rolled back instead.
//!
//! The file belongs to the process that opened it. A `fork()`ed child would share the open
//! file (and its lock) but not the parent's future writes to the int8 codes: its writes
//! would change the rows the parent re-scores with, and the parent's writes the rows the
//! child reads. So the child may not use the file at all, and lets go of it as it starts
//! (see `inherited`); it loads the index again instead (the rayon pool in `sync` is likewise
//! rebuilt, not shared, after a fork).

use std::fs::{File, OpenOptions};
use std::io::Write;

use super::dot_portable;
use super::quantized::{f32_to_le, reserve_huge, stored_row_problem};
use super::stream::{extend_f32, write_le, CHUNK_BYTES};
use crate::errors::{out_of_memory, try_reserve, CoreError, CoreResult};

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
    /// `std::process::id()` of the process that opened `file`, the only one that may use it.
    owner: u32,
    dim: usize,
    rows: usize,
    broken: Option<String>,
    /// Its entry in [`inherited`]'s registry (None where there is no fork).
    slot: Option<inherited::Slot>,
}

impl Drop for FileRows {
    fn drop(&mut self) {
        // Before `file` closes: a fork() then never touches a descriptor number reused.
        inherited::unregister(self.slot.take());
    }
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
        // Of the file opened (a name swapped meanwhile does not count): a device or a FIFO
        // would take the copies' writes and give back something else.
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(CoreError::Persistence(format!(
                "cannot use {path} for the float32 copies: not a regular file"
            )));
        }
        try_lock(&file, Lock::Exclusive).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                CoreError::Persistence(format!(
                    "cannot use {path}: the originals file is in use by another index"
                ))
            } else {
                CoreError::Persistence(format!("cannot lock {path}: {e}"))
            }
        })?;
        file.set_len(0).map_err(failed)?;
        let slot = inherited::register(&file);
        Ok(Self::File(FileRows {
            file,
            slot,
            path: path.to_owned(),
            owner: std::process::id(),
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

    /// Checks that this process may use the copies: not a `fork()`ed child of the process
    /// that opened their file (in memory, they are always its own).
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when the file belongs to another process.
    pub fn check_process(&self) -> CoreResult<()> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::File(f) => f.owned(),
        }
    }

    /// Checks that a file of copies was not changed in length from outside the index, as a
    /// removal does before any row moves (see `FileRows::check_length`). Copies broken
    /// already are not looked at: their removal fails as it goes.
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when its length is not the rows' (the copies are then
    /// broken), or it cannot be inspected.
    pub fn check_unchanged(&mut self) -> CoreResult<()> {
        match self {
            Self::File(f) if f.broken.is_none() => f.check_length("remove from"),
            _ => Ok(()),
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
                f.check_length("append to")?;
                let start = f.offset(f.rows);
                let mut at = start;
                // Fallible, and room for the row that ends a chunk: never an abort.
                let mut chunk = Vec::new();
                try_reserve(
                    &mut chunk,
                    CHUNK_BYTES + f.dim * 4,
                    "a chunk of the float32 copies to write",
                )?;
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

    /// Appends whole rows given as little-endian bytes by `fill`, which hands them to the
    /// sink it is given, in order and in pieces of any length (a multiple of 4): rows for a
    /// file go to it as they come, with no copy of them all in memory. A failed file write
    /// is rolled back.
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when the file cannot be written (nothing is appended), or
    /// the first error of `fill`.
    pub fn append_le(
        &mut self,
        fill: impl FnOnce(&mut dyn FnMut(&[u8]) -> CoreResult<()>) -> CoreResult<()>,
    ) -> CoreResult<()> {
        match self {
            Self::Memory(values) => fill(&mut |bytes| {
                extend_f32(values, bytes);
                Ok(())
            }),
            Self::File(f) => {
                f.usable()?;
                let start = f.offset(f.rows);
                let mut at = start;
                let filled = fill(&mut |bytes| {
                    f.file
                        .write_all_at(bytes, at)
                        .map_err(|e| f.error("write", &e))?;
                    at += bytes.len() as u64;
                    Ok(())
                });
                if let Err(e) = filled {
                    if let Err(undo) = f.file.set_len(start) {
                        f.broken = Some(format!("rolling back a failed append: {undo}"));
                    }
                    return Err(e);
                }
                f.rows = (at / (f.dim as u64 * 4)) as usize;
                Ok(())
            }
        }
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
                let mut row = Vec::with_capacity(dim);
                extend_f32(&mut row, &bytes);
                // The file is locked against other indexes only (an advisory lock): a
                // writer from outside would give scores that are not cosines, and NaN.
                match stored_row_problem(r, &row) {
                    None => Ok(row),
                    Some(why) => Err(CoreError::Persistence(format!(
                        "the float32 copies in {} were changed from outside the index ({why}): \
                         rebuild it",
                        f.path
                    ))),
                }
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

    /// Writes every row, little-endian, to `out`, a chunk at a time through `scratch` (the
    /// copies are streamed: no copy of them all is made, and a file's are not loaded whole).
    ///
    /// # Errors
    /// [`CoreError::Persistence`] when reading the copies or writing `out` fails.
    pub fn write_le(&self, scratch: &mut Vec<u8>, out: &mut impl Write) -> CoreResult<()> {
        let io = |e: std::io::Error| CoreError::Persistence(format!("cannot write: {e}"));
        match self {
            Self::Memory(values) => write_le(values, f32::to_le_bytes, scratch, out).map_err(io),
            Self::File(f) => {
                f.usable()?;
                let total = f.offset(f.rows);
                scratch.resize(CHUNK_BYTES, 0);
                let mut at = 0u64;
                while at < total {
                    let len = (total - at).min(CHUNK_BYTES as u64) as usize;
                    let read = f.file.read_exact_at(&mut scratch[..len], at);
                    read.map_err(|e| f.error("read", &e))?;
                    out.write_all(&scratch[..len]).map_err(io)?;
                    at += len as u64;
                }
                Ok(())
            }
        }
    }
}

impl FileRows {
    /// Checks, with one metadata call, that the file holds the index's rows and no more: a
    /// file changed from outside (cut short, say) would otherwise be grown back with zeros
    /// that score as real rows. A mismatch breaks the copies.
    fn check_length(&mut self, doing: &str) -> CoreResult<()> {
        let expected = self.offset(self.rows);
        let len = self.file.metadata().map(|m| m.len());
        let len = self.check(len, "inspect")?;
        if len == expected {
            return Ok(());
        }
        let why = format!(
            "it holds {len} bytes, the index expects {expected}: it was changed from outside \
             the index"
        );
        self.broken = Some(why.clone());
        Err(CoreError::Persistence(format!(
            "cannot {doing} the float32 copies in {}: {why}",
            self.path
        )))
    }

    fn offset(&self, row: usize) -> u64 {
        (row * self.dim * 4) as u64
    }

    fn error(&self, what: &str, e: &std::io::Error) -> CoreError {
        CoreError::Persistence(format!(
            "cannot {what} the float32 copies in {}: {e}",
            self.path
        ))
    }

    /// Makes the file look opened by process `pid` (a stand-in for a `fork()` in tests).
    #[cfg(test)]
    pub fn set_owner_for_test(&mut self, pid: u32) {
        self.owner = pid;
    }

    /// Checks that this process opened the file (see the module docs).
    fn owned(&self) -> CoreResult<()> {
        let pid = std::process::id();
        if pid == self.owner {
            return Ok(());
        }
        Err(CoreError::Persistence(format!(
            "cannot use the float32 copies in {}: the file belongs to process {} and this is \
             process {pid}, a fork() of it; the two would read and write the same rows, so \
             load the index again in this process (VectorIndex.load with an originals_path \
             of its own)",
            self.path, self.owner
        )))
    }

    /// Checks that the copies may be used: by this process, and not marked broken.
    fn usable(&self) -> CoreResult<()> {
        self.owned()?;
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

/// Whether the regular file at `path` holds the float32 copies of a live index (in this
/// process or another): its lock is held. A path that is missing, not a regular file, or
/// cannot be opened is not in use.
///
/// The check takes a shared lock for an instant and releases it (by closing the file):
/// checks running at once (concurrent saves to one path) never see each other, only the
/// exclusive lock an index holds.
pub fn in_use(path: &str) -> bool {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    // Opened without waiting (a FIFO swapped in meanwhile must not block the caller).
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    match options.open(path) {
        Ok(file) => {
            try_lock(&file, Lock::Shared).is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock)
        }
        Err(_) => false,
    }
}

/// An advisory lock's kind: an index holds its file exclusively; a check shares it.
#[derive(Clone, Copy)]
enum Lock {
    Shared,
    Exclusive,
}

/// Takes an advisory lock of `kind` on `file` without waiting (`ErrorKind::WouldBlock` when
/// another open file holds a lock that excludes it); closing the file releases it.
#[cfg(unix)]
fn try_lock(file: &File, kind: Lock) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let operation = match kind {
        Lock::Shared => libc::LOCK_SH,
        Lock::Exclusive => libc::LOCK_EX,
    };
    // SAFETY: `flock` only reads the descriptor, which `file` keeps open for the call.
    #[allow(unsafe_code)]
    if unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// No advisory lock where `flock` is missing.
#[cfg(not(unix))]
fn try_lock(_file: &File, _kind: Lock) -> std::io::Result<()> {
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

/// The lock a `fork()`ed child would keep. A `flock` belongs to the open file, which a
/// child shares with its parent: a child alive (a worker pool's) held the lock of a file
/// whose index the parent had dropped, and the parent could not open the file again. As
/// the child may not use the file (see the module docs), its descriptor is pointed at
/// `/dev/null` right after the fork: the parent's lock stays, and goes with the parent's
/// index.
#[cfg(unix)]
mod inherited {
    use std::fs::File;
    use std::os::unix::io::AsRawFd;
    use std::ptr;
    use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};
    use std::sync::Once;

    /// Slots of one chunk of the registry.
    const CHUNK: usize = 256;

    /// Descriptors of open files (-1: a free slot), in chunks chained as more files are open
    /// at once. Atomics, not a lock: a fork taken while another thread held a lock would
    /// leave the child's copy locked for good. Chunks are never freed (the child walks them
    /// without allocating): the registry keeps the most files ever open at once.
    struct Chunk {
        slots: [AtomicI32; CHUNK],
        next: AtomicPtr<Chunk>,
    }

    static FIRST: Chunk = Chunk {
        slots: [const { AtomicI32::new(-1) }; CHUNK],
        next: AtomicPtr::new(ptr::null_mut()),
    };
    static HANDLER: Once = Once::new();

    /// A registered file's slot.
    #[derive(Debug)]
    pub struct Slot(&'static AtomicI32);

    /// The chunks of the registry, in order.
    fn chunks() -> impl Iterator<Item = &'static Chunk> {
        std::iter::successors(Some(&FIRST), |chunk| {
            // SAFETY: a non-null `next` points at a leaked, never freed chunk.
            #[allow(unsafe_code)]
            unsafe {
                chunk.next.load(Ordering::Acquire).as_ref()
            }
        })
    }

    /// Registers `file` to be let go of in forked children, and returns its slot.
    pub fn register(file: &File) -> Option<Slot> {
        HANDLER.call_once(|| {
            // SAFETY: registers a handler that only makes async-signal-safe calls.
            #[allow(unsafe_code)]
            unsafe {
                libc::pthread_atfork(None, None, Some(in_child));
            }
        });
        let fd = file.as_raw_fd();
        let mut chunk = &FIRST;
        loop {
            if let Some(slot) = chunk.slots.iter().find(|slot| {
                slot.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            }) {
                return Some(Slot(slot));
            }
            let mut next = chunk.next.load(Ordering::Acquire);
            if next.is_null() {
                let fresh = Box::into_raw(Box::new(Chunk {
                    slots: [const { AtomicI32::new(-1) }; CHUNK],
                    next: AtomicPtr::new(ptr::null_mut()),
                }));
                next = match chunk.next.compare_exchange(
                    ptr::null_mut(),
                    fresh,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => fresh,
                    Err(theirs) => {
                        // Another thread chained one first: ours was never shared.
                        // SAFETY: `fresh` came from `Box::into_raw` just above.
                        #[allow(unsafe_code)]
                        let unshared = unsafe { Box::from_raw(fresh) };
                        drop(unshared);
                        theirs
                    }
                };
            }
            // SAFETY: a non-null `next` points at a leaked, never freed chunk.
            #[allow(unsafe_code)]
            let following = unsafe { next.as_ref() };
            chunk = following?;
        }
    }

    /// Frees a slot of [`register`].
    pub fn unregister(slot: Option<Slot>) {
        if let Some(Slot(slot)) = slot {
            slot.store(-1, Ordering::Release);
        }
    }

    /// Points every registered descriptor at `/dev/null` (in the child of a fork).
    extern "C" fn in_child() {
        let null = c"/dev/null";
        // SAFETY: `open`, `dup2`, `fcntl` and `close` are async-signal-safe; each descriptor
        // is one of an open file of this process (registered while open, and forked open).
        #[allow(unsafe_code)]
        unsafe {
            let mut devnull = -1;
            for slot in chunks().flat_map(|chunk| &chunk.slots) {
                let fd = slot.load(Ordering::Acquire);
                if fd < 0 {
                    continue;
                }
                if devnull < 0 {
                    devnull = libc::open(null.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                    if devnull < 0 {
                        return;
                    }
                }
                if libc::dup2(devnull, fd) == fd {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            if devnull >= 0 {
                libc::close(devnull);
            }
        }
    }
}

/// No fork, nothing a child could keep.
#[cfg(not(unix))]
mod inherited {
    use std::fs::File;

    /// Never made: nothing to register.
    #[derive(Debug)]
    pub enum Slot {}

    pub fn register(_file: &File) -> Option<Slot> {
        None
    }

    pub fn unregister(_slot: Option<Slot>) {}
}
