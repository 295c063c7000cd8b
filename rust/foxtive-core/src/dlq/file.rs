//! Dead letters in a local file: append-only JSON lines (see [`super::codec`]).
//!
//! - Each `put` appends its batch with one `write` and `fsync`s before it
//!   returns, so an acked message's record is on disk. A failed write (disk
//!   full, no permission) is cut back off, so a batch is kept whole or not at
//!   all, and the error says which file and why.
//! - A crash mid-write leaves at most a torn last line. Readers skip it; the
//!   next append starts on a fresh line, so earlier records are never touched.
//! - Removal rewrites the file to a temporary next to it, `fsync`s it and
//!   renames it over the original: readers see the old file or the new one.
//! - Lines this version cannot read (torn by a crash, damaged, or a newer
//!   foxtive's records) are never dropped: reads skip them and count them
//!   (a WARNING says how many), and the next rewrite (replay, purge) first
//!   appends them, as they are, to the sidecar `<path>.corrupt` (0600,
//!   `fsync`ed) and says how many it set aside.
//! - The file (and its `.lock` companion) are created with mode 0600: dead
//!   letters hold message bodies.
//! - Processes sharing the file (`foxtive run --processes N`, or `foxtive dlq`
//!   next to running workers) take an exclusive `flock` on `<path>.lock` for
//!   every change, so a rewrite never drops a record appended meanwhile.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::{codec, DeadLetter, DeadLetterStore, StoredDeadLetter};
use crate::{Error, Result};

/// Mode of every file the store creates: owner read/write only.
const MODE: u32 = 0o600;

/// The file store.
pub struct FileStore {
    path: PathBuf,
    name: String,
    /// Unreadable lines the last read skipped.
    skipped: Arc<AtomicUsize>,
    /// Unreadable lines the last rewrite moved to the sidecar.
    set_aside: Arc<AtomicUsize>,
}

impl FileStore {
    /// A store at `path`. Nothing is opened yet: a path that cannot be written
    /// fails at the first `put`, and then only that batch.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        if path.as_os_str().is_empty() || path.file_name().is_none() {
            return Err(Error::Config(format!(
                "path: expected a file path, got {:?}",
                path.display().to_string()
            )));
        }
        let name = format!("file:{}", path.display());
        Ok(FileStore {
            path,
            name,
            skipped: Arc::default(),
            set_aside: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where unreadable lines are set aside: `<path>.corrupt`.
    pub fn corrupt_path(&self) -> PathBuf {
        sidecar(&self.path)
    }

    /// Run blocking file work off the async threads.
    async fn blocking<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&Path) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || work(&path))
            .await
            .map_err(|e| Error::DeadLetter(format!("file store task failed: {e}")))?
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::DeadLetter(format!("cannot {what} {}: {e}", path.display()))
}

/// A key no other record has: time plus randomness (processes share files).
fn new_key() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:016x}", rand::random::<u64>())
}

fn sidecar(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".corrupt");
    PathBuf::from(p)
}

/// An exclusive `flock` on `<path>.lock`, released when dropped.
struct FileLock(File);

impl FileLock {
    fn acquire(path: &Path) -> Result<FileLock> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(MODE)
            .open(&lock_path)
            .map_err(|e| {
                Error::DeadLetter(format!(
                    "cannot write to {}: cannot open its lock file {}: {e}",
                    path.display(),
                    lock_path.display()
                ))
            })?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock(file));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != ErrorKind::Interrupted {
                return Err(io_error("lock", &lock_path, err));
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release it too.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Make a new directory entry durable.
fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync the directory of", path, e))
}

fn append(path: &Path, lines: &[u8]) -> Result<()> {
    let _lock = FileLock::acquire(path)?;
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(MODE)
        .open(path)
        .map_err(|e| io_error("open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| io_error("read the size of", path, e))?
        .len();
    // A torn last line (crash mid-write) must not swallow our first record.
    let mut last = [0u8; 1];
    let torn = len > 0
        && file
            .read_at(&mut last, len - 1)
            .map_err(|e| io_error("read", path, e))?
            == 1
        && last[0] != b'\n';
    let written = if torn {
        let mut buf = Vec::with_capacity(lines.len() + 1);
        buf.push(b'\n');
        buf.extend_from_slice(lines);
        file.write_all(&buf)
    } else {
        file.write_all(lines)
    }
    .and_then(|()| file.sync_data());
    if let Err(e) = written {
        // Keep the batch whole or absent: cut off what part of it got in.
        // Safe under the lock: nobody else appends meanwhile.
        let _ = file.set_len(len).and_then(|()| file.sync_data());
        return Err(io_error("write to", path, e));
    }
    if !existed {
        sync_dir(path)?;
    }
    Ok(())
}

/// Every line of the file with what it holds; a missing file is empty.
/// The flag says whether the line ended with a newline (complete).
fn read_lines(path: &Path) -> Result<Vec<(Vec<u8>, bool)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("open", path, e)),
    };
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| io_error("read", path, e))?;
        if n == 0 {
            return Ok(out);
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
        }
        out.push((line, complete));
    }
}

/// What one line holds.
enum Line {
    Record(Box<StoredDeadLetter>),
    /// Nothing: blank.
    Blank,
    /// Bytes that are not a record this version can read, with why.
    Unreadable(String),
}

fn parse(line: &[u8]) -> Line {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Line::Blank;
    }
    let parsed = std::str::from_utf8(line)
        .map_err(|e| Error::DeadLetter(format!("not UTF-8: {e}")))
        .and_then(codec::decode);
    match parsed {
        Ok(stored) => Line::Record(Box::new(stored)),
        Err(e) => Line::Unreadable(e.to_string()),
    }
}

/// The records of the file, up to `limit`, and how many complete lines could
/// not be read. An incomplete last line is not counted: it may be an append
/// in progress (readers take no lock).
fn read_records(path: &Path, limit: usize) -> Result<(Vec<StoredDeadLetter>, usize)> {
    let mut records = Vec::new();
    let mut unreadable = 0;
    let mut why = String::new();
    for (line, complete) in read_lines(path)? {
        match parse(&line) {
            Line::Record(stored) if records.len() < limit => records.push(*stored),
            Line::Record(_) | Line::Blank => {}
            Line::Unreadable(_) if !complete => {}
            Line::Unreadable(e) => {
                unreadable += 1;
                why = e;
            }
        }
    }
    if unreadable > 0 {
        tracing::warn!(file = %path.display(), unreadable, last_error = %why,
            corrupt = %sidecar(path).display(),
            "skipped unreadable dead-letter records; the next replay or purge sets them aside");
    }
    Ok((records, unreadable))
}

/// Append `lines` to the sidecar and make them durable, before the main file
/// loses them.
fn set_aside(path: &Path, lines: &[&[u8]]) -> Result<()> {
    let corrupt = sidecar(path);
    let existed = corrupt.exists();
    let mut buf = Vec::new();
    for line in lines {
        buf.extend_from_slice(line);
        buf.push(b'\n');
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(MODE)
        .open(&corrupt)
        .and_then(|mut f| f.write_all(&buf).and_then(|()| f.sync_data()))
        .map_err(|e| io_error("set aside unreadable records in", &corrupt, e))?;
    if !existed {
        sync_dir(&corrupt)?;
    }
    Ok(())
}

fn rewrite(path: &Path, lines: &[&[u8]]) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(MODE)
            .open(&tmp)
            .map_err(|e| io_error("create", &tmp, e))?;
        let mut buf = Vec::new();
        for line in lines {
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        file.write_all(&buf)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("write to", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_error("replace", path, e))?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Rewrite the file without the records `drop` selects. Unreadable lines
/// (a torn tail included: under the lock it is a crash's remnant, not an
/// append in progress) move to the sidecar first. Returns (removed, set aside).
fn remove_where(path: &Path, drop: impl Fn(&StoredDeadLetter) -> bool) -> Result<(usize, usize)> {
    let _lock = FileLock::acquire(path)?;
    let lines = read_lines(path)?;
    let mut kept: Vec<&[u8]> = Vec::with_capacity(lines.len());
    let mut unreadable: Vec<&[u8]> = Vec::new();
    let mut removed = 0;
    for (line, _) in &lines {
        match parse(line) {
            Line::Record(stored) if drop(&stored) => removed += 1,
            Line::Record(_) => kept.push(line),
            Line::Blank => {}
            Line::Unreadable(_) => unreadable.push(line),
        }
    }
    if !unreadable.is_empty() {
        set_aside(path, &unreadable)?;
        tracing::warn!(file = %path.display(), set_aside = unreadable.len(),
            corrupt = %sidecar(path).display(),
            "set aside unreadable dead-letter records (kept as they were)");
    }
    if removed > 0 || kept.len() != lines.len() {
        rewrite(path, &kept)?;
    }
    Ok((removed, unreadable.len()))
}

#[async_trait]
impl DeadLetterStore for FileStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, records: Vec<DeadLetter>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        for record in &records {
            lines.extend_from_slice(codec::encode(&new_key(), record).as_bytes());
            lines.push(b'\n');
        }
        self.blocking(move |path| append(path, &lines)).await
    }

    async fn list(&self, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        let (records, skipped) = self.blocking(move |path| read_records(path, limit)).await?;
        self.skipped.store(skipped, Ordering::Relaxed);
        Ok(records)
    }

    async fn remove(&self, keys: &[String]) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let keys: std::collections::HashSet<String> = keys.iter().cloned().collect();
        let (removed, aside) = self
            .blocking(move |path| remove_where(path, |s| keys.contains(&s.key)))
            .await?;
        self.set_aside.store(aside, Ordering::Relaxed);
        Ok(removed)
    }

    async fn purge(&self) -> Result<usize> {
        let (removed, aside) = self
            .blocking(|path| {
                if !path.exists() {
                    return Ok((0, 0));
                }
                remove_where(path, |_| true)
            })
            .await?;
        self.set_aside.store(aside, Ordering::Relaxed);
        Ok(removed)
    }

    async fn count(&self) -> Result<usize> {
        self.list(usize::MAX).await.map(|v| v.len())
    }

    async fn exists(&self) -> Result<bool> {
        Ok(self.path.is_file())
    }

    fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    fn set_aside(&self) -> usize {
        self.set_aside.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::testing::sample;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "foxtive-dlq-{tag}-{}-{:x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700));
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn named(id: &str) -> DeadLetter {
        DeadLetter {
            original_id: id.into(),
            ..sample()
        }
    }

    #[tokio::test]
    async fn appends_lists_and_survives_reopening() {
        let dir = TempDir::new("basic");
        let path = dir.0.join("dead.jsonl");
        let store = FileStore::new(&path).unwrap();
        assert_eq!(store.count().await.unwrap(), 0, "a missing file is empty");
        store.put(vec![named("a"), named("b")]).await.unwrap();
        store.put(vec![named("c")]).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let reopened = FileStore::new(&path).unwrap();
        let all = reopened.list(usize::MAX).await.unwrap();
        let ids: Vec<_> = all.iter().map(|s| s.record.original_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(
            all[0].record,
            named("a"),
            "binary body and typed headers intact"
        );
        assert_eq!(reopened.list(2).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_skipped_and_never_spoils_the_next_record() {
        let dir = TempDir::new("torn");
        let path = dir.0.join("dead.jsonl");
        let store = FileStore::new(&path).unwrap();
        store.put(vec![named("a"), named("b")]).await.unwrap();
        // A crash half-way through writing a third record.
        let line = codec::encode("k", &named("torn"));
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&line.as_bytes()[..line.len() / 2]).unwrap();
        drop(f);
        let ids = |v: Vec<StoredDeadLetter>| -> Vec<String> {
            v.into_iter().map(|s| s.record.original_id).collect()
        };
        assert_eq!(ids(store.list(10).await.unwrap()), ["a", "b"]);
        store.put(vec![named("c")]).await.unwrap();
        assert_eq!(ids(store.list(10).await.unwrap()), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn remove_rewrites_and_sets_aside_lines_it_cannot_read() {
        let dir = TempDir::new("remove");
        let path = dir.0.join("dead.jsonl");
        let store = FileStore::new(&path).unwrap();
        store.put(vec![named("a"), named("b")]).await.unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"v\": 2, \"from\": \"the future\"}\n")
            .unwrap();
        drop(f);
        store.put(vec![named("c")]).await.unwrap();
        let listed = store.list(10).await.unwrap();
        assert_eq!(listed.len(), 3);
        let b_key = listed[1].key.clone();
        assert_eq!(store.remove(std::slice::from_ref(&b_key)).await.unwrap(), 1);
        assert_eq!(store.set_aside(), 1);
        assert_eq!(store.remove(&[b_key]).await.unwrap(), 0);
        assert_eq!(store.set_aside(), 0, "nothing more to set aside");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("the future"), "set aside, not kept in place");
        let aside = std::fs::read_to_string(store.corrupt_path()).unwrap();
        assert_eq!(aside, "{\"v\": 2, \"from\": \"the future\"}\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the rewritten file keeps mode 0600");
        let left: Vec<_> = store
            .list(10)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.record.original_id)
            .collect();
        assert_eq!(left, ["a", "c"]);
        assert_eq!(store.purge().await.unwrap(), 2);
        assert_eq!(store.count().await.unwrap(), 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[tokio::test]
    async fn a_torn_record_in_the_middle_is_counted_then_set_aside_not_deleted() {
        let dir = TempDir::new("middle");
        let path = dir.0.join("dead.jsonl");
        let store = FileStore::new(&path).unwrap();
        assert!(!store.exists().await.unwrap());
        store.put(vec![named("a")]).await.unwrap();
        assert!(store.exists().await.unwrap());
        let line = codec::encode("k", &named("torn"));
        let torn = &line.as_bytes()[..line.len() / 2];
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(torn).unwrap();
        drop(f);
        store.put(vec![named("b")]).await.unwrap();
        assert_eq!(store.list(10).await.unwrap().len(), 2);
        assert_eq!(store.skipped(), 1, "the torn line in the middle is counted");
        assert_eq!(store.purge().await.unwrap(), 2);
        assert_eq!(store.set_aside(), 1);
        let mut kept = std::fs::read(store.corrupt_path()).unwrap();
        assert_eq!(kept.pop(), Some(b'\n'));
        assert_eq!(kept, torn, "the unreadable bytes are kept as they were");
        let mode = std::fs::metadata(store.corrupt_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(store.list(10).await.unwrap().len(), 0);
        assert_eq!(store.skipped(), 0);
    }

    #[tokio::test]
    async fn an_unwritable_place_is_a_clear_error() {
        let dir = TempDir::new("ro");
        // Under a regular file: fails for every user, root included.
        let blocker = dir.0.join("not-a-dir");
        std::fs::write(&blocker, b"").unwrap();
        let store = FileStore::new(blocker.join("dead.jsonl")).unwrap();
        let err = store.put(vec![named("a")]).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::DeadLetter(_)));
        assert!(
            text.contains("cannot write to") && text.contains("dead.jsonl"),
            "{text}"
        );
        // A directory without write permission (not enforced for root).
        let ro = dir.0.join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        if std::fs::write(ro.join("probe"), b"").is_err() {
            let store = FileStore::new(ro.join("dead.jsonl")).unwrap();
            let text = store.put(vec![named("a")]).await.unwrap_err().to_string();
            assert!(text.contains("ermission denied"), "{text}");
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_directory_is_not_a_file_path() {
        assert!(matches!(FileStore::new(""), Err(Error::Config(_))));
        assert!(matches!(FileStore::new("/tmp/.."), Err(Error::Config(_))));
    }
}
