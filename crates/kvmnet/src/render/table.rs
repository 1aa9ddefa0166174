//! Plain aligned tables: a header row and data rows, columns padded to their widest cell, two
//! spaces apart, no borders (easy to read and to grep).

/// A table under construction.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    bold: bool,
}

impl Table {
    /// Adds a data row.
    pub fn add_row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }
}

/// A table with the given header (bold on a terminal).
pub fn new_table(header: &[&str], color: bool) -> Table {
    Table {
        header: header.iter().map(|h| h.to_string()).collect(),
        rows: vec![],
        bold: color,
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Renders a table.
pub fn table_text(t: &Table) -> String {
    let cols = t.header.len();
    let mut w = vec![0usize; cols];
    for row in std::iter::once(&t.header).chain(&t.rows) {
        for (i, c) in row.iter().enumerate().take(cols) {
            w[i] = w[i].max(width(c));
        }
    }
    let line = |row: &Vec<String>| {
        let mut s = String::new();
        for (i, c) in row.iter().enumerate().take(cols) {
            s.push_str(c);
            if i + 1 < cols {
                s.push_str(&" ".repeat(w[i] - width(c) + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = vec![];
    let head = line(&t.header);
    out.push(if t.bold {
        format!("\x1b[1m{head}\x1b[0m")
    } else {
        head
    });
    for r in &t.rows {
        out.push(line(r));
    }
    out.join("\n")
}

/// A section heading.
pub fn heading(title: &str, color: bool) -> String {
    if color {
        format!("\x1b[1m{title}\x1b[0m")
    } else {
        title.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns() {
        let mut t = new_table(&["A", "LONGER"], false);
        t.add_row(vec!["xxxx".into(), "y".into()]);
        assert_eq!(table_text(&t), "A     LONGER\nxxxx  y");
    }
}
