package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"

	"github.com/accordgo/accord"
)

// Placeholders returns the function that renders the n-th (1-based) bind
// parameter for d.
func Placeholders(d accord.Dialect) func(n int) string {
	if d == accord.Postgres {
		return func(n int) string { return "$" + strconv.Itoa(n) }
	}
	return func(int) string { return "?" }
}

// RowQuerier is what *sql.DB, *sql.Tx and *sql.Conn share for single-row
// reads.
type RowQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// TableExists reports whether the table with the given suffix exists. db is
// usually a *sql.DB; a *sql.Tx sees the tables of its transaction.
func TableExists(ctx context.Context, db RowQuerier, n Names, suffix string) (bool, error) {
	var count int
	var err error
	switch n.Dialect {
	case accord.Postgres:
		err = db.QueryRowContext(ctx, `SELECT count(*) FROM pg_catalog.pg_tables
			WHERE tablename = $1 AND schemaname = COALESCE(NULLIF($2, ''), current_schema())`,
			n.Prefix+suffix, n.Schema).Scan(&count)
	case accord.MySQL:
		err = db.QueryRowContext(ctx, `SELECT count(*) FROM information_schema.tables
			WHERE table_name = ? AND table_schema = COALESCE(NULLIF(?, ''), DATABASE())`,
			n.Prefix+suffix, n.Schema).Scan(&count)
	case accord.SQLite:
		err = db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?`,
			n.Prefix+suffix).Scan(&count)
	default:
		return false, n.Dialect.Validate()
	}
	if err != nil {
		return false, fmt.Errorf("look up table %s: %w", n.Table(suffix), err)
	}
	return count > 0, nil
}

// ColumnExists reports whether the table with suffix has column (MySQL
// only: the other dialects report true).
func ColumnExists(ctx context.Context, db RowQuerier, n Names, suffix, column string) (bool, error) {
	if n.Dialect != accord.MySQL {
		return true, nil
	}
	var count int
	err := db.QueryRowContext(ctx, `SELECT count(*) FROM information_schema.columns
		WHERE table_name = ? AND column_name = ? AND table_schema = COALESCE(NULLIF(?, ''), DATABASE())`,
		n.Prefix+suffix, column, n.Schema).Scan(&count)
	if err != nil {
		return false, fmt.Errorf("look up column %s.%s: %w", n.Table(suffix), column, err)
	}
	return count > 0, nil
}
