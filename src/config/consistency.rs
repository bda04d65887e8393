//! `--consistency.tables`: which tables the opt-in consistency checker compares.

use crate::gravity_config::Route;

/// Most tables checked (and labelled).
pub const MAX_TABLES: usize = 64;
/// Most rows in one chunk.
pub const MAX_CHUNK_SIZE: usize = 100_000;
/// One table to compare: the source's `schema.table` and, if given, where it lands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableSpec {
    /// Source schema.
    pub schema: String,
    /// Source table.
    pub table: String,
    /// Target schema and table given explicitly (`a.b=c.d`).
    pub target: Option<(String, String)>,
}

impl TableSpec {
    /// Where the table lands: the explicit target, else the first matching route, else
    /// the same name.
    pub fn target_in(&self, routes: &[Route]) -> (String, String) {
        if let Some(t) = &self.target {
            return t.clone();
        }
        match routes.iter().find(|r| r.matches(&self.schema, &self.table)) {
            Some(r) => (
                r.target_schema
                    .clone()
                    .unwrap_or_else(|| self.schema.clone()),
                r.target_table.clone().unwrap_or_else(|| self.table.clone()),
            ),
            None => (self.schema.clone(), self.table.clone()),
        }
    }
}

fn split_name(s: &str) -> Result<(String, String), String> {
    match s.trim().split_once('.') {
        Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() && !b.contains('.') => {
            Ok((a.trim().to_string(), b.trim().to_string()))
        }
        _ => Err(format!("{s:?} is not schema.table")),
    }
}

/// Parses the `--consistency.tables` list: `schema.table` or
/// `schema.table=target_schema.target_table`, separated by commas; at most [`MAX_TABLES`],
/// duplicates dropped.
pub fn parse_tables(s: &str) -> Result<Vec<TableSpec>, String> {
    let mut out: Vec<TableSpec> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (src, dst) = match item.split_once('=') {
            Some((a, b)) => (a, Some(split_name(b)?)),
            None => (item, None),
        };
        let (schema, table) = split_name(src)?;
        let spec = TableSpec {
            schema,
            table,
            target: dst,
        };
        if out
            .iter()
            .any(|o| o.schema == spec.schema && o.table == spec.table)
        {
            continue;
        }
        if out.len() == MAX_TABLES {
            return Err(format!("more than {MAX_TABLES} tables"));
        }
        out.push(spec);
    }
    Ok(out)
}
