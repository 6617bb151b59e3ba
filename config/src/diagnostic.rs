//! Diagnostics: what the language says about a document that is wrong.
//!
//! A [`Diagnostic`] is plain data (file, line, column, byte span, message,
//! help, the offending source line) so it can cross process boundaries: the
//! control plane returns them as JSON in a 422 and `sentinelctl` renders the
//! ones it receives exactly like the ones it found locally. [`Diagnostics`]
//! holds every problem found in one pass over one file, in document order,
//! and renders them with miette's graphical handler (source excerpt + caret).

use std::fmt;
use std::sync::Arc;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};
use serde::{Deserialize, Serialize};

/// Most diagnostics reported for one document; the last one says how many
/// more there were. Keeps the answer to a hostile document small.
pub const MAX_DIAGNOSTICS: usize = 100;

/// Longest `source_line` carried by a diagnostic; longer lines are cut to a
/// window around the offending spot (marked with `…`).
pub const MAX_SOURCE_LINE_BYTES: usize = 512;

/// One problem in a configuration document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based line of the start of the span.
    pub line: usize,
    /// 1-based column (in characters) of the start of the span.
    pub column: usize,
    /// Byte offset and length of the offending text.
    pub offset: usize,
    pub length: usize,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// The whole source line the span starts on, without its newline.
    pub source_line: String,
}

/// Every diagnostic found in one document, with the text they point into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostics {
    pub file: String,
    pub source: String,
    pub diagnostics: Vec<Diagnostic>,
}

/// Maps byte offsets of one document to lines and columns.
#[derive(Debug, Clone)]
pub(crate) struct SourceMap {
    file: String,
    text: Arc<String>,
    line_starts: Vec<usize>,
}

impl SourceMap {
    pub(crate) fn new(file: &str, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            file: file.to_string(),
            text: Arc::new(text.to_string()),
            line_starts,
        }
    }

    pub(crate) fn diagnostic(
        &self,
        span: SourceSpan,
        message: String,
        help: Option<String>,
    ) -> Diagnostic {
        let text = self.text.as_str();
        let mut offset = span.offset().min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let length = span.len().min(text.len() - offset);
        let line_index = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let line_start = self.line_starts[line_index];
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i);
        let whole_line = text[line_start..line_end].trim_end_matches('\r');
        let source_line = if whole_line.len() <= MAX_SOURCE_LINE_BYTES {
            whole_line.to_string()
        } else {
            // A hostile one-line document must not copy its whole text into
            // every diagnostic: keep a window around the offending spot.
            let mut from = offset
                .saturating_sub(MAX_SOURCE_LINE_BYTES / 2)
                .max(line_start);
            while !text.is_char_boundary(from) {
                from -= 1;
            }
            let mut to = (from + MAX_SOURCE_LINE_BYTES).min(line_start + whole_line.len());
            while !text.is_char_boundary(to) {
                to -= 1;
            }
            format!("…{}…", &text[from..to])
        };
        let column = text[line_start..offset].chars().count() + 1;
        Diagnostic {
            file: self.file.clone(),
            line: line_index + 1,
            column,
            offset,
            length,
            message,
            help,
            source_line,
        }
    }

    pub(crate) fn finish(self, mut diagnostics: Vec<Diagnostic>) -> Diagnostics {
        diagnostics.sort_by_key(|d| (d.offset, d.length));
        diagnostics.dedup();
        if diagnostics.len() > MAX_DIAGNOSTICS {
            let more = diagnostics.len() - (MAX_DIAGNOSTICS - 1);
            diagnostics.truncate(MAX_DIAGNOSTICS - 1);
            let last = diagnostics.last().map_or(0, |d| d.offset);
            let mut note = self.diagnostic(
                SourceSpan::from(last..last),
                format!("{more} more errors not shown"),
                Some(format!(
                    "only the first {MAX_DIAGNOSTICS} problems of a document are reported"
                )),
            );
            note.length = 0;
            diagnostics.push(note);
        }
        Diagnostics {
            file: self.file,
            source: self.text.to_string(),
            diagnostics,
        }
    }
}

// === impl Diagnostics ===

impl Diagnostics {
    /// A document-level problem that has no position (an unreadable file).
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        let map = SourceMap::new(file, "");
        let d = map.diagnostic(SourceSpan::from(0..0), message.into(), None);
        map.finish(vec![d])
    }

    pub fn len(&self) -> usize {
        self.diagnostics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.diagnostics.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter()
    }

    /// Renders every diagnostic as miette does: message, `file:line:col`,
    /// the source excerpt with a caret under the span, and the help line.
    pub fn render(&self, color: bool) -> String {
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme).with_context_lines(1);
        let source = Arc::new(self.source.clone());
        let named = NamedSource::new(&self.file, source).with_language("kdl");
        let mut out = String::new();
        for diagnostic in &self.diagnostics {
            if diagnostic.source_line.starts_with('…') {
                // miette cannot draw a caret past column 65,535 (it panics);
                // a line that long is hostile anyway: print the plain form
                // with the window kept in `source_line`.
                out.push_str(&format!(
                    "  × {diagnostic}\n    {}\n",
                    diagnostic.source_line
                ));
                continue;
            }
            let one = Rendered {
                diagnostic,
                source: &named,
            };
            if handler.render_report(&mut out, &one).is_err() {
                // Rendering into a String cannot fail for I/O reasons; fall back
                // to the plain form rather than lose the message.
                out.push_str(&diagnostic.to_string());
                out.push('\n');
            }
        }
        out.push_str(&format!("{}\n", self.summary()));
        out
    }

    /// "config.kdl: 3 errors".
    pub fn summary(&self) -> String {
        let n = self.diagnostics.len();
        format!(
            "{}: {} error{}",
            self.file,
            n,
            if n == 1 { "" } else { "s" }
        )
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            writeln!(f, "{d}")?;
        }
        write!(f, "{}", self.summary())
    }
}

impl std::error::Error for Diagnostics {}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, " (help: {help})")?;
        }
        Ok(())
    }
}

/// Adapter that lets miette render one [`Diagnostic`] against its source.
struct Rendered<'a> {
    diagnostic: &'a Diagnostic,
    source: &'a NamedSource<Arc<String>>,
}

impl fmt::Debug for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.diagnostic, f)
    }
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diagnostic.message)
    }
}

impl std::error::Error for Rendered<'_> {}

impl miette::Diagnostic for Rendered<'_> {
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        if self.source.inner().is_empty() {
            None
        } else {
            Some(self.source)
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.source.inner().is_empty() {
            return None;
        }
        let span = SourceSpan::from(
            self.diagnostic.offset..self.diagnostic.offset + self.diagnostic.length,
        );
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some("here".to_string()),
            span,
        ))))
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diagnostic
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let map = SourceMap::new("a.kdl", "first\n  é second\n");
        let d = map.diagnostic(SourceSpan::from(11..17), "bad".into(), None);
        assert_eq!((d.line, d.column), (2, 5));
        assert_eq!(d.source_line, "  é second");
    }

    #[test]
    fn render_shows_file_position_caret_and_help() {
        let map = SourceMap::new("a.kdl", "server {\n  wokers 2\n}\n");
        let d = map.diagnostic(
            SourceSpan::from(11..17),
            "unknown node `wokers`".into(),
            Some("did you mean `workers`?".into()),
        );
        let text = map.finish(vec![d]).render(false);
        assert!(text.contains("unknown node `wokers`"), "{text}");
        assert!(text.contains("a.kdl:2:3"), "{text}");
        assert!(text.contains("did you mean `workers`?"), "{text}");
        assert!(text.contains("wokers 2"), "{text}");
    }
}
