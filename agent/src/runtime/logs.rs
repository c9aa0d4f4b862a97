//! Reading a container's log (`logfile.rs` has the format): what rotation
//! kept, then the current file; only the last N lines, or those since a
//! time; and, when following, the lines still to come — until the
//! container exits (`skiff-agent logs -f`, `run` attached) or until it is
//! removed, through its restarts (the gateway's `skiff logs -f`).

use std::io::{BufRead, BufReader, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::logfile::{LogLine, rotated};
use super::records::ContainerRecord;
use super::{ExitInfo, Runtime};

/// How often a followed log is read again when nothing new came.
const POLL: Duration = Duration::from_millis(20);

/// Which lines, of what is written so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only the last N lines (of those since `since`).
    pub tail: Option<usize>,
    /// Only lines written at or after this RFC 3339 UTC time (the format
    /// the log uses, so strings compare as times do).
    pub since: Option<String>,
}

/// Whether, and until when, new lines are waited for.
#[derive(Debug)]
pub enum Follow {
    /// What is written now, then the end.
    No,
    /// Until the container has exited; then its exit.
    UntilExit(watch::Receiver<ContainerRecord>),
    /// Until the container is removed, whatever restarts it goes through.
    UntilRemoved(watch::Receiver<ContainerRecord>),
}

/// What a log reader sends.
#[derive(Debug, Clone)]
pub enum LogEvent {
    Line(LogLine),
    /// The container's exit (only with [`Follow::UntilExit`]).
    Exit(ExitInfo),
}

/// Reads the log at `path` (whose file `open` may already hold, opened
/// before the container started so no line is missed) on a task of its own.
/// The receiver ends when the reading does; dropping it stops the task.
pub fn read(
    path: PathBuf,
    open: Option<std::fs::File>,
    query: LogQuery,
    follow: Follow,
) -> mpsc::UnboundedReceiver<LogEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let file = match open {
            Some(f) => f,
            None => match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(_) => return,
            },
        };
        run(path, file, query, follow, tx).await;
    });
    rx
}

fn wanted(line: &LogLine, query: &LogQuery) -> bool {
    query
        .since
        .as_ref()
        .is_none_or(|s| line.time.as_str() >= s.as_str())
}

/// Reads every whole line `reader` has now; a line still being written is
/// left for later (the reader goes back to its start).
fn read_available(reader: &mut BufReader<std::fs::File>, mut f: impl FnMut(LogLine) -> bool) {
    let mut buf = String::new();
    loop {
        buf.clear();
        match reader.read_line(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) if !buf.ends_with('\n') => {
                let _ = reader.seek_relative(-(buf.len() as i64));
                return;
            }
            Ok(_) => {
                if let Ok(line) = serde_json::from_str::<LogLine>(&buf)
                    && !f(line)
                {
                    return;
                }
            }
        }
    }
}

async fn run(
    path: PathBuf,
    file: std::fs::File,
    query: LogQuery,
    follow: Follow,
    tx: mpsc::UnboundedSender<LogEvent>,
) {
    // What is there now: the rotated file, then the current one.
    let mut history = std::collections::VecDeque::new();
    let mut keep = |line: LogLine| {
        if wanted(&line, &query) {
            history.push_back(line);
            if query.tail.is_some_and(|n| history.len() > n) {
                history.pop_front();
            }
        }
        true
    };
    if let Ok(old) = std::fs::File::open(rotated(&path)) {
        read_available(&mut BufReader::new(old), &mut keep);
    }
    let mut inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
    let mut reader = BufReader::new(file);
    let _ = reader.rewind();
    read_available(&mut reader, &mut keep);
    for line in history {
        if tx.send(LogEvent::Line(line)).is_err() {
            return;
        }
    }
    let (mut record, until_exit) = match follow {
        Follow::No => return,
        Follow::UntilExit(rx) => (rx, true),
        Follow::UntilRemoved(rx) => (rx, false),
    };
    let mut exit = None;
    let mut waiter = until_exit.then(|| tokio::spawn(Runtime::exit_of(record.clone())));
    let mut removed = false;
    loop {
        let mut open = true;
        read_available(&mut reader, |line| {
            open = !wanted(&line, &query) || tx.send(LogEvent::Line(line)).is_ok();
            open
        });
        if !open {
            return;
        }
        // The file was rotated: continue with the new one.
        if let Ok(m) = std::fs::metadata(&path)
            && m.ino() != inode
            && let Ok(f) = std::fs::File::open(&path)
        {
            inode = m.ino();
            reader = BufReader::new(f);
            continue;
        }
        if exit.is_some() || removed {
            break;
        }
        tokio::select! {
            r = async { waiter.as_mut().expect("only when following until exit").await }, if waiter.is_some() => {
                waiter = None;
                exit = r.ok();
            }
            changed = record.changed(), if !until_exit => {
                removed = changed.is_err();
            }
            () = tx.closed() => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
    if let Some(exit) = exit {
        let _ = tx.send(LogEvent::Exit(exit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(time: &str, log: &str) -> LogLine {
        LogLine {
            time: time.into(),
            stream: "stdout".into(),
            log: log.into(),
        }
    }

    fn write(path: &std::path::Path, lines: &[LogLine]) {
        let text: String = lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect();
        std::fs::write(path, text).unwrap();
    }

    async fn all(mut rx: mpsc::UnboundedReceiver<LogEvent>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(e) = rx.recv().await {
            if let LogEvent::Line(l) = e {
                out.push(l.log);
            }
        }
        out
    }

    #[tokio::test]
    async fn tail_and_since_cover_the_rotated_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        write(
            &rotated(&path),
            &[
                line("2026-01-01T00:00:01Z", "a"),
                line("2026-01-01T00:00:02Z", "b"),
            ],
        );
        write(
            &path,
            &[
                line("2026-01-01T00:00:03Z", "c"),
                line("2026-01-01T00:00:04Z", "d"),
            ],
        );
        let read_with = |q: LogQuery| all(read(path.clone(), None, q, Follow::No));
        assert_eq!(read_with(LogQuery::default()).await, ["a", "b", "c", "d"]);
        let tail = LogQuery {
            tail: Some(3),
            since: None,
        };
        assert_eq!(read_with(tail).await, ["b", "c", "d"]);
        let since = LogQuery {
            tail: None,
            since: Some("2026-01-01T00:00:02Z".into()),
        };
        assert_eq!(read_with(since).await, ["b", "c", "d"]);
        let both = LogQuery {
            tail: Some(1),
            since: Some("2026-01-01T00:00:02Z".into()),
        };
        assert_eq!(read_with(both).await, ["d"]);
        let none = LogQuery {
            tail: Some(0),
            since: None,
        };
        assert!(read_with(none).await.is_empty());
    }
}
