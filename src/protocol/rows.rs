//! Result sets sluice writes itself, for the admin console: RowDescription, DataRow,
//! CommandComplete and EmptyQueryResponse, in the text format. A `Table` collects typed
//! columns and rows, then encodes the whole reply in one buffer.

use bytes::{BufMut, BytesMut};

pub use super::extended::command_complete;
use super::messages::{begin, finish};

/// Type OIDs of the columns sluice reports (PostgreSQL's pg_type).
pub mod oid {
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const TEXT: u32 = 25;
    pub const NUMERIC: u32 = 1700;
    pub const FLOAT8: u32 = 701;
}

/// Backend tags of the messages here.
pub mod tag {
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const DATA_ROW: u8 = b'D';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY: u8 = b'I';
}

/// One column: its name and type OID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub oid: u32,
}

/// A result set under construction. Values are text; None is SQL NULL.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    /// A table with these (name, type OID) columns.
    pub fn new(columns: &[(&str, u32)]) -> Table {
        Table {
            columns: columns
                .iter()
                .map(|&(name, oid)| Column {
                    name: name.to_string(),
                    oid,
                })
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row; it must have one value per column.
    pub fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width");
        self.rows.push(row);
    }

    /// The index of a column by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// RowDescription, the DataRows, then CommandComplete with `command_tag` ("SHOW").
    pub fn encode(&self, out: &mut BytesMut, command_tag: &str) {
        row_description(out, &self.columns);
        for row in &self.rows {
            data_row(out, row);
        }
        command_complete(out, command_tag);
    }
}

/// Type size for a column type (-1: variable).
fn type_size(oid: u32) -> i16 {
    match oid {
        oid::INT4 => 4,
        oid::INT8 | oid::FLOAT8 => 8,
        _ => -1,
    }
}

pub fn row_description(out: &mut BytesMut, columns: &[Column]) {
    let start = begin(out, tag::ROW_DESCRIPTION);
    out.put_u16(columns.len() as u16);
    for c in columns {
        out.put_slice(c.name.as_bytes());
        out.put_u8(0);
        out.put_u32(0); // not from a table
        out.put_u16(0); // no attribute number
        out.put_u32(c.oid);
        out.put_i16(type_size(c.oid));
        out.put_i32(-1); // no type modifier
        out.put_u16(0); // text format
    }
    finish(out, start);
}

pub fn data_row(out: &mut BytesMut, values: &[Option<String>]) {
    let start = begin(out, tag::DATA_ROW);
    out.put_u16(values.len() as u16);
    for v in values {
        match v {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v.as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
    finish(out, start);
}

pub fn empty_query_response(out: &mut BytesMut) {
    let start = begin(out, tag::EMPTY_QUERY);
    finish(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::header;

    #[test]
    fn a_table_encodes_description_rows_and_completion() {
        let mut t = Table::new(&[("name", oid::TEXT), ("n", oid::INT4)]);
        t.push(vec![Some("a".into()), None]);
        let mut out = BytesMut::new();
        t.encode(&mut out, "SHOW");
        let (tag, len) = header(&out).unwrap();
        assert_eq!(tag, b'T');
        // count, then "name\0" + 18 bytes, "n\0" + 18 bytes.
        assert_eq!(len, 5 + 2 + (5 + 18) + (2 + 18));
        let (tag, row_len) = header(&out[len..]).unwrap();
        assert_eq!(tag, b'D');
        assert_eq!(
            &out[len + 5..len + row_len],
            &[0, 2, 0, 0, 0, 1, b'a', 255, 255, 255, 255]
        );
        assert_eq!(&out[len + row_len..], b"C\0\0\0\x09SHOW\0");
        assert_eq!(t.column("n"), Some(1));
    }

    #[test]
    fn empty_query_response_is_five_bytes() {
        let mut out = BytesMut::new();
        empty_query_response(&mut out);
        assert_eq!(&out[..], b"I\0\0\0\x04");
    }
}
