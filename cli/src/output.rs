//! How commands print: aligned tables by default, or the gateway's own
//! objects as JSON or YAML (`-o json|yaml`, stable: they are the REST API's
//! documented types); colour only on a terminal and never with `NO_COLOR`.

use std::io::{IsTerminal, Write};

use serde::Serialize;

/// `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The objects, as the REST API returns them.
    Json,
    /// The same as YAML.
    Yaml,
}

/// Where and how a command prints.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub format: Format,
    pub color: bool,
    /// Stdout is a terminal (live displays, bars).
    pub tty: bool,
}

impl Out {
    /// From `-o` and the environment.
    pub fn new(format: Format) -> Self {
        let tty = std::io::stdout().is_terminal();
        let color = tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Self { format, color, tty }
    }

    /// Prints `value` as JSON or YAML; `false` when the format is a table
    /// (the caller prints that).
    pub fn structured<T: Serialize>(&self, value: &T) -> std::io::Result<bool> {
        let mut stdout = std::io::stdout().lock();
        match self.format {
            Format::Table => return Ok(false),
            Format::Json => {
                serde_json::to_writer_pretty(&mut stdout, value).map_err(std::io::Error::other)?;
                writeln!(stdout)?;
            }
            Format::Yaml => {
                let text = serde_yaml_ng::to_string(value).map_err(std::io::Error::other)?;
                stdout.write_all(text.as_bytes())?;
            }
        }
        Ok(true)
    }

    /// `text` in the colour its meaning has (states: running is green,
    /// pending yellow, failed red), or plain.
    pub fn paint(&self, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match text {
            "running" | "ready" | "ok" => "32",
            "pending" | "pulling" | "starting" | "draining" | "cordoned" | "stopping" => "33",
            "failed" | "lost" | "down" | "exited" => "31",
            _ => return text.to_string(),
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// Prints rows under a header, every column as wide as its widest cell
/// (colour codes do not count), two spaces apart.
pub fn table(out: &Out, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let width = |s: &str| visible_len(s);
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(width(cell));
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    let line = |cells: Vec<String>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(width(&c));
            s.push_str(&c);
            if i < last {
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s
    };
    let _ = out;
    writeln!(
        stdout,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    )?;
    for row in rows {
        writeln!(stdout, "{}", line(row.clone()))?;
    }
    Ok(())
}

/// Length without ANSI colour codes.
fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// `3m`, `2h`, `5d`: how long ago `ms` (unix milliseconds) was.
pub fn age(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let s = ((now - ms).max(0) / 1000) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `1.5Gi`, `256Mi`: bytes for people.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["", "Ki", "Mi", "Gi", "Ti"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}")
    } else if v >= 10.0 || v.fract() < 0.05 {
        format!("{v:.0}{}", UNITS[i])
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// `500m`, `2`: CPU for people.
pub fn cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

/// A bar of `width` cells, `used` of `total` filled (on a terminal).
pub fn bar(used: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((used.min(total) as f64 / total as f64) * width as f64).round() as usize
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_units() {
        assert_eq!(bytes(512), "512");
        assert_eq!(bytes(256 << 20), "256Mi");
        assert_eq!(bytes(1536 << 20), "1.5Gi");
        assert_eq!(cpu(500), "500m");
        assert_eq!(cpu(2000), "2");
        assert_eq!(bar(1, 4, 8), "[##......]");
        assert_eq!(bar(9, 4, 4), "[####]");
        assert_eq!(bar(0, 0, 2), "[..]");
        assert_eq!(visible_len("\x1b[32mrunning\x1b[0m"), 7);
    }
}
