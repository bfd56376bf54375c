//! Tables for people (comfy-table): a header row and aligned columns, no
//! borders or colours, so they read the same in a terminal, a pipe or a log.
//! Scripts use `--json`, never these.

use comfy_table::{Table, presets};
use serde_json::Value;

/// A table with these column headers and rows.
pub fn rows(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header(header);
    for row in rows {
        table.add_row(row);
    }
    render(&table)
}

/// Two columns, a field's name and its value, for one object.
pub fn fields(pairs: impl IntoIterator<Item = (&'static str, String)>) -> String {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    for (name, value) in pairs {
        table.add_row(vec![name.to_string(), value]);
    }
    render(&table)
}

/// Each line without the trailing padding comfy-table leaves.
fn render(table: &Table) -> String {
    let mut out = String::new();
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A JSON value as a cell: strings without quotes, nothing as `-`, arrays
/// as their items joined with commas, anything else as compact JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_table_has_a_header_and_aligned_columns() {
        let shown = rows(
            &["ID", "NAME"],
            [
                vec!["1".to_string(), "orders".to_string()],
                vec!["22".to_string(), "b".to_string()],
            ],
        );
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 3, "{shown}");
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "NAME"]
        );
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["22", "b"]);
        // The second column starts at the same place on every line.
        let column = lines[0].find("NAME").unwrap();
        assert_eq!(lines[1].find("orders"), Some(column));
        assert!(shown.lines().all(|l| l == l.trim_end()), "{shown:?}");
    }

    #[test]
    fn fields_are_name_and_value() {
        let shown = fields([("status", "healthy".to_string()), ("reason", "-".into())]);
        let lines: Vec<Vec<&str>> = shown
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines, [vec!["status", "healthy"], vec!["reason", "-"]]);
    }

    #[test]
    fn cells_show_json_for_people() {
        assert_eq!(cell(&json!("text")), "text");
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("")), "-");
        assert_eq!(cell(&json!(["a", "b"])), "a, b");
        assert_eq!(cell(&json!(12)), "12");
        assert_eq!(cell(&json!(true)), "true");
        assert_eq!(cell(&json!({"a": 1})), r#"{"a":1}"#);
    }
}
