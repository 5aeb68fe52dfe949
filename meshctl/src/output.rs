//! How answers are printed: aligned columns for people, JSON for scripts.

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
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
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

    /// Adds a row; an empty cell is printed as `-`, so columns never look shifted.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "one cell per column");
        let cells = cells
            .into_iter()
            .map(|c| if c.is_empty() { "-".to_owned() } else { c })
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
}
