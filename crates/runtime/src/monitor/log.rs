//! A container's output in the kubelet's CRI log format, which `kubectl logs` and the kubelet's
//! log rotation read:
//!
//! ```text
//! 2024-02-29T12:34:56.123456789Z stdout F a whole line
//! 2024-02-29T12:34:56.2Z stderr P the first 16 KiB of a longer line…
//! ```
//!
//! A record is a line of the container's output without its newline (`F`), or a piece of one
//! (`P`): a line longer than [`MAX_RECORD`] is cut into pieces, and so is an unterminated line
//! at the end of a stream. The records of one line end with an `F`, except for an unterminated
//! last line, which keeps a `P` so that the reader adds no newline the container never wrote.
//! A `\r\n` ending counts as the newline, as containerd does it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest content of one record (containerd's default `max_container_log_line_size`).
pub const MAX_RECORD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Full,
    Partial,
}

impl Tag {
    fn as_str(self) -> &'static str {
        match self {
            Tag::Full => "F",
            Tag::Partial => "P",
        }
    }
}

/// Writes a container's stdout and stderr into one CRI log file.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    /// Per stream, the start of a line whose newline has not come yet.
    pending: [Vec<u8>; 2],
    /// Reused for each record, so that a record is built without allocating.
    record: Vec<u8>,
}

impl LogWriter {
    /// Opens (or creates) the log file for appending.
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        Ok(LogWriter {
            path: path.to_path_buf(),
            file: open_log(path)?,
            pending: [Vec::new(), Vec::new()],
            record: Vec::new(),
        })
    }

    /// Logs a chunk of `stream`'s output, as it came from the pipe: the whole lines in it, and
    /// the first [`MAX_RECORD`] bytes of a line that grew longer than that. The rest waits for
    /// its newline. A failed write loses that record only; the first error is returned once the
    /// whole chunk has been gone through.
    pub fn write(&mut self, stream: Stream, data: &[u8], now: SystemTime) -> std::io::Result<()> {
        let timestamp = format_timestamp(now);
        let mut result = Ok(());
        let mut pending = std::mem::take(&mut self.pending[stream.index()]);
        let mut rest = data;
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            let line = if pending.is_empty() {
                &rest[..newline]
            } else {
                pending.extend_from_slice(&rest[..newline]);
                &pending[..]
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            keep_first_err(&mut result, self.records(stream, &timestamp, line, Tag::Full));
            pending.clear();
            rest = &rest[newline + 1..];
        }
        pending.extend_from_slice(rest);
        // A trailing '\r' may be the start of a "\r\n" split across chunks, which would not
        // count towards the line; so it is held rather than cut off into a piece of its own.
        let mut cut = 0;
        while pending.len() - cut - usize::from(pending.ends_with(b"\r")) > MAX_RECORD {
            let piece = &pending[cut..cut + MAX_RECORD];
            keep_first_err(&mut result, self.record(stream, &timestamp, piece, Tag::Partial));
            cut += MAX_RECORD;
        }
        pending.drain(..cut);
        self.pending[stream.index()] = pending;
        result
    }

    /// Logs what is left of `stream` at its end: an unterminated last line.
    pub fn flush_stream(&mut self, stream: Stream, now: SystemTime) -> std::io::Result<()> {
        let pending = std::mem::take(&mut self.pending[stream.index()]);
        if pending.is_empty() {
            return Ok(());
        }
        self.records(stream, &format_timestamp(now), &pending, Tag::Partial)
    }

    /// Opens the log file again by its path, after the kubelet renamed it to rotate it. A line
    /// begun before goes on in the new file.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.file = open_log(&self.path)?;
        Ok(())
    }

    /// `content` as records of at most [`MAX_RECORD`] bytes: `P`s, then one tagged `last`.
    fn records(
        &mut self,
        stream: Stream,
        timestamp: &str,
        mut content: &[u8],
        last: Tag,
    ) -> std::io::Result<()> {
        let mut result = Ok(());
        while content.len() > MAX_RECORD {
            let (piece, rest) = content.split_at(MAX_RECORD);
            keep_first_err(&mut result, self.record(stream, timestamp, piece, Tag::Partial));
            content = rest;
        }
        keep_first_err(&mut result, self.record(stream, timestamp, content, last));
        result
    }

    fn record(
        &mut self,
        stream: Stream,
        timestamp: &str,
        content: &[u8],
        tag: Tag,
    ) -> std::io::Result<()> {
        self.record.clear();
        self.record.extend_from_slice(timestamp.as_bytes());
        self.record.push(b' ');
        self.record.extend_from_slice(stream.as_str().as_bytes());
        self.record.push(b' ');
        self.record.extend_from_slice(tag.as_str().as_bytes());
        self.record.push(b' ');
        self.record.extend_from_slice(content);
        self.record.push(b'\n');
        // One write per record: with O_APPEND the kernel keeps it whole against the other
        // stream's records and the kubelet's reader. Only a short write (a full disk) would
        // make write_all write again.
        self.file.write_all(&self.record)
    }
}

/// Opens the log for appending, making its directory first as containerd does: the kubelet
/// makes the pod's log directory itself, but crictl and critest leave it to the runtime.
fn open_log(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    }
    OpenOptions::new().append(true).create(true).mode(0o640).open(path)
}

fn keep_first_err(result: &mut std::io::Result<()>, next: std::io::Result<()>) {
    if result.is_ok() {
        *result = next;
    }
}

/// `t` as Go's `time.RFC3339Nano` writes a UTC time: `2006-01-02T15:04:05.999999999Z`, the
/// fraction without trailing zeros and left out when zero.
pub fn format_timestamp(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
        Err(before) => {
            let d = before.duration();
            let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (secs, 0),
                n => (secs - 1, 1_000_000_000 - n),
            }
        }
    };
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let mut out = String::with_capacity(30);
    // Go pads the year to four digits after any sign.
    if year < 0 {
        out.push('-');
    }
    out.push_str(&format!(
        "{:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        year.unsigned_abs(),
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    ));
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// The proleptic Gregorian date of a day counted from 1970-01-01.
///
/// Counted in years that begin on March 1st, the leap day is the last day of its year, and
/// the calendar repeats every 400 years (146097 days); within such an era the year and the
/// day of the year follow from the number of leap days before them.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    const ERA_DAYS: i64 = 146_097;
    // 1970-01-01 is day 719468 counted from 0000-03-01.
    let since_0000_03_01 = days + 719_468;
    let era = since_0000_03_01.div_euclid(ERA_DAYS);
    let day_of_era = since_0000_03_01.rem_euclid(ERA_DAYS);
    // Leap days before this day in the era: one per 4 years (1460 days), less one per
    // century (36524 days), plus the 400th year's (146096 is the era's last day).
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 31, 30, 31, 30, 31 repeat in a five-month, 153-day pattern.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    // Both are small and positive by construction.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    /// The records of the log, timestamps left out: (stream, tag, content).
    fn records(path: &Path) -> Vec<(String, String, String)> {
        let text = std::fs::read(path).unwrap();
        assert!(text.is_empty() || text.ends_with(b"\n"));
        text.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let l = String::from_utf8(l.to_vec()).unwrap();
                let mut parts = l.splitn(4, ' ');
                let _ts = parts.next().unwrap();
                let stream = parts.next().unwrap().to_string();
                let tag = parts.next().unwrap().to_string();
                (stream, tag, parts.next().unwrap().to_string())
            })
            .collect()
    }

    fn rec(stream: &str, tag: &str, content: &str) -> (String, String, String) {
        (stream.into(), tag.into(), content.into())
    }

    fn writer() -> (tempfile::TempDir, PathBuf, LogWriter) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let w = LogWriter::open(&path).unwrap();
        (dir, path, w)
    }

    #[test]
    fn whole_record_format() {
        let (_dir, path, mut w) = writer();
        w.write(Stream::Stdout, b"hello world\n\n", at(1_709_210_096, 120_000_000)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "2024-02-29T12:34:56.12Z stdout F hello world\n\
             2024-02-29T12:34:56.12Z stdout F \n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777 & !0o022, 0o640 & !0o022, "{mode:o}");
    }

    #[test]
    fn missing_log_directories_are_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod/container/0.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.write(Stream::Stdout, b"hi\n", at(0, 0)).unwrap();
        assert_eq!(records(&path), [rec("stdout", "F", "hi")]);
    }

    #[test]
    fn multi_line_chunks_and_lines_split_across_chunks() {
        let (_dir, path, mut w) = writer();
        let now = at(0, 0);
        w.write(Stream::Stdout, b"one\ntwo\nthr", now).unwrap();
        w.write(Stream::Stdout, b"ee", now).unwrap();
        w.write(Stream::Stdout, b"\nfour\r\nfive\r", now).unwrap();
        w.write(Stream::Stdout, b"\nsix\rseven\n", now).unwrap();
        assert_eq!(
            records(&path),
            [
                rec("stdout", "F", "one"),
                rec("stdout", "F", "two"),
                rec("stdout", "F", "three"),
                rec("stdout", "F", "four"),
                rec("stdout", "F", "five"),
                rec("stdout", "F", "six\rseven"),
            ]
        );
    }

    #[test]
    fn streams_keep_their_own_partial_lines() {
        let (_dir, path, mut w) = writer();
        let now = at(0, 0);
        w.write(Stream::Stdout, b"out-a", now).unwrap();
        w.write(Stream::Stderr, b"err-a", now).unwrap();
        w.write(Stream::Stderr, b"err-b\nerr2\n", now).unwrap();
        w.write(Stream::Stdout, b"out-b\n", now).unwrap();
        assert_eq!(
            records(&path),
            [
                rec("stderr", "F", "err-aerr-b"),
                rec("stderr", "F", "err2"),
                rec("stdout", "F", "out-aout-b"),
            ]
        );
    }

    #[test]
    fn long_lines_are_cut_into_partial_records() {
        let (_dir, path, mut w) = writer();
        let now = at(0, 0);
        let long = "x".repeat(40 * 1024);
        // In one chunk.
        w.write(Stream::Stdout, format!("{long}\n").as_bytes(), now).unwrap();
        // In chunks of 1000 bytes: the first piece is written as soon as it is complete.
        for chunk in long.as_bytes().chunks(1000) {
            w.write(Stream::Stderr, chunk, now).unwrap();
        }
        assert_eq!(records(&path).len(), 5);
        w.write(Stream::Stderr, b"\n", now).unwrap();
        // A line of exactly the maximum is one record, even when its "\r\n" comes apart.
        let max = "y".repeat(MAX_RECORD);
        w.write(Stream::Stdout, format!("{max}\r").as_bytes(), now).unwrap();
        w.write(Stream::Stdout, b"\n", now).unwrap();
        let p = "x".repeat(MAX_RECORD);
        let f = "x".repeat(40 * 1024 - 2 * MAX_RECORD);
        assert_eq!(
            records(&path),
            [
                rec("stdout", "P", &p),
                rec("stdout", "P", &p),
                rec("stdout", "F", &f),
                rec("stderr", "P", &p),
                rec("stderr", "P", &p),
                rec("stderr", "F", &f),
                rec("stdout", "F", &max),
            ]
        );
    }

    #[test]
    fn end_of_stream_writes_the_unterminated_line() {
        let (_dir, path, mut w) = writer();
        let now = at(0, 0);
        w.write(Stream::Stdout, b"done\nno newline", now).unwrap();
        w.write(Stream::Stderr, b"err\n", now).unwrap();
        w.flush_stream(Stream::Stderr, now).unwrap();
        w.flush_stream(Stream::Stdout, now).unwrap();
        w.flush_stream(Stream::Stdout, now).unwrap();
        assert_eq!(
            records(&path),
            [
                rec("stdout", "F", "done"),
                rec("stderr", "F", "err"),
                rec("stdout", "P", "no newline"),
            ]
        );
    }

    #[test]
    fn reopen_after_rotation() {
        let (dir, path, mut w) = writer();
        let now = at(0, 0);
        w.write(Stream::Stdout, b"before\nhalf ", now).unwrap();
        let rotated = dir.path().join("0.log.20240229-123456");
        std::fs::rename(&path, &rotated).unwrap();
        // Until reopened, records still go to the renamed file.
        w.write(Stream::Stdout, b"line\n", now).unwrap();
        w.reopen().unwrap();
        w.write(Stream::Stdout, b"after\n", now).unwrap();
        assert_eq!(
            records(&rotated),
            [rec("stdout", "F", "before"), rec("stdout", "F", "half line")]
        );
        assert_eq!(records(&path), [rec("stdout", "F", "after")]);
        // A line begun before the rotation ends in the new file.
        w.write(Stream::Stdout, b"begun ", now).unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        w.reopen().unwrap();
        w.write(Stream::Stdout, b"ended\n", now).unwrap();
        assert_eq!(records(&path), [rec("stdout", "F", "begun ended")]);
    }

    #[test]
    fn timestamps_as_go_writes_them() {
        assert_eq!(format_timestamp(at(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(format_timestamp(at(0, 1)), "1970-01-01T00:00:00.000000001Z");
        assert_eq!(format_timestamp(at(1_709_210_096, 0)), "2024-02-29T12:34:56Z");
        assert_eq!(format_timestamp(at(1_709_210_096, 123_450_000)), "2024-02-29T12:34:56.12345Z");
        assert_eq!(
            format_timestamp(at(1_709_210_096, 999_999_999)),
            "2024-02-29T12:34:56.999999999Z"
        );
        assert_eq!(format_timestamp(at(951_782_400, 500_000_000)), "2000-02-29T00:00:00.5Z");
        // 2100 is no leap year: 28 February is followed by 1 March.
        assert_eq!(format_timestamp(at(4_107_628_799, 0)), "2100-03-01T23:59:59Z");
        assert_eq!(format_timestamp(at(4_107_628_799 - 2 * 86_400, 0)), "2100-02-27T23:59:59Z");
        assert_eq!(format_timestamp(at(4_107_628_799 - 86_400, 0)), "2100-02-28T23:59:59Z");
        assert_eq!(format_timestamp(at(1_704_067_199, 0)), "2023-12-31T23:59:59Z");
        assert_eq!(format_timestamp(at(1_704_067_200, 0)), "2024-01-01T00:00:00Z");
        assert_eq!(format_timestamp(at(253_402_300_799, 0)), "9999-12-31T23:59:59Z");
        let before = |secs: u64, nanos: u32| UNIX_EPOCH - Duration::new(secs, nanos);
        assert_eq!(format_timestamp(before(0, 100_000_000)), "1969-12-31T23:59:59.9Z");
        assert_eq!(format_timestamp(before(2_208_988_800, 0)), "1900-01-01T00:00:00Z");
    }

    #[test]
    fn civil_dates_round_trip_over_centuries() {
        // Walking day by day from 1600-03-01 checks every month length and leap rule.
        let mut expected = (1600i64, 3u32, 1u32);
        let start = -135_080; // 1600-03-01
        for days in start..start + 400 * 366 {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            let (y, m, d) = expected;
            let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            expected = if d < len {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }
}
