//! Output of the verbs: an aligned table (Docker's default) or `--json`.

use serde_json::Value;

/// Rows under upper-case headers, columns padded like Docker's tabwriter (3 spaces apart).
pub struct Table {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table { headers: headers.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < width.len() {
                    width[i] = width[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: Vec<&str>| {
            let n = cells.len();
            let mut s = String::new();
            for (i, c) in cells.into_iter().enumerate() {
                s.push_str(c);
                if i + 1 < n {
                    s.push_str(&" ".repeat(width[i] - c.chars().count() + 3));
                }
            }
            s.push('\n');
            s
        };
        let mut out = line(self.headers.to_vec());
        for r in &self.rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
        }
        out
    }
}

/// Prints `v` as pretty JSON, or the table made from it.
pub fn print(json: bool, v: &Value, table: impl FnOnce(&Value) -> Table) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!("{}", table(v).render());
    }
    Ok(())
}

/// Prints the array `v` as pretty JSON, or as a table of one `row` per element.
pub fn print_rows(
    json: bool,
    v: &Value,
    headers: &[&'static str],
    row: impl Fn(&Value) -> Vec<String>,
) -> anyhow::Result<()> {
    print(json, v, |v| {
        let mut t = Table::new(headers);
        for x in v.as_array().into_iter().flatten() {
            t.row(row(x));
        }
        t
    })
}

/// A JSON array field as table texts (none when it is missing).
pub fn cells(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().map(cell).collect()
}

/// A JSON field as table text ("" for null, strings without quotes).
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Bytes in Docker's human units (1000-based, as `docker images` prints them).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        return format!("{bytes}B");
    }
    let n = format!("{v:.3}");
    format!("{}{}", n.trim_end_matches('0').trim_end_matches('.'), UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec!["default".into(), "running".into()]);
        t.row(vec!["b".into(), "stopped".into()]);
        assert_eq!(t.render(), "NAME      STATE\ndefault   running\nb         stopped\n");
    }

    #[test]
    fn human_units() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(1_500_000), "1.5MB");
        assert_eq!(human(2_000_000_000), "2GB");
    }
}
