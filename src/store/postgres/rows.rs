//! Batches sent as `VALUES` lists, one statement shape per batch size.
//!
//! A batch statement could take its rows as arrays (`unnest($1::text[], …)`), but
//! PostgreSQL cannot see an array parameter's length when it plans a prepared
//! statement once for all executions: it guesses ten rows, finds the plan for one row
//! much cheaper, and so plans again on every execution. Measured on the drain, that
//! planning cost more CPU than running the statements (the claim: 0.46 ms to plan,
//! 0.15 ms to run); forcing the one plan instead chose sequential scans. A `VALUES`
//! list has exactly as many rows as it says, so the statement for a batch of `n` rows
//! plans the same every time, and PostgreSQL keeps that plan after its first five
//! executions. Batches are small (a node's free slots), so few shapes exist.

use tokio_postgres::types::ToSql;

/// One parameter value of a batch row.
pub(super) type Value = Box<dyn ToSql + Sync + Send>;

/// Rows of parameters for a `VALUES` list of typed columns.
pub(super) struct Rows {
    /// `(name, SQL type)` of each column.
    columns: &'static [(&'static str, &'static str)],
    values: Vec<Value>,
}

impl Rows {
    pub(super) fn new(columns: &'static [(&'static str, &'static str)]) -> Rows {
        Rows {
            columns,
            values: Vec::new(),
        }
    }

    /// Adds one row (as many values as columns, in their order).
    pub(super) fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.values.extend(row);
    }

    pub(super) fn len(&self) -> usize {
        self.values.len() / self.columns.len().max(1)
    }

    /// `(VALUES ($first::type, …), …) AS alias(col, …)`, numbering parameters from `first`.
    pub(super) fn sql(&self, alias: &str, first: usize) -> String {
        let width = self.columns.len();
        let rows: Vec<String> = (0..self.len())
            .map(|r| {
                let cells: Vec<String> = self
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(c, (_, ty))| format!("${}::{ty}", first + r * width + c))
                    .collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        let names: Vec<&str> = self.columns.iter().map(|(n, _)| *n).collect();
        format!(
            "(VALUES {}) AS {alias}({})",
            rows.join(", "),
            names.join(", ")
        )
    }

    /// The parameters, in the order [`Rows::sql`] numbers them.
    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values
            .iter()
            .map(|v| v.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_values_list_numbers_its_parameters_row_by_row() {
        let mut rows = Rows::new(&[("id", "text"), ("n", "bigint")]);
        rows.push(vec![Box::new("a".to_string()), Box::new(1i64)]);
        rows.push(vec![Box::new("b".to_string()), Box::new(2i64)]);
        assert_eq!(
            rows.sql("u", 3),
            "(VALUES ($3::text, $4::bigint), ($5::text, $6::bigint)) AS u(id, n)"
        );
        assert_eq!(rows.params().len(), 4);
    }
}
