//! The log of one attempt, bounded on disk: the step supervisor writes what
//! the process prints through a [`BoundedLog`], which keeps the first and
//! the last bytes with a marker in between once the output outgrows
//! `worker.max_log_bytes`. The file stays readable while the step runs (the
//! API serves it for a running attempt); [`read_log`] reads it back.

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, Seek, SeekFrom, Write},
    path::Path,
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use uuid::Uuid;

/// How often, at least, a running attempt's log file is looked at for new
/// output to write to the database; a large log is written less often
/// (one more second per [`SHIP_BYTES_PER_SECOND`] held, up to
/// [`SHIP_EVERY_MAX`]), since a rewrite of a truncated log writes it whole.
const SHIP_EVERY: Duration = Duration::from_secs(1);
const SHIP_EVERY_MAX: Duration = Duration::from_secs(10);
const SHIP_BYTES_PER_SECOND: u64 = 128 * 1024;
/// The last bytes written that are compared to tell growth from a rewrite.
const SHIP_OVERLAP: u64 = 64;

/// Room kept for the marker between head and tail.
const MARKER_RESERVE: u64 = 64;
/// The smallest bound honoured (`worker.max_log_bytes`, checked by the
/// configuration): a head, a marker and a tail must fit.
pub use crate::config::MIN_LOG_BYTES;
const _: () = assert!(MIN_LOG_BYTES >= 4 * MARKER_RESERVE);
/// How often, at most, a truncated log's tail is rewritten while output flows.
const REWRITE_EVERY: Duration = Duration::from_millis(200);
/// What [`read_log`] keeps of a file not written through a [`BoundedLog`]
/// (an attempt from before logs were bounded).
const READ_CAP: u64 = 64 * 1024 * 1024;

/// The text between the head and the tail of a truncated log.
pub fn marker(omitted: u64) -> String {
    format!("\n[... {omitted} bytes omitted ...]\n")
}

/// Where the text after a truncated log's marker begins, if it has one.
pub fn end_of_marker(log: &[u8]) -> Option<usize> {
    const END: &[u8] = b" bytes omitted ...]\n";
    log.windows(END.len()).position(|w| w == END).map(|at| at + END.len())
}

/// How a bound of `max` bytes is split: (head, tail).
fn split(max: u64) -> (u64, u64) {
    let max = max.max(MIN_LOG_BYTES);
    let head = (max - MARKER_RESERVE) / 2;
    (head, max - MARKER_RESERVE - head)
}

/// A log file that never grows past its bound. While the output fits, the
/// file is the output; past it, the file is the head, a marker naming how
/// many bytes were left out, and the latest tail, rewritten at most every
/// [`REWRITE_EVERY`] and at [`BoundedLog::finish`].
pub struct BoundedLog {
    file: File,
    max: u64,
    head_cap: u64,
    tail_cap: u64,
    head_len: u64,
    total: u64,
    /// The last `tail_cap` bytes after the head.
    tail: VecDeque<u8>,
    dirty: bool,
    last_rewrite: Instant,
}

impl BoundedLog {
    pub fn new(file: File, max: u64) -> BoundedLog {
        let (head_cap, tail_cap) = split(max);
        BoundedLog {
            file,
            max: max.max(MIN_LOG_BYTES),
            head_cap,
            tail_cap,
            head_len: 0,
            total: 0,
            tail: VecDeque::new(),
            dirty: false,
            last_rewrite: Instant::now(),
        }
    }

    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.total += data.len() as u64;
        if self.head_len < self.head_cap {
            let n = (self.head_cap - self.head_len).min(data.len() as u64) as usize;
            self.file.write_all(&data[..n])?;
            self.head_len += n as u64;
            data = &data[n..];
        }
        if data.is_empty() {
            return Ok(());
        }
        self.tail.extend(data);
        let excess = self.tail.len().saturating_sub(self.tail_cap as usize);
        self.tail.drain(..excess);
        if self.total <= self.max {
            // Everything still fits: the file is the output as written.
            return self.file.write_all(data);
        }
        self.dirty = true;
        if self.last_rewrite.elapsed() >= REWRITE_EVERY {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Brings the file up to date (called when output pauses and at the end).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.dirty {
            self.rewrite()?;
        }
        Ok(())
    }

    fn rewrite(&mut self) -> io::Result<()> {
        let omitted = self.total - self.head_len - self.tail.len() as u64;
        let marker = marker(omitted);
        self.file.seek(SeekFrom::Start(self.head_len))?;
        self.file.write_all(marker.as_bytes())?;
        let (a, b) = self.tail.as_slices();
        self.file.write_all(a)?;
        self.file.write_all(b)?;
        self.file
            .set_len(self.head_len + marker.len() as u64 + self.tail.len() as u64)?;
        self.dirty = false;
        self.last_rewrite = Instant::now();
        Ok(())
    }
}

/// The captured log as the bytes the process wrote. The file is bounded
/// when written; a larger one (written before logs were bounded) is cut to
/// its head and tail like a bounded log.
pub async fn read_log(path: &Path) -> Option<Vec<u8>> {
    read_log_bounded(path, READ_CAP).await
}

/// [`read_log`] with an explicit bound.
pub async fn read_log_bounded(path: &Path, max: u64) -> Option<Vec<u8>> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let meta = file.metadata().await.ok()?;
    if !meta.is_file() {
        return None;
    }
    let len = meta.len();
    let mut buf = Vec::new();
    if len <= max.max(MIN_LOG_BYTES) {
        file.read_to_end(&mut buf).await.ok()?;
        return Some(buf);
    }
    let (head, tail) = split(max);
    buf.resize(head as usize, 0);
    file.read_exact(&mut buf).await.ok()?;
    buf.extend_from_slice(marker(len - head - tail).as_bytes());
    file.seek(SeekFrom::Start(len - tail)).await.ok()?;
    let mut rest = Vec::with_capacity(tail as usize);
    file.take(tail).read_to_end(&mut rest).await.ok()?;
    buf.extend_from_slice(&rest);
    Some(buf)
}

/// Writes the log of a running attempt to the database as it grows, so
/// that any API process can serve and follow it whichever machine runs the
/// step: only when the file changed, the new bytes appended while the file
/// only grew (read from where the last write ended), the whole bounded log
/// when it was rewritten (truncated). Runs until the attempt ends (the
/// caller drops it when the process ends; the end's report writes the
/// final log).
pub async fn ship_while_running(db: &sqlx::PgPool, step_run_id: Uuid, attempt: i32, path: &Path, max: u64) {
    let mut shipped = Shipped::default();
    let mut last_seen = None;
    loop {
        let every = Duration::from_secs(shipped.len / SHIP_BYTES_PER_SECOND).clamp(SHIP_EVERY, SHIP_EVERY_MAX);
        tokio::time::sleep(every).await;
        let Ok(meta) = tokio::fs::metadata(path).await else {
            continue;
        };
        let seen = (meta.len(), meta.modified().ok());
        if last_seen == Some(seen) {
            continue;
        }
        let Some((append, chunk)) = shipped.next_chunk(path, max).await else {
            continue;
        };
        if chunk.is_empty() && append {
            last_seen = Some(seen);
            continue;
        }
        match crate::store::steps::write_running_log(db, step_run_id, attempt, append, &chunk).await {
            Ok(true) => {
                shipped.wrote(append, &chunk);
                last_seen = Some(seen);
            }
            Ok(false) => return,
            Err(e) => {
                tracing::debug!(error = %e, "writing a running step's log failed; trying again");
                // Whether it was written is unknown: the next write replaces.
                shipped = Shipped::default();
                shipped.replace = true;
            }
        }
    }
}

/// Whether the bounded log file has been truncated (it holds the marker
/// after its head): it is then rewritten, not appended to.
async fn truncated(file: &mut tokio::fs::File, len: u64, max: u64) -> Option<bool> {
    let (head, _) = split(max);
    const START: &[u8] = b"\n[... ";
    if len < head + START.len() as u64 {
        return Some(false);
    }
    file.seek(SeekFrom::Start(head)).await.ok()?;
    let mut start = [0u8; START.len()];
    file.read_exact(&mut start).await.ok()?;
    Some(start == START)
}

/// What the database holds of a running log: its length and last bytes.
#[derive(Default)]
struct Shipped {
    len: u64,
    tail: Vec<u8>,
    replace: bool,
}

impl Shipped {
    /// `(append, bytes)`: the bytes past what was written when the file only
    /// grew, else the whole log to replace it. `None` when unreadable.
    async fn next_chunk(&self, path: &Path, max: u64) -> Option<(bool, Vec<u8>)> {
        if !self.replace {
            let mut file = tokio::fs::File::open(path).await.ok()?;
            let len = file.metadata().await.ok()?.len();
            if len >= self.len && !truncated(&mut file, len, max).await? {
                let from = self.len - self.tail.len() as u64;
                file.seek(SeekFrom::Start(from)).await.ok()?;
                let mut bytes = Vec::new();
                file.take(len - from).read_to_end(&mut bytes).await.ok()?;
                if bytes.starts_with(&self.tail) {
                    return Some((true, bytes.split_off(self.tail.len())));
                }
            }
        }
        read_log_bounded(path, max).await.map(|bytes| (false, bytes))
    }

    fn wrote(&mut self, append: bool, chunk: &[u8]) {
        if !append {
            self.len = 0;
            self.tail.clear();
        }
        self.len += chunk.len() as u64;
        self.tail.extend_from_slice(chunk);
        let excess = self.tail.len().saturating_sub(SHIP_OVERLAP as usize);
        self.tail.drain(..excess);
        self.replace = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(max: u64, chunks: &[&[u8]]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = BoundedLog::new(File::create(&path).unwrap(), max);
        for chunk in chunks {
            log.write(chunk).unwrap();
        }
        log.flush().unwrap();
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn output_within_the_bound_is_kept_whole() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(written(1000, &[&data[..10], &data[10..]]), data);
        assert_eq!(written(4096, &[b"a\0b", b"\xff\xfe"]), b"a\0b\xff\xfe");
    }

    #[test]
    fn output_past_the_bound_keeps_head_marker_and_tail() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<&[u8]> = data.chunks(777).collect();
        let out = written(1024, &chunks);
        assert!(out.len() as u64 <= 1024, "{}", out.len());
        let (head, tail) = split(1024);
        assert_eq!(&out[..head as usize], &data[..head as usize]);
        assert!(out.ends_with(&data[data.len() - tail as usize..]));
        let omitted = data.len() as u64 - head - tail;
        let m = marker(omitted);
        assert_eq!(&out[head as usize..head as usize + m.len()], m.as_bytes());
    }

    #[tokio::test]
    async fn shipping_appends_growth_and_replaces_after_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let max = 1024;
        let mut log = BoundedLog::new(File::create(&path).unwrap(), max);
        let mut shipped = Shipped::default();
        let mut stored: Vec<u8> = Vec::new();
        let mut appends = 0;
        // Identical lines: a rewrite cannot be told from growth by content.
        for round in 0..40 {
            for _ in 0..(round % 3 + 1) {
                log.write(b"tick tick tick\n").unwrap();
            }
            log.flush().unwrap();
            let (append, chunk) = shipped.next_chunk(&path, max).await.unwrap();
            if append {
                appends += 1;
                stored.extend_from_slice(&chunk);
            } else {
                stored = chunk.clone();
            }
            shipped.wrote(append, &chunk);
            assert_eq!(stored, std::fs::read(&path).unwrap(), "round {round}");
        }
        assert!(appends > 10, "{appends}");
        assert!(end_of_marker(&stored).is_some(), "the log was truncated by the end");
    }

    #[tokio::test]
    async fn read_log_cuts_an_unbounded_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        assert_eq!(read_log_bounded(&path, 20_000).await.unwrap(), data);
        let cut = read_log_bounded(&path, 1024).await.unwrap();
        assert!(cut.len() <= 1024);
        let (head, tail) = split(1024);
        assert_eq!(&cut[..head as usize], &data[..head as usize]);
        assert!(cut.ends_with(&data[data.len() - tail as usize..]));
        assert!(read_log(&dir.path().join("missing")).await.is_none());
    }
}
