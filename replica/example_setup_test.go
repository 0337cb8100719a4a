package replica_test

import (
	"database/sql"

	"github.com/accordgo/accord/internal/dbtest"
)

// openExampleDB opens a migrated SQLite database in a temporary directory
// with the examples' replica table.
func openExampleDB() (*sql.DB, func()) {
	return dbtest.ExampleSQLite("CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL)")
}

// customerName reads the replicated customer's name.
func customerName(db *sql.DB, id string) string {
	var name string
	if err := db.QueryRow(`SELECT name FROM customers WHERE id = ?`, id).Scan(&name); err != nil {
		panic(err)
	}
	return name
}
