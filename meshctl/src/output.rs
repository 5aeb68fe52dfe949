//! How answers are printed: aligned columns for people, JSON for scripts, and never a
//! control character that came from elsewhere.
//!
//! Every string meshctl prints was chosen by someone else: whoever registered an instance
//! (its id, tags, metadata, check output) or wrote a sidecar's answer. A terminal obeys
//! control sequences wherever they come from: an escape can clear the screen, paint a
//! fake green tick or (OSC 52) write the clipboard, and a bidirectional override can make
//! text read backwards. So commands write to an [`Escaped`] writer, which [`crate::run`]
//! puts between them and stdout: every control character reaches the terminal as visible
//! text (`\x1b`, `\u{202e}`). Table cells escape line breaks too, so a cell can never
//! start a row of its own; JSON escapes them the JSON way, so it stays a valid document
//! holding the strings as they were.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;

/// `-o` / `--output`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// One JSON document (for `top` without `--once`, one per line per sample).
    Json,
}

/// Prints `value` as indented JSON and a newline.
pub fn json(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::from)?;
    writeln!(out, "{}", json_escaped(&text))
}

/// Prints `value` as JSON on one line, for a stream of documents.
pub fn json_line(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    let text = serde_json::to_string(value).map_err(io::Error::from)?;
    writeln!(out, "{}", json_escaped(&text))
}

/// JSON text with the control characters serde_json leaves as they are (DEL, C1, bidi
/// controls; it escapes C0 itself) written as `\uXXXX`: the same strings, and nothing a
/// terminal acts on. They only occur inside strings, where `\u` escapes are valid.
fn json_escaped(text: &str) -> Cow<'_, str> {
    // Line feeds outside strings are the document's own layout.
    let escaped = |c: char| c != '\n' && is_control(c);
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escaped(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Whether a terminal may act on `c` rather than show it: C0, DEL and C1 controls, and
/// the Unicode bidirectional marks, embeddings, overrides and isolates.
pub fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every control character (line breaks and tabs too) written visibly:
/// `\n`, `\t`, `\r`, `\x1b` for the other C0 and DEL, `\u{9b}`, `\u{202e}` above.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_but(text, None)
}

/// Like [`escape`], leaving `kept` as it is.
fn escape_but(text: &str, kept: Option<char>) -> Cow<'_, str> {
    if !text.chars().any(|c| is_control(c) && Some(c) != kept) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !is_control(c) || Some(c) == kept => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

/// A note or an error on stderr, escaped like everything on stdout.
pub fn note(text: &str) {
    eprintln!("{}", escape_but(text, Some('\n')));
}

/// The writer every command prints to: it passes line feeds (commands end their lines
/// with them) and writes every other control character visibly, as [`escape`] does.
/// Commands cannot reach the terminal around it; `top` redraws with
/// [`Escaped::clear_screen`], the one sequence meshctl sends on its own behalf.
pub struct Escaped<'a> {
    inner: &'a mut dyn Write,
    /// The start of a character split between two writes.
    partial: Vec<u8>,
}

// === impl Escaped ===

impl<'a> Escaped<'a> {
    pub fn new(inner: &'a mut dyn Write) -> Self {
        Escaped {
            inner,
            partial: Vec::new(),
        }
    }

    /// Moves the cursor home and clears the screen.
    pub fn clear_screen(&mut self) -> io::Result<()> {
        self.inner.write_all(b"\x1b[H\x1b[2J")
    }
}

impl Write for Escaped<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut bytes = std::mem::take(&mut self.partial);
        bytes.extend_from_slice(buf);
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    self.inner
                        .write_all(escape_but(text, Some('\n')).as_bytes())?;
                    rest = &[];
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    let text = std::str::from_utf8(valid).expect("valid up to here");
                    self.inner
                        .write_all(escape_but(text, Some('\n')).as_bytes())?;
                    match e.error_len() {
                        // Not UTF-8 at all: shown byte by byte.
                        Some(n) => {
                            for b in &after[..n] {
                                write!(self.inner, "\\x{b:02x}")?;
                            }
                            rest = &after[n..];
                        }
                        // A character cut short: its end comes with the next write.
                        None => {
                            self.partial = after.to_vec();
                            rest = &[];
                        }
                    }
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A table of text cells, printed with every column as wide as its widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

/// Spaces between columns.
const GAP: usize = 3;

// === impl Table ===

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; an empty cell is printed as `-`, so columns never look shifted, and
    /// control characters as [`escape`] writes them, so no cell breaks its line.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "one cell per column");
        let cells = cells
            .into_iter()
            .map(|c| match escape(&c) {
                _ if c.is_empty() => "-".to_owned(),
                Cow::Borrowed(_) => c,
                Cow::Owned(escaped) => escaped,
            })
            .collect();
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn print(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(self.render().as_bytes())
    }

    pub fn render(&self) -> String {
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let mut widths = vec![0; self.header.len()];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line.iter()) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for line in lines {
            let mut row = String::new();
            for (i, cell) in line.iter().enumerate() {
                row.push_str(cell);
                if i + 1 < line.len() {
                    let pad = widths[i] - cell.chars().count() + GAP;
                    row.extend(std::iter::repeat_n(' ', pad));
                }
            }
            text.push_str(&row);
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let mut table = Table::new(&["NAME", "N"]);
        table.row(vec!["recommendations".into(), "3".into()]);
        table.row(vec!["µ".into(), String::new()]);
        assert_eq!(
            table.render(),
            "NAME              N\nrecommendations   3\nµ                 -\n"
        );
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        let cases = [
            ("\x1b[2J", r"\x1b[2J"),
            ("\x1b]52;c;aGk=\x07", r"\x1b]52;c;aGk=\x07"),
            ("a\nb\tc\rd", r"a\nb\tc\rd"),
            ("\x7f\u{9b}31m", r"\x7f\u{9b}31m"),
            ("\u{202e}evil\u{2066}", r"\u{202e}evil\u{2066}"),
            ("µ ✔ plain", "µ ✔ plain"),
        ];
        for (text, shown) in cases {
            assert_eq!(escape(text), shown);
        }
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_cell_never_breaks_its_row() {
        let mut table = Table::new(&["ID", "TAGS"]);
        table.row(vec!["a\nfake row".into(), "\x1b[32m✔".into()]);
        assert_eq!(
            table.render(),
            "ID            TAGS\na\\nfake row   \\x1b[32m✔\n"
        );
    }

    #[test]
    fn the_writer_keeps_line_feeds_and_characters_split_between_writes() {
        let mut bytes = Vec::new();
        let mut out = Escaped::new(&mut bytes);
        let text = "ok ✔\n\x1b[2J \u{202e}\n";
        for chunk in text.as_bytes().chunks(1) {
            out.write_all(chunk).unwrap();
        }
        out.write_all(b"\xff\n").unwrap();
        out.clear_screen().unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "ok ✔\n\\x1b[2J \\u{202e}\n\\xff\n\x1b[H\x1b[2J"
        );
    }

    #[test]
    fn json_keeps_its_strings_and_loses_their_controls() {
        let value = serde_json::json!({"tag": "\x1b[2J \x7f\u{9b}\u{202e}", "n": 1});
        let mut bytes = Vec::new();
        json(&mut bytes, &value).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.chars().any(|c| c != '\n' && is_control(c)),
            "{text:?}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            value
        );
        let mut line = Vec::new();
        json_line(&mut line, &value).unwrap();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
