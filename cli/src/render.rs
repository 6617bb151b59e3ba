//! The one place that renders output: tables, JSON, colours, diffs, times.

use std::io::IsTerminal;

use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub fn paint(code: &str, text: &str) -> String {
    if color() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

pub fn green(t: &str) -> String {
    paint("32", t)
}

pub fn red(t: &str) -> String {
    paint("31", t)
}

pub fn yellow(t: &str) -> String {
    paint("33", t)
}

pub fn bold(t: &str) -> String {
    paint("1", t)
}

pub fn json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A left-aligned table with a header row.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{}",
        bold(&line(headers.iter().map(|h| h.to_string()).collect()))
    );
    for row in rows {
        println!("{}", line(row.clone()));
    }
}

pub fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// "2026-11-23 14:05:01Z" from Unix milliseconds.
pub fn time(ms: &Value) -> String {
    let Some(ms) = ms.as_i64() else {
        return "-".into();
    };
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Resource changes, then the text diff, coloured on a terminal.
pub fn diff(d: &Value) {
    let list = |key: &str| d[key].as_array().cloned().unwrap_or_default();
    let (added, changed, removed) = (list("added"), list("changed"), list("removed"));
    if added.is_empty() && changed.is_empty() && removed.is_empty() {
        println!("no resource changes");
    }
    for (items, mark, paint_fn) in [
        (&added, "+", green as fn(&str) -> String),
        (&changed, "~", yellow as fn(&str) -> String),
        (&removed, "-", red as fn(&str) -> String),
    ] {
        for r in items {
            println!(
                "{}",
                paint_fn(&format!("{mark} {} {}", s(&r["type"]), s(&r["name"])))
            );
        }
    }
    let text = d["text"].as_str().unwrap_or("");
    if !text.is_empty() {
        println!();
        for line in text.lines() {
            let shown = if line.starts_with("+++") || line.starts_with("---") {
                bold(line)
            } else if line.starts_with('+') {
                green(line)
            } else if line.starts_with('-') {
                red(line)
            } else if line.starts_with("@@") {
                paint("36", line)
            } else {
                line.to_string()
            };
            println!("{shown}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_unix_milliseconds() {
        assert_eq!(super::time(&serde_json::json!(0)), "1970-01-01 00:00:00Z");
        assert_eq!(
            super::time(&serde_json::json!(1_795_442_782_311i64)),
            "2026-11-23 14:06:22Z"
        );
    }
}
